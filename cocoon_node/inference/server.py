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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from cocoon_node.inference.backend import Backend, BackendError, ContextLengthError
from cocoon_node.inference.chat import ChatRequest, RequestValidationError
from cocoon_node.inference.extras import COALESCE_BYTES, TokenLogprob, ToolCallDelta, delta_frames, extras_bytes
from cocoon_node.inference.features import unsupported
from cocoon_node.inference.port import (
    InferenceFrame,
    PaymentRequired,
    ReceiptSigner,
    WorkerMeter,
    open_frames,
    remote_key,
    send_quietly,
    sole_exception,
)
from cocoon_node.inference.receipting import sign_served
from cocoon_node.wire import FrameError, FrameStream, frame_tag, utf8_clip
from cocoon_node.wire.messages.inference import (
    AcceptFrame,
    CancelFrame,
    ErrorCode,
    ErrorFrame,
    FinalFrame,
    FinishReason,
    PaymentRef,
    ReceiptFrame,
    ReceiptRequestFrame,
    RejectCode,
    RejectFrame,
    RequestFrame,
    VoucherFrame,
)

log = logging.getLogger(__name__)

_DELTA_QUEUE = 64  # deltas a worker may have generated but not yet written
_LINGER_PER_STREAM = 0.002  # seconds a delta writer waits after a frame, per other stream in flight
_MAX_LINGER = 0.05
_IDLE_STREAM_TIMEOUT = 30.0  # how long a worker waits for a request on a new or finished stream

Frames = FrameStream[InferenceFrame]
# A generated delta waiting for the writer: text, tokens, is it the last, tool-call pieces, logprobs.
_Queued = tuple[str, int, bool, tuple[ToolCallDelta, ...], tuple[TokenLogprob, ...]]


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
        request_log: list[ChatRequest] | None = None,
        receipts: ReceiptSigner | None = None,
    ) -> None:
        self.backend = backend
        self.terms = terms
        self.meter = meter
        self.receipts = receipts  # signs receipts (issue 16); None: a receipt request closes the stream
        self.stats = WorkerStats()
        self._on_load_change = on_load_change
        # What prompts reached this worker; tests assert on it (attestation policy must keep it empty).
        self.request_log = request_log if request_log is not None else []

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
        with trio.fail_after(_IDLE_STREAM_TIMEOUT):
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


class _Generation:
    """One accepted request: a backend feeding a delta writer, and a listener for the requester's frames.

    The backend starts before the accept frame is written (the writer sends it ahead of the first delta), so
    writing it overlaps the model's time to first token instead of adding to it.

    The listener runs until the requester closes the stream or sends its next request, also after
    ``final``, so the voucher that pays the tail still arrives; it is never cancelled mid-read (that could
    lose buffered bytes) unless the stream is about to be closed. The slot is released once generation is
    over: waiting for the tail voucher costs the backend nothing, and a requester starting its next request
    at once would otherwise find every slot "busy".
    """

    def __init__(self, server: InferenceServer, frames: Frames, accept: AcceptFrame, chat: ChatRequest,
                 request: RequestFrame) -> None:
        self.server = server
        self.request = request
        self.output: list[str] = []  # the deltas' texts, as streamed (the receipt's output digest)
        self.receipt_asked: ReceiptRequestFrame | None = None
        self.wake = trio.Event()  # the listener saw the hang-up, the next request or a receipt request
        self.meter = server.meter
        self.frames = frames
        self.accept = accept
        self.chat = chat
        self.request_id = accept.id
        self.started = time.monotonic()
        self.accepted = trio.Event()  # the writer sent the accept frame
        self.first_token_at: float | None = None
        self.completion_tokens = 0
        self.finish_reason: FinishReason = "cancelled"
        self.peer_done = trio.Event()  # the requester closed the stream or sent its next request
        self.final_sent = False
        self.next_request: RequestFrame | None = None
        self.payment_error: str | None = None  # the first payment failure (it cancels generation)
        self.protocol_error: str | None = None
        self.generation = trio.CancelScope()

    async def run(self, release_slot: Callable[[], None]) -> RequestFrame | None:
        error: ErrorFrame | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.listen)
            try:
                with self.generation, trio.fail_after(self.server.terms.request_timeout):
                    await self.run_backend()
            except BackendError as exc:
                # a prompt beyond the model's context is the client's request, not our failure (issue 13)
                too_long = isinstance(exc, ContextLengthError) and not self.completion_tokens
                code: ErrorCode = "context_length" if too_long else "backend"
                error = ErrorFrame(id=self.request_id, code=code, message=utf8_clip(str(exc), 1000))
            finally:
                if self.meter is not None:
                    with trio.CancelScope(shield=True):
                        await self.meter.finish(self.request_id, self.accept.prompt_tokens, self.completion_tokens)
            ended = time.monotonic()
            if error is None and self.protocol_error is not None:
                error = ErrorFrame(id=self.request_id, code="protocol", message=utf8_clip(self.protocol_error, 1000))
            if error is None and self.payment_error is not None:
                error = ErrorFrame(id=self.request_id, code="payment", message=utf8_clip(self.payment_error, 1000))
            stats = self.server.stats
            if error is not None:
                stats.failed += 1
                if not self.accepted.is_set():  # the backend failed before the writer sent the accept
                    await send_quietly(self.frames, self.accept)
                await send_quietly(self.frames, error)
            else:
                if self.finish_reason == "cancelled":
                    stats.cancelled += 1
                else:
                    stats.served += 1
                if not self.peer_done.is_set():
                    self.final_sent = True  # set before the write: the listener may see the next request at once
                    await send_quietly(self.frames, self._final(ended))
            release_slot()
            # After a clean final the stream stays open for the requester's next request (it pays the tail
            # first); otherwise it only waits for the tail voucher and the hang-up. Bounded either way.
            idle = _IDLE_STREAM_TIMEOUT if self.final_sent and self.finish_reason != "cancelled" else 5.0
            with trio.move_on_after(idle if self.meter is not None or self.final_sent else 1.0):
                await self.wait_peer(receipt_due=error is None and self.final_sent
                                     and self.finish_reason != "cancelled")
            nursery.cancel_scope.cancel()
        return self.next_request if error is None else None

    async def wait_peer(self, *, receipt_due: bool) -> None:
        """Wait for the hang-up or the next request, answering receipt requests (written after ``final``)."""
        while not self.peer_done.is_set():
            await self.wake.wait()
            self.wake = trio.Event()  # before looking at the state: a change after this wakes us again
            asked, self.receipt_asked = self.receipt_asked, None
            if asked is None:
                continue
            receipt = await sign_served(self.server.receipts, self.meter, self.request, self.accept,
                                        self.completion_tokens, self.output, asked) if receipt_due else None
            if receipt is None:
                self.peer_done.set()  # nothing to sign: hang up, as code without receipts would
                return
            await send_quietly(self.frames, ReceiptFrame(id=self.request_id, receipt=receipt))

    def _final(self, ended: float) -> FinalFrame:
        first = self.first_token_at
        gen_s = max(ended - (first or self.started), 1e-9)
        prompt, completion = self.accept.prompt_tokens, self.completion_tokens
        return FinalFrame(
            id=self.request_id, finish_reason=self.finish_reason, prompt_tokens=prompt,
            completion_tokens=completion, total_tokens=prompt + completion,
            ttft_ms=float(((first or ended) - self.started) * 1000),
            generation_ms=float((ended - self.started) * 1000),
            tokens_per_second=float(completion / gen_s) if completion else 0.0,
        )

    def _payment_failed(self, reason: str) -> None:
        if self.payment_error is None:
            self.payment_error = reason

    async def listen(self) -> None:
        """The requester's frames during (and after) generation: cancel, vouchers, its next request."""
        while True:
            try:
                frame = await self.frames.receive()
            except FrameError as exc:
                log.info("bad frame during generation: %s", exc)
                frame = None
            match frame:
                case None:
                    self.peer_done.set()
                    self.wake.set()
                    self.generation.cancel()
                    return
                case ReceiptRequestFrame():
                    if not self.final_sent:  # a receipt is for a finished request
                        self.protocol_error = "a receipt request arrived before this request finished"
                        self.generation.cancel()
                    self.receipt_asked = frame
                    self.wake.set()
                case CancelFrame():
                    self.generation.cancel()
                case VoucherFrame(voucher=voucher) if self.meter is not None:
                    try:
                        await self.meter.on_voucher(self.request_id, voucher)
                    except PaymentRequired as exc:  # forged, replayed or cross-channel voucher
                        self._payment_failed(str(exc))
                        self.generation.cancel()
                case RequestFrame():
                    if not self.final_sent:  # requests on one stream are sequential
                        self.protocol_error = "a new request arrived before this one finished"
                        self.generation.cancel()
                    else:
                        self.next_request = frame
                    self.peer_done.set()
                    self.wake.set()
                    return

    async def run_backend(self) -> None:
        """Feed the backend's deltas to the writer. A backend error ends the feed, lets the writer send (and
        finish) what came before it, then is raised: a writer cancelled mid-write would leave half a frame
        on the stream and the error frame would never be readable."""
        failed: BackendError | None = None
        try:
            async with trio.open_nursery() as senders, self.server.backend.generate(self.chat) as deltas:
                out_send, out_recv = trio.open_memory_channel[_Queued](_DELTA_QUEUE)
                generation_over = trio.Event()
                senders.start_soon(self.send_deltas, out_recv, generation_over)
                async with out_send:
                    try:
                        async for delta in deltas:
                            if delta.token_count and self.meter is not None:
                                try:
                                    await self.meter.before_tokens(self.request_id, delta.token_count)
                                except PaymentRequired as exc:  # the requester stopped paying
                                    self._payment_failed(str(exc))
                                    break
                            self.completion_tokens += delta.token_count
                            self.output.append(delta.text)
                            if self.first_token_at is None and delta.token_count:
                                self.first_token_at = time.monotonic()
                            last = delta.finish_reason is not None
                            if delta.text or delta.token_count or last or delta.tool_calls or delta.logprobs:
                                await out_send.send((delta.text, delta.token_count, last, delta.tool_calls,
                                                     delta.logprobs))
                            if delta.finish_reason is not None:
                                self.finish_reason = delta.finish_reason
                    except BackendError as exc:
                        failed = exc
                    finally:
                        generation_over.set()  # the writer stops lingering
        except BaseExceptionGroup as group:  # e.g. a BackendError from the backend's start, wrapped
            raise sole_exception(group) from None
        if failed is not None:
            raise failed

    async def send_deltas(self, queue: trio.MemoryReceiveChannel[_Queued],
                          generation_over: trio.Event) -> None:
        """Write the accept, then the queued deltas, coalescing whatever piled up while the previous write
        was in flight.

        An idle stream sends each token as soon as it exists; a busy one sends several per frame, so the
        per-frame cost (encryption, muxing, syscalls: ~0.3 ms in py-libp2p) stops capping tokens per second.
        With other streams in flight the writer also lingers a little after each frame (2 ms per other
        stream, at most 50 ms) so that paced tokens share frames too; the first token never waits, and the
        last one (the delta that finishes generation) is sent at once. The queue is bounded: a slow reader
        slows the generator.
        """
        stats = self.server.stats
        last_sent: float | None = None
        async with queue:
            try:
                await self.frames.send(self.accept)
            except Exception:  # the requester is gone: stop generating
                self.generation.cancel()
                return
            self.accepted.set()
            async for text, tokens, last, calls, logprobs in queue:
                linger = min(_MAX_LINGER, _LINGER_PER_STREAM * (stats.in_flight - 1))
                if not last and last_sent is not None and linger > 0:
                    # One timer per frame, not per token; the last token cuts the wait short.
                    with trio.move_on_at(last_sent + linger):
                        await generation_over.wait()
                parts = [text]
                tool_calls, token_logprobs = list(calls), list(logprobs)
                size = len(text) + extras_bytes(calls, logprobs)
                # Coalesce up to a byte budget (tool-call and logprobs extras make deltas big).
                while not last and size < COALESCE_BYTES:
                    try:
                        more_text, more_tokens, last, calls, logprobs = queue.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    parts.append(more_text)
                    tokens += more_tokens
                    tool_calls += calls
                    token_logprobs += logprobs
                    size += len(more_text) + extras_bytes(calls, logprobs)
                text = "".join(parts)
                if not text and not tokens and not tool_calls:
                    continue  # a bare finish marker with nothing queued before it
                try:
                    for frame in delta_frames(self.request_id, text, tokens, tool_calls, token_logprobs):
                        await self.frames.send(frame)
                except Exception:  # the requester is gone: stop generating
                    self.generation.cancel()
                    return
                last_sent = trio.current_time()

