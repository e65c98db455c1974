"""Issue 13, the error contract's codes decided at the requester, with the official openai client:

- 400 ``context_length_exceeded`` counted here, with the worker's own tokenizer, against the context length
  it announced (``hardware.context_length``): the worker never sees the prompt, its reputation is untouched;
- 503 only when workers for the model exist but none is usable, the message saying why (price limit,
  attestation);
- 504 / 502 for worker failures after the retries (both workers asked).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import openai
import pytest
import trio

from cocoon_node.inference import BackendError, ChatRequest, SyntheticBackend, TokenDelta
from cocoon_node.inference.tokencount import SYNTHETIC_TOKENIZER, WhitespaceCounter
from cocoon_node.mesh.announce import Announcement, Hardware

from .api_harness import announcement, api_over
from .test_capability_routing import mesh

PROMPT = "one two three four five six seven eight"  # 8 words: 8 tokens to the synthetic tokenizer


def ask(url: str, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    out = client.chat.completions.create(model=kw.pop("model", "synthetic-echo"),
                                         messages=[{"role": "user", "content": PROMPT}], **kw)
    return list(out) if kw.get("stream") else out


def with_context(backend: SyntheticBackend, context: int) -> Announcement:
    base = announcement(backend.model_name, backend, 2)
    hardware = Hardware(accelerator="", accelerator_count=0, accelerator_memory_mib=0, hardware_source="declared",
                        context_length=context, context_source="declared")
    return msgspec.structs.replace(base, tokenizer=SYNTHETIC_TOKENIZER, v=max(base.v, 2), hardware=hardware)


COUNTERS = {SYNTHETIC_TOKENIZER: WhitespaceCounter()}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_beyond_the_announced_context_is_a_400_before_any_worker_sees_it(stream: bool) -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, backend.model_name, worker=with_context(backend, 8),
                        token_counter=COUNTERS.get) as api:
        with trio.fail_after(60), pytest.raises(openai.BadRequestError) as info:
            await trio.to_thread.run_sync(lambda: ask(api.url, stream=stream))
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert "prompt is 8 tokens" in body["message"] and "maximum context length is 8 tokens" in body["message"]
    assert len(api.server.request_log) == 0 and api.failure_rate() == 0.0
    assert api.requester.selector.reputation(api.worker.peer_id).samples == 0


async def test_a_prompt_within_the_announced_context_is_served() -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, backend.model_name, worker=with_context(backend, 9),
                        token_counter=COUNTERS.get) as api:
        with trio.fail_after(60):
            out = await trio.to_thread.run_sync(lambda: ask(api.url, max_tokens=1))
    assert out.choices[0].message.content and len(api.server.request_log) == 1


class Refusing:
    """A gate that has refused every worker."""

    def known(self, a: Announcement) -> bool:
        return False

    async def is_attested(self, a: Announcement) -> bool:
        return False


@pytest.mark.parametrize(("kw", "why"), [
    ({"max_price_prompt": 0}, "price above this requester's limit"),
    ({"attestor": Refusing()}, "attestation refused"),
])
async def test_a_503_only_when_workers_exist_but_none_is_usable_and_it_says_why(kw: dict[str, Any],
                                                                               why: str) -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, backend.model_name, **kw) as api:
        with trio.fail_after(60), pytest.raises(openai.InternalServerError) as info:
            await trio.to_thread.run_sync(lambda: ask(api.url))
    assert info.value.status_code == 503
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "service_unavailable" and body["code"] == "no_worker"
    assert why in body["message"] and "1 offer it" in body["message"]
    assert len(api.server.request_log) == 0 and len(api.requester.admission) == 0  # refused, never queued


class Silent(SyntheticBackend):
    """Accepts and never produces a token (a frozen worker)."""

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        await trio.sleep_forever()
        yield  # type: ignore[misc]  # pragma: no cover


class Broken(SyntheticBackend):
    """Fails before its first token (its backend is down)."""

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        await trio.lowlevel.checkpoint()
        raise BackendError("the model process died")
        yield  # pragma: no cover


@pytest.mark.parametrize(("make", "status", "code"), [(Broken, 502, "backend"), (Silent, 504, "timeout")])
async def test_worker_failures_after_the_retries_are_502_or_504(make: Any, status: int, code: str) -> None:
    async with mesh((make(), ()), (make(), ())) as (url, requester, servers, anns):
        requester._first_token_timeout = 1.0  # a frozen worker is given up on quickly here
        with trio.fail_after(60), pytest.raises(openai.APIStatusError) as info:
            await trio.to_thread.run_sync(lambda: ask(url, model=anns[0].model))
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "upstream_error" and body["code"] == code
    assert all(len(s.request_log) == 1 for s in servers)  # retried on the other before giving up
