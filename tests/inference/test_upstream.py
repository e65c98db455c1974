"""The upstream backend against a fake OpenAI-compatible server (a test double of vLLM / llama.cpp server)
speaking just enough HTTP/1.1 and SSE over a raw trio socket on an ephemeral 127.0.0.1 port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import trio

from cocoon_node.inference import (
    BackendError,
    ChatRequest,
    OpenAIUpstreamBackend,
    TokenDelta,
)
from tests.conftest import chat_request
from tests.http_fakes import read_request_head

MODEL = "fake-model"
REPLY = ["Hello", ",", " world", " — ", "ünïcode", "!"]
# The fake upstream's pacing in "slow" mode (a slow model server), not a wait in the test itself.
SLOW_UPSTREAM_CHUNK_INTERVAL = 0.005


@dataclass
class FakeUpstream:
    """Records what it was asked; the last user message picks the behaviour."""

    port: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    slow_chunks_sent: int = 0
    client_left: trio.Event = field(default_factory=trio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = await read_request_head(stream)
            if data is None:
                return
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                body += await stream.receive_some(65536)
            self.auth.append(headers.get("authorization"))
            if method == "GET" and path == "/v1/models":
                await self.respond_json(stream, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
            elif method == "POST" and path == "/v1/chat/completions":
                await self.chat(stream, json.loads(body))
            else:
                await self.respond_json(stream, {"error": {"message": "not found"}}, status="404 Not Found")

    async def respond_json(self, stream: trio.SocketStream, obj: Any, status: str = "200 OK") -> None:
        payload = json.dumps(obj).encode()
        await stream.send_all(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + payload
        )

    async def chat(self, stream: trio.SocketStream, body: dict[str, Any]) -> None:
        self.bodies.append(body)
        mode = body["messages"][-1]["content"]
        if mode == "error":
            await self.respond_json(stream, {"error": {"message": "overloaded"}}, status="503 Service Unavailable")
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")

        async def event(obj: Any) -> None:
            await stream.send_all(f"data: {json.dumps(obj)}\n\n".encode())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        if mode == "slow":
            try:
                await event(chunk({"role": "assistant", "content": ""}))
                for i in range(10_000):
                    await event(chunk({"content": f" t{i}"}))
                    self.slow_chunks_sent += 1
                    await trio.sleep(SLOW_UPSTREAM_CHUNK_INTERVAL)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.client_left.set()
            return
        await event(chunk({"role": "assistant", "content": ""}))
        words = REPLY[:2] if mode == "truncate" else REPLY
        for word in words:
            await stream.send_all(b": keep-alive comment\n\n")
            await event(chunk({"content": word}))
        if mode == "truncate":
            return  # connection closes with no finish_reason and no [DONE]
        finish = "length" if mode == "length" else "stop"
        await event(chunk({}, finish))
        if mode != "no-usage":
            # Servers count tokens their own way: 9 completion tokens for 6 content chunks.
            await event({"id": "c1", "choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 9}})
        await stream.send_all(b"data: [DONE]\n\n")


@pytest.fixture
async def fake_upstream(nursery: trio.Nursery) -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    listeners = await nursery.start(partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
    fake.port = listeners[0].socket.getsockname()[1]
    yield fake


chat = partial(chat_request, model="announced-name")  # the shared helper (tests/conftest.py), this model


async def run(backend: OpenAIUpstreamBackend, req: ChatRequest) -> list[TokenDelta]:
    with trio.fail_after(10):
        async with backend.generate(req) as stream:
            return [d async for d in stream]


async def loaded(fake: FakeUpstream, **options: Any) -> OpenAIUpstreamBackend:
    backend = OpenAIUpstreamBackend(fake.base_url, MODEL, **options)
    with trio.fail_after(10):
        await backend.load()
    return backend


async def test_streams_text_and_takes_usage_from_server(fake_upstream: FakeUpstream) -> None:
    backend = await loaded(fake_upstream, api_key="sk-test")
    try:
        deltas = await run(backend, chat("hi", max_tokens=50, temperature=0, stop=["zz"], seed=3))
    finally:
        await backend.aclose()
    assert "".join(d.text for d in deltas) == "".join(REPLY)
    assert [d.finish_reason for d in deltas] == [None] * len(REPLY) + ["stop"]
    assert sum(d.token_count for d in deltas) == 9  # the server's completion_tokens
    assert deltas[-1].prompt_tokens == 17
    sent = fake_upstream.bodies[0]
    assert sent["model"] == MODEL  # the upstream name, not the announced one
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 50 and "max_completion_tokens" not in sent
    assert sent["temperature"] == 0 and sent["stop"] == ["zz"] and sent["seed"] == 3
    assert fake_upstream.auth[-1] == "Bearer sk-test"


async def test_length_finish_and_missing_usage(fake_upstream: FakeUpstream) -> None:
    backend = await loaded(fake_upstream)
    req = chat("no-usage")
    deltas = await run(backend, req)
    assert sum(d.token_count for d in deltas) == len(REPLY)  # one per chunk when the server gives no usage
    assert deltas[-1].prompt_tokens == backend.count_tokens(req)  # the estimate
    deltas = await run(backend, chat("length"))
    assert deltas[-1].finish_reason == "length"
    assert fake_upstream.bodies[0]["max_tokens"] == backend.default_max_tokens
    await backend.aclose()


async def test_http_error_and_truncated_stream_raise(fake_upstream: FakeUpstream) -> None:
    backend = await loaded(fake_upstream)
    with pytest.raises(BackendError, match="HTTP 503"):
        await run(backend, chat("error"))
    got: list[str] = []
    with trio.fail_after(10), pytest.raises(BackendError, match="ended before"):
        async with backend.generate(chat("truncate")) as stream:
            async for delta in stream:
                got.append(delta.text)
    assert got == REPLY[:2]  # what arrived is delivered before the error
    await backend.aclose()


async def test_cancel_closes_the_upstream_connection(fake_upstream: FakeUpstream) -> None:
    backend = await loaded(fake_upstream)
    got = 0
    with trio.fail_after(10):
        async with backend.generate(chat("slow")) as stream:
            async for _ in stream:
                got += 1
                if got == 5:
                    break
        await fake_upstream.client_left.wait()  # the server notices the disconnect
    assert fake_upstream.slow_chunks_sent < 10_000
    assert backend.in_flight == 0
    await backend.aclose()


async def test_load_checks_server_and_model(fake_upstream: FakeUpstream) -> None:
    with trio.fail_after(10):
        with pytest.raises(BackendError, match="does not serve model"):
            await OpenAIUpstreamBackend(fake_upstream.base_url, "other-model").load()
        with pytest.raises(BackendError, match="not usable"):
            # Port 1 on localhost: nothing listens there.
            await OpenAIUpstreamBackend("http://127.0.0.1:1/v1", MODEL, timeout=5).load()
    with pytest.raises(BackendError, match="load"):
        async with OpenAIUpstreamBackend(fake_upstream.base_url, MODEL).generate(chat("hi")):
            pass


async def test_count_tokens_is_an_estimate() -> None:
    backend = OpenAIUpstreamBackend("http://127.0.0.1:1/v1", MODEL)
    assert backend.count_tokens(chat("x" * 40)) == 4 + 10
    assert backend.model_files() == [] and not backend.synthetic
