"""Issue 13, the error contract: 404 ``model_not_found`` for a model no worker offers, and 400
``context_length_exceeded`` for a prompt beyond the model's context, found by the worker before it accepts
(streamed or not) or by its backend afterwards; either way not retried elsewhere and never counted against the
worker. With the official openai client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
import trio

from cocoon_node.inference import ChatRequest, ContextLengthError, SyntheticBackend, TokenDelta

from .api_harness import api_over
from .test_capabilities_api import MODEL, ScriptedBackend
from .test_capability_routing import mesh


def ask(url: str, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    out = client.chat.completions.create(model=kw.pop("model", MODEL),
                                         messages=[{"role": "user", "content": "hello there"}], **kw)
    return list(out) if kw.get("stream") else out


class KnownContext(ScriptedBackend):
    """A backend that knows its context (as torch and exllamav2 do): 5 tokens, every prompt counts 7."""

    context_length = 5


class FailsOnContext(ScriptedBackend):
    """A backend that learns the prompt is too long only when it starts (as the upstream one does)."""

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        await trio.lowlevel.checkpoint()
        raise ContextLengthError("This model's maximum context length is 5 tokens")
        yield  # pragma: no cover


async def test_a_model_no_worker_offers_is_a_404_model_not_found() -> None:
    backend = SyntheticBackend(tokens_per_second=10_000)
    async with api_over(backend, backend.model_name) as api:
        with trio.fail_after(60):
            for stream in (False, True):
                with pytest.raises(openai.NotFoundError) as info:
                    await trio.to_thread.run_sync(lambda s=stream: ask(api.url, model="no-such-model", stream=s))
                body = info.value.body
                assert isinstance(body, dict) and body["code"] == "model_not_found" and body["param"] == "model"
                assert body["type"] == "invalid_request_error" and "no-such-model" in body["message"]
            ok = await trio.to_thread.run_sync(lambda: ask(api.url, model=backend.model_name))
    assert ok.choices[0].message.content == "hello there"
    assert len(api.server.request_log) == 1 and api.failure_rate() == 0.0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_beyond_the_context_the_worker_knows_is_a_400_not_retried_nor_blamed(stream: bool) -> None:
    async with mesh((KnownContext(), ()), (KnownContext(), ())) as (url, requester, servers, anns):
        with trio.fail_after(60), pytest.raises(openai.BadRequestError) as info:
            await trio.to_thread.run_sync(lambda: ask(url, stream=stream))
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert "maximum context length is 5 tokens" in body["message"]
    assert sum(s.stats.rejected for s in servers) == 1  # one worker asked, the other not tried
    assert all(requester.selector.reputation(a.peer_id).failure_rate == 0.0 for a in anns)


async def test_a_context_error_from_the_backend_is_a_400_not_retried_nor_blamed() -> None:
    async with mesh((FailsOnContext(), ()), (FailsOnContext(), ())) as (url, requester, servers, anns):
        with trio.fail_after(60), pytest.raises(openai.BadRequestError) as info:
            await trio.to_thread.run_sync(lambda: ask(url))
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded"
    assert sum(len(s.request_log) for s in servers) == 1
    assert all(requester.selector.reputation(a.peer_id).failure_rate == 0.0 for a in anns)


async def test_a_late_context_error_on_a_stream_is_a_clean_error_event_not_retried_nor_blamed() -> None:
    """The upstream learns the prompt is too long only after the worker accepted: the stream has answered 200,
    so the error comes as an event, in the 400's own shape and code (the official client raises it)."""
    async with mesh((FailsOnContext(), ()), (FailsOnContext(), ())) as (url, requester, servers, anns):
        with trio.fail_after(60), pytest.raises(openai.APIError) as info:
            await trio.to_thread.run_sync(lambda: ask(url, stream=True))
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert body["type"] == "invalid_request_error" and "maximum context length is 5 tokens" in body["message"]
    assert sum(len(s.request_log) for s in servers) == 1
    assert all(requester.selector.reputation(a.peer_id).failure_rate == 0.0 for a in anns)
