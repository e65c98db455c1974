"""The worker's end of the inference stream: :class:`InferenceServer` serves requests for one backend.

Requests in sequence on one stream. The worker reads a request, validates it like the OpenAI API would,
answers accept or reject, then streams deltas while a second task listens for ``cancel`` and ``voucher``
frames; a cancel frame or the stream closing cancels generation, which the backend honours within one token
step. After a clean ``final`` the worker (which says ``keep_open`` in its accept) waits for the requester's
next request on the same stream, so a busy requester does not pay for a new stream per request. Every wait
is bounded. One accepted request is a :class:`_Generation`, whose fields are the state its tasks share.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from typing import Any

import trio

from cocoon_node.inference._generation import IDLE_STREAM_TIMEOUT, Frames, _Generation
from cocoon_node.inference.backend import Backend
from cocoon_node.inference.chat import ChatRequest, RequestValidationError
from cocoon_node.inference.features import unsupported
from cocoon_node.inference.port import (
    PaymentRequired,
    ReceiptSigner,
    WorkerMeter,
    open_frames,
    remote_key,
    send_quietly,
)
from cocoon_node.wire import FrameError, frame_tag, utf8_clip
from cocoon_node.wire.messages.inference import (
    AcceptFrame,
    ErrorFrame,
    PaymentRef,
    RejectCode,
    RejectFrame,
    RequestFrame,
)

log = logging.getLogger(__name__)

REQUEST_LOG_LENGTH = 256



@dataclass
class WorkerStats:
    served: int = 0
    rejected: int = 0
    cancelled: int = 0
    failed: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class WorkerTerms:
    model: str
    price_prompt: int
    price_completion: int
    max_concurrent: int
    max_tokens_cap: int
    request_timeout: float = 300.0


class InferenceServer:
    """Serves inference streams for one backend, admitting at most ``max_concurrent`` at a time."""

    def __init__(
        self,
        backend: Backend,
        terms: WorkerTerms,
        *,
        meter: WorkerMeter | None = None,
        on_load_change: Callable[[int], None] | None = None,
        request_log: MutableSequence[ChatRequest] | None = None,
        receipts: ReceiptSigner | None = None,
    ) -> None:
        self.backend = backend
        self.terms = terms
        self.meter = meter
        self.receipts = receipts  # signs receipts (issue 16); None: a receipt request closes the stream
        self.stats = WorkerStats()
        self._on_load_change = on_load_change
        # What prompts reached this worker; tests assert on it (attestation policy must keep it empty).
        # The last accepted requests, prompts included, for tests and netsim's counters: bounded, so a worker
        # that runs for months neither grows without end nor keeps more prompts than it must.
        self.request_log: MutableSequence[ChatRequest] = (request_log if request_log is not None
                                                           else deque(maxlen=REQUEST_LOG_LENGTH))

    @property
    def load(self) -> int:
        return self.stats.in_flight

    async def handle(self, raw_stream: Any) -> None:
        """libp2p stream handler."""
        frames = open_frames(raw_stream)
        try:
            await self._serve(frames, remote_key(raw_stream))
        except FrameError as exc:
            log.info("closing inference stream after a malformed frame: %s", exc)
            await send_quietly(frames, ErrorFrame(id="", code="protocol", message=utf8_clip(str(exc), 1000)))
        except trio.TooSlowError:
            await send_quietly(frames, ErrorFrame(id="", code="timeout", message="request timed out"))
        except Exception as exc:  # one bad stream must never take the worker down
            log.warning("inference stream failed: %r", exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await raw_stream.close()
                except Exception:
                    pass

    async def _serve(self, frames: Frames, remote_key: bytes | None = None) -> None:
        """Serve requests one after another until the requester closes the stream or leaves it idle."""
        with trio.fail_after(IDLE_STREAM_TIMEOUT):
            frame = await frames.receive()
        while frame is not None:
            if not isinstance(frame, RequestFrame):
                raise FrameError(f"expected a request frame, got {frame_tag(frame)!r}")
            frame = await self._serve_request(frames, frame, remote_key)

    async def _serve_request(
        self, frames: Frames, first: RequestFrame, remote_key: bytes | None
    ) -> RequestFrame | None:
        """One request; returns the next request frame when the requester sent one on this stream."""
        request_id = first.id

        async def reject(code: RejectCode, message: str, field: str | None = None) -> None:
            """A rejected request ends the stream (the requester tries elsewhere or gives up)."""
            self.stats.rejected += 1
            await frames.send(RejectFrame(id=request_id, code=code, message=utf8_clip(message, 1000),
                                          field=utf8_clip(field, 128) if field is not None else ""))

        try:
            chat = ChatRequest.from_wire(first.chat, max_tokens_limit=self.terms.max_tokens_cap)
        except RequestValidationError as exc:
            await reject("invalid_request", exc.message, exc.field)
            return None
        if chat.model != self.terms.model:
            await reject("model_mismatch", f"this worker serves {self.terms.model!r}", "model")
            return None
        # issue 13: a feature this backend lacks is the client's request, refused before anything is counted
        lacking = unsupported(chat.capabilities_used(), getattr(self.backend, "capabilities", frozenset()))
        if lacking is not None:
            await reject("invalid_request", f"this worker's {self.backend.kind} backend does not support "
                         f"{lacking[0]} (requested by {lacking[1]})", lacking[1])
            return None
        if first.price_prompt < self.terms.price_prompt or first.price_completion < self.terms.price_completion:
            await reject("price_mismatch", "offered prices are below the announced prices")
            return None
        if self.stats.in_flight >= self.terms.max_concurrent:
            await reject("overloaded", f"all {self.terms.max_concurrent} slots are busy")
            return None
        prompt_tokens = self.backend.count_tokens(chat)
        # A backend that knows its context (torch, exllamav2) refuses a prompt beyond it before accepting, so
        # the client gets a 400 even when streaming (after an accept, the response has started).
        context = getattr(self.backend, "context_length", 0)
        if isinstance(context, int) and 0 < context <= prompt_tokens:
            await reject("context_length", f"the prompt is {prompt_tokens} tokens; this model's maximum context "
                         f"length is {context} tokens", "messages")
            return None
        self.stats.in_flight += 1
        self._load_changed()
        held = True

        def release_slot() -> None:
            nonlocal held
            if held:
                held = False
                self.stats.in_flight -= 1
                self._load_changed()

        try:
            if self.meter is not None:
                payment = first.payment if isinstance(first.payment, PaymentRef) else None
                try:
                    await self.meter.admit(request_id, payment, prompt_tokens, remote_key)
                except PaymentRequired as exc:
                    await reject("payment_required", str(exc))
                    return None
            self.request_log.append(chat)
            accept = AcceptFrame(id=request_id, prompt_tokens=prompt_tokens,
                                 credit_window=self.meter.credit_window if self.meter else 0, keep_open=True)
            return await self._generate(frames, accept, chat, release_slot, first)
        finally:
            release_slot()

    async def _generate(
        self, frames: Frames, accept: AcceptFrame, chat: ChatRequest, release_slot: Callable[[], None],
        request: RequestFrame,
    ) -> RequestFrame | None:
        """Accept and stream one completion (see :class:`_Generation`); returns the requester's next request
        on this stream, if it sent one."""
        return await _Generation(self, frames, accept, chat, request).run(release_slot)

    def _load_changed(self) -> None:
        if self._on_load_change is not None:
            self._on_load_change(self.stats.in_flight)
