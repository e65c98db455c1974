"""The real CPU backend on SmolLM2-135M-Instruct. Slow (the model loads once per session, about 20 s on
2 cores), so the tests are few and every generation is short."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cocoon_node.inference import ChatRequest, TokenDelta, TorchBackend, default_model_path
from cocoon_node.inference.audit import HELD_BACK_TOKENS, TokenAudit
from cocoon_node.inference.tokencount import HFTokenCounter
from cocoon_node.inference.torch_cpu import ModelNotFoundError
from tests.conftest import chat_request

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def backend() -> Iterator[TorchBackend]:
    try:
        path = default_model_path()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    backend = TorchBackend(path, max_batch=2)
    # pytest-trio runs each async test in its own trio.run; a sync module fixture may run its own.
    trio.run(backend.load)
    yield backend
    trio.run(backend.aclose)


def chat(text: str = QUESTION, **extra: object) -> ChatRequest:
    return chat_request(text, model="SmolLM2-135M-Instruct", **extra)  # the shared helper, this model


async def run(backend: TorchBackend, req: ChatRequest) -> list[TokenDelta]:
    with trio.fail_after(120):
        async with backend.generate(req) as stream:
            return [d async for d in stream]


def text_of(deltas: list[TokenDelta]) -> str:
    return "".join(d.text for d in deltas)


async def test_greedy_answer_and_token_accounting(backend: TorchBackend) -> None:
    req = chat(temperature=0, max_tokens=48)
    deltas = await run(backend, req)
    text = text_of(deltas)
    assert "Paris" in text
    assert deltas[-1].finish_reason == "stop" and all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].prompt_tokens == backend.count_tokens(req) == len(backend.prompt_ids(req))
    # Every sampled token is billed once: the text's own tokens plus the end-of-sequence token.
    assert sum(d.token_count for d in deltas) == len(backend.encode(text)) + 1
    # Greedy decoding is deterministic, also when another request decodes in the same process at once.
    async with trio.open_nursery() as nursery:
        results: list[str] = []

        async def one() -> None:
            results.append(text_of(await run(backend, req)))

        nursery.start_soon(one)
        nursery.start_soon(one)
    assert results == [text, text]


async def test_max_tokens_and_stop_sequence(backend: TorchBackend) -> None:
    full = text_of(await run(backend, chat(temperature=0, max_tokens=48)))
    deltas = await run(backend, chat(temperature=0, max_tokens=3))
    assert deltas[-1].finish_reason == "length"
    assert sum(d.token_count for d in deltas) == 3
    assert full.startswith(text_of(deltas))

    stop = "capital"
    assert stop in full
    deltas = await run(backend, chat(temperature=0, max_tokens=48, stop=[stop, "zzzz"]))
    assert text_of(deltas) == full[: full.index(stop)]
    assert deltas[-1].finish_reason == "stop"


async def test_seed_reproduces_sampled_output(backend: TorchBackend) -> None:
    req = chat("Write one sentence about the sea.", temperature=1.0, top_p=0.9, seed=1234, max_tokens=12)
    first = text_of(await run(backend, req))
    second = text_of(await run(backend, req))
    assert first and first == second


async def test_cancel_stops_decoding_and_frees_the_slot(backend: TorchBackend) -> None:
    req = chat("Count from 1 to 200, separated by commas.", temperature=0, max_tokens=200)
    arrivals: list[float] = []
    with trio.fail_after(120):
        async with backend.generate(req) as stream:
            async for _ in stream:
                arrivals.append(trio.current_time())
                if len(arrivals) == 3:
                    break
        at_exit = backend.tokens_generated
        # One of the suite's two real-time absence checks (the other is in tests/netsim/test_shaping.py): the
        # model decodes on a thread, which no virtual clock covers. The window is five decoding steps at the
        # pace this run measured (at least 0.5 s), so a decoder that kept going would have shown it.
        step = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
        await trio.sleep(min(max(0.5, 5 * step), 10.0))
    assert at_exit >= 3  # the decoder did run, token by token, up to the break: the window watched a live loop
    assert backend.tokens_generated - at_exit <= 1
    assert backend.in_flight == 0
    # Both slots are usable again: two short requests run to completion.
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(run, backend, chat(temperature=0, max_tokens=2))
    assert backend.in_flight == 0


async def test_requester_counts_the_models_tokens_itself(backend: TorchBackend, tmp_path: Path) -> None:
    """A requester holding the GGUF names the torch worker's tokenizer by the hash the worker announces, counts
    its prompts exactly, and finds every sampled completion within its own count of the text (so an honest
    torch worker is never taken for an over-claimer). Prints how far sampled claims ran past the re-encoded
    text, the figure the audit's allowance is sized on."""
    counter = await trio.to_thread.run_sync(HFTokenCounter.from_gguf, backend.model_path, tmp_path)
    assert counter.tokenizer_hash == backend.tokenizer_hash != b""
    worst = 0
    claimed_total = counted_total = 0
    prompts = ["Write a short poem about the sea.", "Übersetze: Guten Morgen, wie geht's?",
               "Write Python code that reverses a string."]
    for i, text in enumerate(prompts):
        req = chat(text, temperature=1.0, top_p=0.95, seed=100 + i, max_tokens=32, stop=["\n\n\n"])
        assert counter.count_prompt(req) == backend.count_tokens(req)
        audit = TokenAudit(req, counter)
        audit.check_prompt(backend.count_tokens(req))
        deltas = await run(backend, req)
        for d in deltas:
            audit.add_delta(d.text, d.token_count)  # raises Overcount if an honest worker ever exceeded it
        claimed = sum(d.token_count for d in deltas)
        counted = len(backend.encode(text_of(deltas)))
        worst = max(worst, claimed - counted)
        claimed_total, counted_total = claimed_total + claimed, counted_total + counted
    print(f"sampled: {claimed_total} tokens billed, {counted_total} re-encoded from the text; worst request "
          f"+{worst} (allowance {HELD_BACK_TOKENS} + 1/32)")
    assert worst <= HELD_BACK_TOKENS


async def test_logprobs_and_top_logprobs(backend: TorchBackend) -> None:
    """Issue 13: the torch backend reports each generated token's log-probability and the top
    alternatives; greedy decoding picks the most likely token, so it leads its own top list."""
    import math

    plain = text_of(await run(backend, chat(temperature=0, max_tokens=5)))
    deltas = await run(backend, chat(temperature=0, max_tokens=5, logprobs=True, top_logprobs=3))
    assert text_of(deltas) == plain  # asking for logprobs changes nothing else
    assert deltas[-1].finish_reason == "length"
    entries = [e for d in deltas for e in d.logprobs]
    assert len(entries) == 5 == sum(d.token_count for d in deltas)  # one per token
    assert b"".join(e.bytes or b"" for e in entries).decode() == plain
    for e in entries:
        assert len(e.top) == 3 and e.top[0].token == e.token and e.top[0].logprob == e.logprob
        assert e.logprob <= 0 and e.top[0].logprob >= e.top[1].logprob >= e.top[2].logprob
        assert sum(math.exp(t.logprob) for t in e.top) <= 1.0 + 1e-6
    no_top = await run(backend, chat(temperature=0, max_tokens=2, logprobs=True))
    assert all(len(e.top) == 0 for d in no_top for e in d.logprobs)
    assert all(not d.logprobs for d in await run(backend, chat(temperature=0, max_tokens=2)))
