"""Where the request metrics come from, without touching the API's code: an ASGI wrapper (endpoint, status,
error text) and a wrapper around the requester's event stream (model, first token, chunk gaps, tokens).

The two meet through a per-request holder in a context variable: the API handler runs in the wrapper's task
(or a child of it, which inherits the variable), so the stream wrapper can tell the ASGI wrapper the model.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cocoon_node.observe.metrics import NodeMetrics

_request: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("cocoon_observed_request",
                                                                                  default=None)
_ERROR_BODY_BYTES = 2048


def _error_text(body: bytes) -> str:
    """The message of an OpenAI-shaped (or admin) error body; the raw start of anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message", ""))
        if err is not None:
            return str(err)
    return body[:200].decode("utf-8", "replace")


class ObservedHTTP:
    """ASGI wrapper counting each HTTP request by endpoint, model and status, and keeping recent errors."""

    def __init__(self, app: ASGIApp, metrics: NodeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder: dict[str, Any] = {"model": "", "error": "", "status": 0}
        body = bytearray()
        token = _request.set(holder)

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                holder["status"] = int(message["status"])
            elif message["type"] == "http.response.body" and holder["status"] >= 400 and len(body) < _ERROR_BODY_BYTES:
                body.extend(message.get("body", b"")[: _ERROR_BODY_BYTES - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            _request.reset(token)
            status = holder["status"] or 500
            error = holder["error"] or (_error_text(bytes(body)) if status >= 400 else "")
            self.metrics.request_done(scope.get("path", ""), holder["model"], status, error)


class _TimedEvents:
    """The requester's event channel, timestamping what passes (``receive_nowait`` too: the API coalesces)."""

    def __init__(self, inner: Any, metrics: NodeMetrics, model: str, started: float,
                 holder: dict[str, Any] | None) -> None:
        self._inner = inner
        self._metrics = metrics
        self._model = model
        self._started = started
        self._last: float | None = None
        self._holder = holder

    def _seen(self, event: Any) -> Any:
        from cocoon_node.inference.requester import StreamStart
        from cocoon_node.inference.stream import Delta, Final

        now = time.monotonic()
        if isinstance(event, Delta):
            if self._last is None:
                self._metrics.first_token(self._model, now - self._started)
            else:
                self._metrics.chunk_gap(self._model, now - self._last, event.tokens)
            self._last = now
        elif isinstance(event, Final):
            self._metrics.tokens(self._model, event.prompt_tokens, event.completion_tokens)
        elif isinstance(event, StreamStart) and self._holder is not None:
            self._holder["worker"] = event.worker.peer.to_base58()
        return event

    def _failed(self, exc: BaseException) -> None:
        if self._holder is not None:
            self._holder["error"] = str(exc)

    async def receive(self) -> Any:
        import trio

        try:
            return self._seen(await self._inner.receive())
        except trio.EndOfChannel:
            raise
        except Exception as exc:
            self._failed(exc)
            raise

    def receive_nowait(self) -> Any:
        return self._seen(self._inner.receive_nowait())

    def __aiter__(self) -> _TimedEvents:
        return self

    async def __anext__(self) -> Any:
        import trio

        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class ObservedRequester:
    """Stands in for the requester the API calls: same ``stream(chat)``, events timed on the way through;
    every other attribute is the requester's own."""

    def __init__(self, requester: Any, metrics: NodeMetrics) -> None:
        self._requester = requester
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._requester, name)

    @asynccontextmanager
    async def stream(self, chat: Any, **kw: Any) -> AsyncIterator[_TimedEvents]:
        holder = _request.get()
        if holder is not None:
            holder["model"] = chat.model
        started = time.monotonic()
        async with self._requester.stream(chat, **kw) as events:
            yield _TimedEvents(events, self._metrics, chat.model, started, holder)
