"""OpenAI-compatible HTTP API served by a requester node, so any OpenAI client can use the mesh.

``POST /v1/chat/completions`` (and ``POST /v1/completions``, see :mod:`.completions`) answers as JSON or, with
``stream: true``, as server-sent events ending in ``data: [DONE]``; ``GET /v1/models`` (and
``/v1/models/{id}``) lists what the mesh offers with worker counts, price ranges, per-worker load and the
attestation verdicts behind them. Errors use OpenAI's error shape and status codes (README: "Error codes").
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cocoon_node.api.client_gone import unless_client_gone
from cocoon_node.api.completions import NotACompletion, TextStream, chat_payloads, complete_all, model_entry, path_model
from cocoon_node.api.guard import MAX_BODY_BYTES, BadBody, bearer_ok, error_response, invalid, parse_json, read_body
from cocoon_node.api.receipts import keep_receipt, receipt_route
from cocoon_node.inference import (
    CapabilityUnavailable,
    ChatRequest,
    ContextTooLong,
    Delta,
    Event,
    Final,
    ModelNotFound,
    NoWorkerAvailable,
    QueueRejected,
    Requester,
    RequestTooLarge,
    RequestValidationError,
    StreamStart,
    ToolCallAccumulator,
    WorkerFailure,
    check_sendable,
    client_key,
    merge_tool_calls,
    parse_chat_request,
)
from cocoon_node.payments.receipt_store import ReceiptStore

log = logging.getLogger(__name__)

__all__ = ["MAX_BODY_BYTES", "error_response", "failure_response", "openai_app"]


def failure_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, ModelNotFound):
        return error_response(404, str(exc), type_="invalid_request_error", param="model", code=exc.code)
    if isinstance(exc, CapabilityUnavailable):  # the request's fault: a feature nobody serving the model has
        return invalid(str(exc), param=exc.field, code=exc.code)
    if isinstance(exc, ContextTooLong):  # counted here against the workers' announced context (issue 13)
        return invalid(str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, QueueRejected):  # the admission queue is full or the wait ran out (issue 13)
        busy = error_response(429, str(exc), type_="rate_limit_error", code=exc.code)
        busy.headers["retry-after"] = str(exc.retry_after)
        return busy
    if isinstance(exc, NoWorkerAvailable):
        return error_response(503, str(exc), type_="service_unavailable", code=exc.code)
    if isinstance(exc, WorkerFailure):
        if exc.code == "invalid_request":
            return error_response(400, str(exc), type_="invalid_request_error", param=exc.field, code=exc.code)
        if exc.code == "context_length":  # found by the worker (rejected, or failed by its backend)
            return error_response(400, str(exc), type_="invalid_request_error", param="messages",
                                  code="context_length_exceeded")
        status = 504 if exc.code == "timeout" else 502
        return error_response(status, f"worker failed: {exc}", type_="upstream_error", code=exc.code)
    return error_response(500, "internal error", type_="server_error")


def _coalesce(first: Delta, events: Any) -> tuple[Delta, Event | None]:
    """Merge deltas already queued behind ``first`` into one SSE chunk; returns the merged delta and the
    first non-delta event taken from the queue, if any (the caller handles it next)."""
    parts, calls, logprobs = [first.text], list(first.tool_calls), list(first.logprobs)
    follow: Event | None = None
    while True:
        try:
            nxt = events.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        if not isinstance(nxt, Delta):
            follow = nxt
            break
        parts.append(nxt.text)
        calls += nxt.tool_calls
        logprobs += nxt.logprobs
    return Delta("".join(parts), 0, tuple(merge_tool_calls(calls)), tuple(logprobs)), follow


def _finish(reason: str) -> str:
    return reason if reason in ("length", "tool_calls") else "stop"


def _logprobs(entries: Any) -> dict[str, Any]:
    return {"content": [e.to_openai() for e in entries], "refusal": None}


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def _usage(prompt: int, completion: int, prices: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """OpenAI's token counts plus what they cost at the answering worker's announced prices, in nanotons
    (``cost_nanotons``: prompt, completion, total; what the vouchers pay for them)."""
    cost = {"prompt": prompt * prices[0], "completion": completion * prices[1]}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cost_nanotons": {**cost, "total": cost["prompt"] + cost["completion"]}}


def request_client(request: Request) -> str:
    """The admission queue's fairness key: the bearer credential a client sends, else its address
    (digested: the queue never holds a key)."""
    who = request.headers.get("authorization") or (request.client.host if request.client else "")
    return client_key(who)


class ChatStreamResponse(Response):
    """Server-sent events written from the request's own task, so the mesh stream's nursery lives here.

    When the client goes away, the write fails, the ``async with`` exits, and the worker gets a cancel.
    """

    media_type = "text/event-stream"

    def __init__(self, requester: Requester, chat: ChatRequest, client: str = "",
                 receipts: ReceiptStore | None = None) -> None:
        super().__init__(content=None, media_type=self.media_type,
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._requester = requester
        self._chat = chat
        self._client = client
        self._receipts = receipts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Hypercorn drops writes after a disconnect rather than failing them, so watch for the disconnect
        # message itself and cancel the stream (and with it the request on the worker) when it comes.
        # The response's last message is sent shielded (see _last): Hypercorn queues the disconnect while
        # handling it, and a cancel landing inside its close left a Connection: close / HTTP/1.0 client
        # waiting forever after [DONE] (issue 13).
        async with trio.open_nursery() as nursery:
            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_disconnect)
            await self._respond(scope, receive, send)
            nursery.cancel_scope.cancel()

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Headers (and the role chunk) go out once a worker has accepted, while the model works on its first
        token, so the first token's write is one send. Failures before any worker accepted are plain HTTP
        errors; a worker that fails after its accept but before its first token is still retried elsewhere
        (the chunks' ``system_fingerprint`` then names the worker that answered; the header names the first)."""
        chat = self._chat
        cid, created = _completion_id(), int(time.time())
        started = finished = False
        role = b""  # the role chunk, until the first body write carries it
        worker = ""
        attempts = 0
        prompt_tokens = 0
        path = ""  # how the worker was reached: direct, hole-punched, relayed (issue 14)
        prices = (0, 0)

        def sse(obj: Any) -> bytes:
            return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"

        def chunk(delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": chat.model,
                    "system_fingerprint": worker,
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

        async def start() -> None:
            nonlocal started, role
            started = True
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"),
                                    (b"cache-control", b"no-cache"),
                                    (b"x-cocoon-worker", worker.encode()),
                                    (b"x-cocoon-attempts", str(attempts).encode()),
                                    (b"x-cocoon-path", path.encode())]})
            # The role chunk rides on the first body write (one socket send fewer per response; issue 18).
            role = sse(chunk({"role": "assistant", "content": ""}, None))

        async def write(body: bytes) -> None:
            nonlocal role
            if not started:
                await start()
            body, role = role + body, b""
            await send({"type": "http.response.body", "body": body, "more_body": True})

        try:
            async with self._requester.stream(chat, client=self._client) as events:
                async for ev in events:
                    if isinstance(ev, StreamStart):
                        worker, prompt_tokens, attempts = ev.worker.peer.to_base58(), ev.prompt_tokens, ev.attempts
                        path = ev.path or ""
                        prices = (ev.worker.price_prompt, ev.worker.price_completion)
                        if not started:
                            await start()
                        continue
                    if isinstance(ev, Delta):
                        merged, follow = _coalesce(ev, events)
                        delta: dict[str, Any] = {"content": merged.text} if merged.text else {}
                        if merged.tool_calls:
                            delta["tool_calls"] = [c.to_openai() for c in merged.tool_calls]
                        if delta or merged.logprobs:
                            await write(sse(chunk(delta, None, _logprobs(merged.logprobs) if merged.logprobs
                                                  else None)))
                        if follow is not None:
                            ev = follow
                    if isinstance(ev, Final):
                        finish = _finish(ev.finish_reason)
                        # issue 16: the final chunk carries the checked receipt (stored first)
                        tail = sse({**chunk({}, finish),
                                    "cocoon": await keep_receipt(self._receipts, cid, worker, ev)})
                        if chat.include_usage:
                            tail += sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                                         "model": chat.model, "choices": [],
                                         "usage": _usage(prompt_tokens, ev.completion_tokens, prices)})
                        await write(tail + sse(b"[DONE]"))
                        finished = True
                if not finished:
                    await write(sse(b"[DONE]"))
        except (NoWorkerAvailable, WorkerFailure) as exc:
            if not started:
                with _last_message():
                    await failure_response(exc)(scope, receive, send)
                return
            await write(sse(_stream_error(exc)))
        except OSError:
            return  # client went away; leaving the block cancelled the request on the worker
        with _last_message():
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _stream_error(exc: Exception) -> dict[str, Any]:
    """The error event of a stream already answered 200: the client's fault (a context error the upstream
    found only after accepting) in the same shape and code as its 400 would have had, else the worker's."""
    if isinstance(exc, WorkerFailure) and exc.code in ("context_length", "invalid_request"):
        return dict(json.loads(bytes(failure_response(exc).body)))
    return {"error": {"message": f"worker failed mid-stream: {exc}", "type": "upstream_error", "param": None,
                      "code": getattr(exc, "code", None)}}


def _last_message() -> trio.CancelScope:
    """Shield for a response's last send, during which Hypercorn closes a connection that must close
    (bounded: a client that stops reading cannot hold it)."""
    return trio.CancelScope(shield=True, deadline=trio.current_time() + _LAST_SEND_TIMEOUT)


_LAST_SEND_TIMEOUT = 10.0


def openai_app(requester: Requester, *, api_key: str = "",
               models: Callable[..., list[dict[str, Any]]] | None = None,
               channels: Callable[[], Awaitable[dict[str, Any]]] | None = None,
               attestation: Callable[[str, bytes], Awaitable[dict[str, Any]]] | None = None,
               receipts: ReceiptStore | None = None) -> Starlette:
    """Build the ASGI app. ``models`` returns the model list entries (see the node); ``attestation`` fetches
    a worker's fresh, nonce-bound attestation (``GET /v1/cocoon/attestation/{worker}?nonce=HEX``)."""

    def unauthorized(request: Request) -> JSONResponse | None:
        if api_key and not bearer_ok(request.headers.get("authorization"), api_key):
            return error_response(401, "invalid or missing API key", type_="invalid_request_error",
                                  code="invalid_api_key")
        return None

    async def list_models(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        # issue 15: ?min_context_length=N&accelerator=TEXT keep only workers announcing such hardware
        filters = {k: v for k, v in request.query_params.items() if k in ("min_context_length", "accelerator")}
        if not filters.get("min_context_length", "0").isdigit():
            return error_response(400, "min_context_length must be a whole number of tokens",
                                  type_="invalid_request_error", code="invalid_filter")
        return JSONResponse({"object": "list", "data": (models(filters) if filters else models()) if models else []})

    async def chat_completions(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            payload = parse_json(await read_body(request, MAX_BODY_BYTES))
        except BadBody as exc:
            return exc.response
        try:
            chat = parse_chat_request(payload)
            check_sendable(chat)  # what the wire cannot carry is refused before anything leaves
        except RequestTooLarge as exc:
            return invalid(f"{exc.field}: {exc.message}", param=exc.field, code="request_too_large", status=413)
        except RequestValidationError as exc:
            return invalid(f"{exc.field}: {exc.message}", param=exc.field)
        client = request_client(request)
        if chat.stream:
            return ChatStreamResponse(requester, chat, client, receipts)
        return await unless_client_gone(request, partial(_complete, requester, chat, client, receipts))

    async def get_model(request: Request) -> Response:
        """``GET /v1/models/{id}``: one entry of the list (issue 13)."""
        if (denied := unauthorized(request)) is not None:
            return denied
        return model_entry(models() if models else [], path_model(request))

    async def text_completions(request: Request) -> Response:
        """``POST /v1/completions``: each prompt as a chat request, answered in the text_completion shape."""
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            chats = [parse_chat_request(p) for p in chat_payloads(parse_json(await read_body(request, MAX_BODY_BYTES)))]
            for chat in chats:
                check_sendable(chat)
        except (BadBody, NotACompletion) as exc:
            return exc.response
        except RequestTooLarge as exc:
            return invalid(f"prompt: {exc.message}", param="prompt", code="request_too_large", status=413)
        except RequestValidationError as exc:
            field = "prompt" if exc.field.startswith("messages") else exc.field
            return invalid(f"{field}: {exc.message}", param=field)
        client = request_client(request)
        if chats[0].stream:
            return TextStream(ChatStreamResponse(requester, chats[0], client, receipts))
        answers: list[Callable[[], Awaitable[Response]]] = [partial(_complete, requester, c, client, receipts)
                                                            for c in chats]
        return await unless_client_gone(request, partial(complete_all, answers))

    async def list_channels(request: Request) -> Response:
        """Payment channels, balances and amounts earned or spent (``/v1/cocoon/channels``)."""
        if (denied := unauthorized(request)) is not None:
            return denied
        return JSONResponse(await channels() if channels else {"enabled": False})

    async def fresh_attestation(request: Request) -> Response:
        """A worker's report plus new evidence over the client's 32-byte nonce, to check freshness oneself."""
        if (denied := unauthorized(request)) is not None:
            return denied
        if attestation is None:
            return error_response(404, "fresh attestation is not served here", type_="invalid_request_error")
        raw = request.query_params.get("nonce", "")
        try:
            nonce = bytes.fromhex(raw)
        except ValueError:
            nonce = b""
        if len(nonce) != 32:
            return error_response(400, "nonce must be 32 bytes in hex (64 hex digits)",
                                  type_="invalid_request_error", param="nonce", code="invalid_value")
        return await attestation_response(attestation, request.path_params["worker"], nonce)

    routes = [
        Route("/v1/cocoon/attestation/{worker}", fresh_attestation, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", text_completions, methods=["POST"]),
        Route("/v1/cocoon/channels", list_channels, methods=["GET"]),
        receipt_route(receipts, unauthorized),
    ]
    return Starlette(routes=routes)


async def attestation_response(fetch: Callable[[str, bytes], Awaitable[dict[str, Any]]], worker: str,
                               nonce: bytes) -> JSONResponse:
    """``fetch``'s answer as JSON; LookupError is an unknown worker (404), other failures the worker's (502)."""
    try:
        return JSONResponse(await fetch(worker, nonce))
    except LookupError as exc:
        return error_response(404, str(exc).strip("'\""), type_="invalid_request_error", param="worker",
                              code="unknown_worker")
    except Exception as exc:  # the worker's failure (unreachable, busy, no TEE): not the client's
        return error_response(502, f"worker gave no fresh attestation: {exc}", type_="upstream_error",
                              code=getattr(exc, "code", None))


async def _complete(requester: Requester, chat: ChatRequest, client: str = "",
                    receipts: ReceiptStore | None = None) -> Response:
    text: list[str] = []
    calls = ToolCallAccumulator()
    logprobs: list[Any] = []
    worker = ""
    attempts = 0
    prompt_tokens = 0
    path = ""
    prices = (0, 0)
    final: Final | None = None
    try:
        async with requester.stream(chat, client=client) as events:
            async for ev in events:
                if isinstance(ev, StreamStart):
                    worker, prompt_tokens, attempts = ev.worker.peer.to_base58(), ev.prompt_tokens, ev.attempts
                    path = ev.path or ""
                    prices = (ev.worker.price_prompt, ev.worker.price_completion)
                elif isinstance(ev, Delta):
                    text.append(ev.text)
                    calls.add(ev.tool_calls)
                    logprobs += ev.logprobs
                elif isinstance(ev, Final):
                    final = ev
    except (NoWorkerAvailable, WorkerFailure) as exc:
        return failure_response(exc)
    assert final is not None
    cid = _completion_id()
    cocoon = await keep_receipt(receipts, cid, worker, final)  # issue 16: stored before it is answered
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if calls:  # OpenAI's shape: content null when the turn only called tools
        message["content"] = "".join(text) or None
        message["tool_calls"] = calls.result()
    return JSONResponse(
        {
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": chat.model,
            "system_fingerprint": worker,
            "choices": [{"index": 0, "message": message,
                         "logprobs": _logprobs(logprobs) if chat.features.logprobs else None,
                         "finish_reason": _finish(final.finish_reason)}],
            "usage": _usage(prompt_tokens, final.completion_tokens, prices),
            "cocoon": cocoon,
        },
        headers={"x-cocoon-worker": worker, "x-cocoon-attempts": str(attempts), "x-cocoon-path": path},
    )



