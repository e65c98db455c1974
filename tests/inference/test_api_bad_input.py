"""Issue 13, "bad input found by an outside probe": each kind answers a 4xx in OpenAI's error shape before
anything reaches a worker (none is blamed), long tokens are split across delta frames, streamed responses
close when the client asked for it, and the node serves on afterwards.

Everything runs through the real API, requester, stream protocol and InferenceServer (tests/inference/
api_harness.py) with the synthetic echo backend, over raw HTTP where the probe needs control of the bytes.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from cocoon_node.api.guard import MAX_BODY_BYTES, bearer_ok
from cocoon_node.inference import SyntheticBackend, parse_chat_request
from cocoon_node.inference.chat import RequestValidationError
from cocoon_node.inference.client import RequestTooLarge, WorkerFailure, call_worker, check_sendable
from cocoon_node.inference.extras import (
    MAX_DELTA_TEXT_BYTES,
    TokenLogprob,
    ToolCallDelta,
    delta_frames,
)
from cocoon_node.wire.messages.inference import CODEC, MAX_FRAME_BYTES, DeltaFrame
from tests.conftest import chat_body

from .api_harness import Harness, Pipe, api_over

MODEL = "synthetic-echo"


def backend() -> SyntheticBackend:
    return SyntheticBackend(tokens_per_second=10_000, model_name=MODEL)


chat = chat_body  # the shared OpenAI body (tests/conftest.py)


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    assert err["type"] == "invalid_request_error"
    out: dict[str, Any] = err
    return out


async def post(h: Harness, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(timeout=60) as client:
        with trio.fail_after(60):
            return await client.post(h.url + "/chat/completions", content=data,
                                     headers={"content-type": "application/json", **headers})


async def assert_still_serves(h: Harness) -> None:
    resp = await post(h, chat("still here"))
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "still here"


def nothing_reached_the_worker(h: Harness, before: int = 0) -> None:
    assert len(h.server.request_log) == before
    assert h.failure_rate() == 0.0


# --- frame-size limits agree: too large for the wire is a 413 before anything leaves -----------------


def test_the_layers_limits_agree() -> None:
    """The API takes every body the wire could carry; what it takes but the wire cannot is refused by size."""
    assert MAX_BODY_BYTES >= MAX_FRAME_BYTES
    small = parse_chat_request(chat("word " * 1000))
    assert check_sendable(small) < MAX_FRAME_BYTES
    with pytest.raises(RequestTooLarge):
        check_sendable(parse_chat_request(chat("word " * 60_000)))  # 300 kB < the body limit


@pytest.mark.parametrize("size", [270_000, 900_000])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_too_large_for_the_wire_is_a_413_in_openais_shape(size: int, stream: bool) -> None:
    async with api_over(backend(), MODEL) as h:
        err = assert_openai_error(await post(h, chat("x" * size, stream=stream)), 413)
        assert err["code"] == "request_too_large" and str(MAX_FRAME_BYTES - 1024) in err["message"]
        nothing_reached_the_worker(h)
        ok = await post(h, chat("word " * 40_000, max_tokens=2))  # 200 kB fits
        assert ok.status_code == 200, ok.text[:300]
        await assert_still_serves(h)


# --- a lone surrogate is the client's fault ---------------------------------------------------------


SURROGATES = {  # JSON allows these escapes; UTF-8 (and so every frame of ours) cannot carry them
    "content": '[{"role": "user", "content": "a\\ud800b"}]',
    "stop": '[{"role": "user", "content": "hi"}], "stop": ["\\udfff"]',
    "name": '[{"role": "user", "content": "hi", "name": "\\ud800"}]',
    "user": '[{"role": "user", "content": "hi"}], "user": "\\ud83d"',
    "key": '[{"role": "user", "content": "hi", "\\ud800": 1}]',
}


@pytest.mark.parametrize("where", sorted(SURROGATES))
async def test_a_lone_surrogate_is_a_400_never_counted_against_a_worker(where: str) -> None:
    async with api_over(backend(), MODEL) as h:
        for stream in ("", ', "stream": true'):
            raw = ('{"model": "' + MODEL + '", "messages": ' + SURROGATES[where] + stream + "}").encode()
            json.loads(raw)  # valid JSON: only not encodable
            err = assert_openai_error(await post(h, raw), 400)
            assert "surrogate" in err["message"]
        nothing_reached_the_worker(h)
        assert h.requester.failed == 0
        await assert_still_serves(h)


def test_check_sendable_refuses_what_cannot_be_encoded() -> None:
    req = parse_chat_request(chat("a\ud800b"))  # parsing alone lets it through
    with pytest.raises(RequestValidationError, match="surrogate"):
        check_sendable(req)


async def test_a_request_the_requester_cannot_encode_is_not_the_workers_fault() -> None:
    """Below the API: call_worker itself reports an unencodable request as the client's (invalid_request,
    before the first token), never as ``worker_gone``."""
    ours, theirs = trio.testing.memory_stream_pair()
    with trio.fail_after(10), pytest.raises(WorkerFailure) as info:
        async with call_worker(Pipe(ours), parse_chat_request(chat("\ud800")), price_prompt=1, price_completion=1):
            pass
    assert info.value.code == "invalid_request" and info.value.before_first_token
    await theirs.aclose()


# --- a token longer than a delta frame's text --------------------------------------------------------


@pytest.mark.parametrize("word", ["x" * 70_000, "é" * 35_001, "🙂" * 20_000], ids=["ascii", "2-byte", "4-byte"])
async def test_a_single_token_longer_than_a_delta_is_split_across_frames(word: str) -> None:
    async with api_over(backend(), MODEL) as h:
        resp = await post(h, chat(word))
        assert resp.status_code == 200, resp.text[:300]
        out = resp.json()
        assert out["choices"][0]["message"]["content"] == word and out["usage"]["completion_tokens"] == 1
        streamed = await post(h, chat(word, stream=True))
        text = "".join((json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content", "")
                       for line in streamed.text.splitlines() if line.startswith("data: {"))
        assert text == word
        assert h.failure_rate() == 0.0 and h.requester.failed == 0


def test_delta_frames_stay_within_the_frame_limits() -> None:
    text = "ab€" * 50_000  # 250,000 bytes
    calls = [ToolCallDelta(i % 100, f"c{i}", "f", "{" + "y" * 20_000 + "}") for i in range(100)]
    logprobs = [TokenLogprob("t" * 200, -1.0, b"t" * 200) for _ in range(600)]
    frames = delta_frames("r", text, 7, calls, logprobs)
    assert "".join(f.text for f in frames) == text
    assert [f.tokens for f in frames] == [0] * (len(frames) - 1) + [7]  # the count comes after its text
    assert sum(len(f.tool_calls) for f in frames) == 100 and sum(len(f.logprobs) for f in frames) == 600
    for f in frames:
        assert len(f.text.encode()) <= MAX_DELTA_TEXT_BYTES
        assert len(CODEC.encode(f)) - 4 <= DeltaFrame.MAX_BYTES  # encode validates every field limit
    assert len(delta_frames("r", "hi", 1, [], [])) == 1


# --- deep JSON nesting -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100_000, 65])
async def test_deeply_nested_json_is_a_400(depth: int, caplog: pytest.LogCaptureFixture) -> None:
    async with api_over(backend(), MODEL) as h:
        nested = "[" * depth + "]" * depth
        for raw in (nested, '{"model": "m", "messages": ' + nested + "}"):
            err = assert_openai_error(await post(h, raw.encode()), 400)
            assert "nested" in err["message"]
        assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
        nothing_reached_the_worker(h)
        await assert_still_serves(h)


# --- streamed responses close when the client asked ------------------------------------------------


async def raw_http(h: Harness, version: str, headers: str, body: dict[str, Any]) -> bytes:
    """Send one request over a bare socket and read until the server closes the connection (bounded)."""
    host, port = h.url.split("//")[1].split("/")[0].split(":")
    data = json.dumps(body).encode()
    with trio.fail_after(30):  # the server must close: an open connection fails the test here
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all((f"POST /v1/chat/completions HTTP/{version}\r\nHost: {host}\r\n{headers}"
                               f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
                              + data)
        out = b""
        while chunk := await stream.receive_some(65536):
            out += chunk
    await stream.aclose()
    return out


@pytest.mark.parametrize(("version", "headers"), [("1.1", "Connection: close\r\n"), ("1.0", "")],
                         ids=["connection-close", "http-1.0"])
async def test_a_streamed_response_closes_the_connection_when_asked(version: str, headers: str) -> None:
    async with api_over(backend(), MODEL) as h:
        out = await raw_http(h, version, headers, chat("hello there", stream=True))
        assert out.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in out
        # a 400 on the streaming path (the worker refuses a feature its backend lacks) closes too
        out = await raw_http(h, version, headers, chat("hello there", stream=True, logprobs=True))
        assert out.startswith(b"HTTP/1.1 400") and b'"param":"logprobs"' in out
        await assert_still_serves(h)


# --- credentials in constant time ------------------------------------------------------------------


def test_bearer_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import cocoon_node.api.guard as guard

    seen: list[tuple[bytes, bytes]] = []
    real = guard.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(guard.hmac, "compare_digest", spy)
    assert bearer_ok("Bearer s3cret", "s3cret")
    for wrong in (None, "", "Bearer s3cre", "Bearer s3cret ", "bearer s3cret", "Bearer s3crEt", "Bearer \xe9"):
        assert not bearer_ok(wrong, "s3cret")
    assert len(seen) == 8 and all(isinstance(a, bytes) and b == b"Bearer s3cret" for a, b in seen)


async def test_the_api_key_and_the_admin_token_go_through_the_constant_time_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import cocoon_node.api.guard as guard
    from cocoon_node.api import admin_app, openai_app, serve_http

    calls: list[str] = []
    real = guard.bearer_ok

    def spy(header: str | None, secret: str) -> bool:
        calls.append(secret)
        return real(header, secret)

    monkeypatch.setattr("cocoon_node.api.openai_api.bearer_ok", spy)
    monkeypatch.setattr("cocoon_node.api.admin.bearer_ok", spy)

    async def status() -> dict[str, Any]:
        return {"ok": True}

    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        api = await nursery.start(serve_http, openai_app(None, api_key="key-1"), "127.0.0.1", 0)  # type: ignore[arg-type]
        admin = await nursery.start(serve_http, admin_app(status, "tok-1"), "127.0.0.1", 0)
        with trio.fail_after(30):
            assert (await client.get(api + "/v1/models", headers={"authorization": "Bearer key-2"})).status_code == 401
            assert (await client.get(api + "/v1/models", headers={"authorization": "Bearer key-1"})).status_code == 200
            assert (await client.get(admin + "/status", headers={"authorization": "Bearer tok-0"})).status_code == 401
            ok = await client.get(admin + "/status", headers={"authorization": "Bearer tok-1"})
            assert ok.json() == {"ok": True}
        nursery.cancel_scope.cancel()
    assert calls == ["key-1", "key-1", "tok-1", "tok-1"]
