"""The requester's OpenAI-compatible HTTP surface, driven as an ASGI app in this process (no socket, no node):
status codes, the OpenAI error shape, and the framing of streamed completions (server-sent events)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from cocoon_node.api import admin_app, openai_app
from cocoon_node.api.openai_api import MAX_BODY_BYTES
from tests.conftest import MODEL, RequesterApp
from tests.waiting import wait_until

AUTH = {"authorization": "Bearer sk-test"}


def body(text: str = "one two three", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **fields}


def assert_openai_error(payload: dict[str, Any], *, type_: str, code: str | None = None,
                        param: str | None = None) -> None:
    """OpenAI's error envelope: exactly message, type, param and code under ``error``."""
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == type_
    assert err["code"] == code
    assert err["param"] == param


def sse_events(raw: bytes) -> list[bytes]:
    """The data payloads of a server-sent event stream, checking the framing on the way."""
    assert raw.endswith(b"\n\n"), "every event ends with a blank line"
    events = raw[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: ") and b"\n" not in event, f"one data line per event: {event!r}"
    return [e[len(b"data: "):] for e in events]


async def test_a_completion_answers_with_the_openai_shape(requester_app: RequesterApp) -> None:
    with trio.fail_after(30):
        async with requester_app.http() as http:
            r = await http.post("/v1/chat/completions", json=body(max_tokens=8), headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == MODEL and data["id"].startswith("chatcmpl-")
    (choice,) = data["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].split() == ["one", "two",
                                                                                                "three"]
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["completion_tokens"] == 3 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert r.headers["x-cocoon-worker"] == requester_app.workers[0].peer.to_base58() == data["system_fingerprint"]
    assert r.headers["x-cocoon-attempts"] == "1"
    assert requester_app.server.stats.served == 1


async def test_a_streamed_completion_is_framed_as_server_sent_events(requester_app: RequesterApp) -> None:
    req = body("alpha beta gamma delta", stream=True, stream_options={"include_usage": True}, max_tokens=3)
    with trio.fail_after(30):
        async with requester_app.http() as http:
            r = await http.post("/v1/chat/completions", json=req, headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    *chunks, done = sse_events(r.content)
    assert done == b"[DONE]"
    parsed = [json.loads(c) for c in chunks]
    assert {c["object"] for c in parsed} == {"chat.completion.chunk"}
    assert len({c["id"] for c in parsed}) == 1  # one completion id throughout
    first, *middle, usage = parsed
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    *content, last = middle
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text.split() == ["alpha", "beta", "gamma"]  # max_tokens 3 of the echoed words
    assert all(c["choices"][0]["finish_reason"] is None for c in content)


async def test_a_model_no_worker_offers_is_a_404_also_when_streaming(requester_app: RequesterApp) -> None:
    """Issue 13's error contract: no worker offers the model at all -> OpenAI's 404 ``model_not_found``
    (503 is kept for a model whose workers exist but none is usable)."""
    requester_app.workers.clear()
    with trio.fail_after(30):
        async with requester_app.http() as http:
            plain = await http.post("/v1/chat/completions", json=body(), headers=AUTH)
            streamed = await http.post("/v1/chat/completions", json=body(stream=True), headers=AUTH)
    for r in (plain, streamed):  # nothing was accepted: a plain HTTP error, not an event stream
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/json"
        assert_openai_error(r.json(), type_="invalid_request_error", code="model_not_found", param="model")
    assert requester_app.server.stats.served == 0


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": "sk-test"}],
                         ids=["missing", "wrong", "not-bearer"])
async def test_every_route_wants_the_api_key(requester_app: RequesterApp, headers: dict[str, str]) -> None:
    async with requester_app.http() as http:
        answers = [await http.get("/v1/models", headers=headers),
                   await http.post("/v1/chat/completions", json=body(), headers=headers),
                   await http.get("/v1/cocoon/channels", headers=headers)]
    for r in answers:
        assert r.status_code == 401
        assert_openai_error(r.json(), type_="invalid_request_error", code="invalid_api_key")
    assert requester_app.server.stats.served == 0  # nothing reached the worker


async def test_models_and_channels(requester_app: RequesterApp) -> None:
    async with requester_app.http() as http:
        models = await http.get("/v1/models", headers=AUTH)
        channels = await http.get("/v1/cocoon/channels", headers=AUTH)
    assert models.status_code == 200
    assert models.json() == {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                         "owned_by": "cocoon-mesh"}]}
    assert channels.json() == {"enabled": False}  # no payments behind this app


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (json.dumps({"model": MODEL}).encode(), "messages"),
        (json.dumps(body(max_tokens=-1)).encode(), "max_tokens"),
        (json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}).encode(), "messages[0].role"),
    ],
    ids=["not-json", "no-messages", "negative-max-tokens", "unknown-role"],
)
async def test_bad_requests_get_400_with_the_field_named(requester_app: RequesterApp, content: bytes,
                                                         param: str | None) -> None:
    async with requester_app.http() as http:
        r = await http.post("/v1/chat/completions", content=content,
                            headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400
    assert_openai_error(r.json(), type_="invalid_request_error", param=param,
                        code="invalid_json" if param is None else "invalid_value")
    assert requester_app.server.stats.served == 0


async def test_an_oversized_body_is_refused_with_413_declared_or_not(requester_app: RequesterApp) -> None:
    big = json.dumps(body("x" * (MAX_BODY_BYTES + 10))).encode()

    async def chunks() -> Any:  # no content-length: the app must count while it reads
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    async with requester_app.http() as http:
        declared = await http.post("/v1/chat/completions", content=big, headers=AUTH)
        undeclared = await http.post("/v1/chat/completions", content=chunks(), headers=AUTH)
    assert "content-length" not in undeclared.request.headers
    for r in (declared, undeclared):
        assert r.status_code == 413
        assert_openai_error(r.json(), type_="invalid_request_error", code="request_too_large")
    assert requester_app.server.stats.served == 0


async def test_a_client_that_hangs_up_mid_stream_cancels_the_request_on_the_worker(
        requester_app: RequesterApp) -> None:
    """Raw ASGI, so the client can go away after the first content chunk (httpx's transport reads to the end)."""
    requester_app.backend.tokens_per_second = 50  # slow enough that the request is still running at the hang-up
    request = json.dumps(body(" ".join(["w"] * 400), stream=True, max_tokens=400)).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "server": ("requester", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"authorization", b"Bearer sk-test"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(request)).encode())]}
    hang_up = trio.Event()
    sent: list[dict[str, Any]] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request, "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and b'"content": "w' in message.get("body", b""):
            hang_up.set()

    with trio.fail_after(30):
        await requester_app.app(scope, receive, send)
        assert hang_up.is_set() and sent[0]["status"] == 200
        assert not any(b"[DONE]" in m.get("body", b"") for m in sent)  # it never ran to the end
        await wait_until(lambda: requester_app.server.stats.in_flight == 0, timeout=10)
    assert requester_app.backend.tokens_generated < 400  # the worker stopped generating: the cancel reached it


async def test_admin_status_wants_its_token() -> None:
    async def status() -> dict[str, Any]:
        return {"peer_id": "me"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admin_app(status, "tok")),
                                 base_url="http://admin") as http:
        denied = await http.get("/status")
        wrong = await http.get("/status", headers={"authorization": "Bearer nope"})
        ok = await http.get("/status", headers={"authorization": "Bearer tok"})
    assert denied.status_code == wrong.status_code == 401
    assert ok.status_code == 200 and ok.json() == {"peer_id": "me"}


async def test_the_app_without_an_api_key_is_open(requester_app: RequesterApp) -> None:
    """``api_key=""`` (the default for a local requester) means no Authorization check at all."""
    app = openai_app(requester_app.requester, models=lambda: [])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://requester") as http:
        with trio.fail_after(30):
            models = await http.get("/v1/models")
            answer = await http.post("/v1/chat/completions", json=body(max_tokens=2))
    assert models.status_code == 200 and models.json() == {"object": "list", "data": []}
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2
