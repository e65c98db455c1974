"""Streaming semantics shared by every backend, checked on the synthetic one: order, limits, cancellation,
backpressure, error propagation. No assertion depends on wall-clock time."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from cocoon_node.inference import (
    Backend,
    BackendError,
    ChatRequest,
    SyntheticBackend,
    TokenDelta,
    make_backend,
)
from cocoon_node.inference.backend import StopTextBuffer, stream_from_producer
from cocoon_node.inference.synthetic import LOREM
from tests.conftest import chat_request

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def chat(text: str = " ".join(WORDS), **extra: object) -> ChatRequest:
    return chat_request(text, **extra)  # the shared helper (tests/conftest.py), with this module's prompt


async def collect(backend: Backend, req: ChatRequest) -> list[TokenDelta]:
    with trio.fail_after(10):
        async with backend.generate(req) as stream:
            return [d async for d in stream]


async def test_streams_prompt_words_in_order() -> None:
    backend = SyntheticBackend()
    await backend.load()
    deltas = await collect(backend, chat())
    assert [d.text.strip() for d in deltas] == WORDS
    assert "".join(d.text for d in deltas) == " ".join(WORDS)
    assert all(d.token_count == 1 for d in deltas)
    assert [d.finish_reason for d in deltas] == [None] * (len(WORDS) - 1) + ["stop"]
    assert deltas[-1].prompt_tokens == len(WORDS) == backend.count_tokens(chat())
    assert backend.tokens_generated == len(WORDS)
    assert backend.synthetic and backend.kind == "synthetic"
    assert isinstance(backend, Backend)


async def test_max_tokens_gives_length() -> None:
    backend = SyntheticBackend()
    deltas = await collect(backend, chat(max_tokens=3))
    assert "".join(d.text for d in deltas) == "alpha beta gamma"
    assert deltas[-1].finish_reason == "length"
    assert sum(d.token_count for d in deltas) == 3


async def test_stop_sequence_cuts_text() -> None:
    backend = SyntheticBackend()
    deltas = await collect(backend, chat(stop=["mma de"]))
    assert "".join(d.text for d in deltas) == "alpha beta ga"
    assert deltas[-1].finish_reason == "stop"


async def test_empty_prompt_uses_lorem() -> None:
    deltas = await collect(SyntheticBackend(), chat("   "))
    assert "".join(d.text for d in deltas) == " ".join(LOREM)


async def test_paced_stream_keeps_count_and_order(autojump_clock: trio.testing.MockClock) -> None:
    # With the autojump clock the pacing runs in virtual time: 5 tokens/s for 12 tokens is 2.4 virtual s.
    backend = SyntheticBackend(tokens_per_second=5)
    start = trio.current_time()
    deltas = await collect(backend, chat())
    assert [d.text.strip() for d in deltas] == WORDS
    assert trio.current_time() - start == pytest.approx(len(WORDS) / 5)


async def test_cancel_mid_stream_stops_within_one_token(autojump_clock: trio.testing.MockClock) -> None:
    # Virtual time (the autojump clock): the producer's pacing and the wait below cost no real time.
    backend = SyntheticBackend(tokens_per_second=200, buffer_size=1)
    long = chat(" ".join(["w"] * 10_000), max_tokens=4000)
    got = 0
    at_cancel = -1
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            async with backend.generate(long) as stream:
                async for _ in stream:
                    got += 1
                    if got == 5:
                        scope.cancel()  # as if the requester went away; the next receive raises Cancelled
                        at_cancel = backend.tokens_generated
        assert scope.cancelled_caught
        paced_until = trio.current_time()
        await trio.sleep(0.1)  # 20 virtual decode steps: the producer would have made ~20 more tokens had it survived
    assert trio.current_time() - paced_until >= 0.1  # the window did pass on the producer's clock
    assert got == 5 and at_cancel >= 5  # it was producing, at its pace, until the cancel
    assert backend.tokens_generated - at_cancel <= 1
    assert backend.in_flight == 0


async def test_breaking_out_stops_generation() -> None:
    backend = SyntheticBackend(buffer_size=2)
    long = chat(" ".join(["w"] * 1000), max_tokens=1000)
    with trio.fail_after(10):
        async with backend.generate(long) as stream:
            async for _ in stream:
                break
        at_exit = backend.tokens_generated
        await trio.testing.wait_all_tasks_blocked()  # any task still able to produce has had its chance
    # One consumed, at most buffer_size buffered, one more blocked in send: nothing after exit.
    assert at_exit <= 1 + 2 + 1
    assert backend.tokens_generated == at_exit


async def test_slow_reader_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    buffer_size = 4
    backend = SyntheticBackend(buffer_size=buffer_size)
    consumed = 0
    max_ahead = 0
    with trio.fail_after(10):
        async with backend.generate(chat(" ".join(["w"] * 60), max_tokens=60)) as stream:
            async for _ in stream:
                consumed += 1
                await trio.sleep(0.002)  # a slow reader (virtual time); the producer is unpaced
                max_ahead = max(max_ahead, backend.tokens_generated - consumed)
    assert consumed == 60
    # The producer can run ahead by the channel buffer plus the one token it is trying to send.
    assert max_ahead <= buffer_size + 1
    assert max_ahead >= 1


async def test_concurrency_limited_to_max_batch() -> None:
    backend = SyntheticBackend(tokens_per_second=100, max_batch=2)
    peak = 0
    done = 0

    async def one() -> None:
        nonlocal peak, done
        async with backend.generate(chat("a b c d e")) as stream:
            peak = max(peak, backend.in_flight)
            async for _ in stream:
                peak = max(peak, backend.in_flight)
        done += 1

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
    assert done == 5
    assert peak == 2
    assert backend.in_flight == 0


async def test_consumer_exception_propagates_unwrapped() -> None:
    backend = SyntheticBackend()
    with trio.fail_after(10), pytest.raises(KeyError):
        async with backend.generate(chat()) as stream:
            async for _ in stream:
                raise KeyError("consumer bug")
    assert backend.in_flight == 0


async def test_producer_failure_reaches_reader_as_backend_error() -> None:
    async def produce(send: trio.MemorySendChannel[TokenDelta]) -> None:
        await send.send(TokenDelta("a", 1))
        raise RuntimeError("model exploded")

    got: list[str] = []
    with trio.fail_after(10), pytest.raises(BackendError, match="model exploded"):
        async with stream_from_producer(produce) as stream:
            async for delta in stream:
                got.append(delta.text)
    assert got == ["a"]


FACTORY_CASES: list[tuple[str, dict[str, object], Callable[[Backend], bool]]] = [
    ("synthetic", {"tokens_per_second": 3}, lambda b: b.kind == "synthetic" and b.synthetic),
    (
        "openai-upstream",
        {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
        lambda b: b.kind == "openai-upstream" and not b.synthetic,
    ),
    ("exllamav2", {"model_dir": "/nonexistent"}, lambda b: b.kind == "exllamav2"),
]


@pytest.mark.parametrize(("kind", "options", "check"), FACTORY_CASES, ids=[c[0] for c in FACTORY_CASES])
def test_factory_builds(kind: str, options: dict[str, object], check: Callable[[Backend], bool]) -> None:
    assert check(make_backend(kind, **options))


def test_factory_rejects_unknown_kind_and_options() -> None:
    with pytest.raises(ValueError, match=r"unknown backend kind 'llama'.*synthetic"):
        make_backend("llama")
    with pytest.raises(ValueError, match="bad options for backend 'synthetic'"):
        make_backend("synthetic", nonsense=1)


def test_stop_text_buffer_holds_back_partial_characters_and_stop_prefixes() -> None:
    buf = StopTextBuffer(("END",))
    assert buf.update("日\ufffd") == ("日", False)  # half a character: wait for the rest
    assert buf.update("日本 E") == ("本 ", False)  # "E" may start "END"
    assert buf.update("日本 EN") == ("", False)
    assert buf.update("日本 ENx") == ("ENx", False)  # it did not
    assert buf.update("日本 ENx EN") == (" ", False)
    assert buf.update("日本 ENx END and more") == ("", True)
    assert buf.emitted == len("日本 ENx ")


def test_stop_text_buffer_flush_and_no_stops() -> None:
    buf = StopTextBuffer(())
    assert buf.update("ab") == ("ab", False)
    assert buf.update("abc\ufffd") == ("c", False)
    assert buf.flush("abc\ufffd") == "\ufffd"


# ----- pacing: one decode-step clock for every stream (virtual time, trio's autojump clock) --------------


async def timed_tokens(backend: SyntheticBackend, req: ChatRequest, out: list[float],
                       cancel_after: int | None = None) -> None:
    async with backend.generate(req) as stream:
        async for _ in stream:
            out.append(trio.current_time())
            if cancel_after is not None and len(out) >= cancel_after:
                return


async def test_a_lone_stream_gets_tokens_at_the_configured_rate(autojump_clock: trio.testing.MockClock) -> None:
    backend = SyntheticBackend(tokens_per_second=100)  # a step every 10 ms
    times: list[float] = []
    await trio.sleep(1.234)  # the clock starts with the stream, wherever trio's clock is
    start = trio.current_time()
    await timed_tokens(backend, chat("a b c d"), times)
    assert [round(t - start, 6) for t in times] == [0.01, 0.02, 0.03, 0.04]


async def test_streams_in_flight_share_decode_steps(autojump_clock: trio.testing.MockClock) -> None:
    backend = SyntheticBackend(tokens_per_second=100)
    first: list[float] = []
    second: list[float] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timed_tokens, backend, chat("a b c d"), first)
        await trio.sleep(0.003)  # virtual time: the autojump clock
        nursery.start_soon(timed_tokens, backend, chat("a b c"), second)
    assert [round(t - start, 6) for t in first] == [0.01, 0.02, 0.03, 0.04]
    # joined 3 ms into step 0: its first token comes at the first step at least one interval later (step 2)
    assert [round(t - start, 6) for t in second] == [0.02, 0.03, 0.04]


async def test_a_stream_leaving_does_not_stall_the_others(autojump_clock: trio.testing.MockClock) -> None:
    """The first stream to need a step keeps its timer; when it leaves, the others still get their tokens
    on time (never early)."""
    backend = SyntheticBackend(tokens_per_second=100)
    leaver: list[float] = []
    stayer: list[float] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timed_tokens, backend, chat("a b c d e"), leaver, 2)
        nursery.start_soon(timed_tokens, backend, chat("a b c d e"), stayer)
    assert len(leaver) == 2
    assert [round(t - start, 6) for t in stayer] == [0.01, 0.02, 0.03, 0.04, 0.05]

    cancelled: list[float] = []
    survivor: list[float] = []
    scopes: list[trio.CancelScope] = []

    async def cancellable() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await timed_tokens(backend, chat("a b c"), cancelled)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancellable)  # first in: it keeps the timer of every step
        await trio.lowlevel.checkpoint()  # let it register for step 1 before the survivor does
        nursery.start_soon(timed_tokens, backend, chat("a b c"), survivor)
        await trio.sleep(0.015)  # the timer's owner is cancelled while both wait for step 2
        scopes[0].cancel()
    assert [round(t - start, 6) for t in cancelled] == [0.01]
    assert [round(t - start, 6) for t in survivor] == [0.01, 0.02, 0.03]
