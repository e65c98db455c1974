"""One accepted request on the worker's end of the inference stream (a private part of ``server``).

:class:`_Generation`'s fields are the state its tasks share (the listener for cancel/voucher frames, the
backend's run, the delta writer); it was cut out of ``server.py`` to keep that module readable in one sitting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from cocoon_node.inference.backend import BackendError, ContextLengthError
from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.extras import COALESCE_BYTES, TokenLogprob, ToolCallDelta, delta_frames, extras_bytes
from cocoon_node.inference.port import (
    InferenceFrame,
    PaymentRequired,
    send_quietly,
    sole_exception,
)
from cocoon_node.inference.receipting import sign_served
from cocoon_node.wire import FrameError, FrameStream, utf8_clip
from cocoon_node.wire.messages.inference import (
    AcceptFrame,
    CancelFrame,
    ErrorCode,
    ErrorFrame,
    FinalFrame,
    FinishReason,
    ReceiptFrame,
    ReceiptRequestFrame,
    RequestFrame,
    VoucherFrame,
)

if TYPE_CHECKING:
    from cocoon_node.inference.server import InferenceServer

log = logging.getLogger("cocoon_node.inference.server")

_DELTA_QUEUE = 64  # deltas a worker may have generated but not yet written
_LINGER_PER_STREAM = 0.002  # seconds a delta writer waits after a frame, per other stream in flight
_MAX_LINGER = 0.05
IDLE_STREAM_TIMEOUT = 30.0  # how long a worker waits for a request on a new or finished stream

Frames = FrameStream[InferenceFrame]
# A generated delta waiting for the writer: text, tokens, is it the last, tool-call pieces, logprobs.
_Queued = tuple[str, int, bool, tuple[ToolCallDelta, ...], tuple[TokenLogprob, ...]]


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
            idle = IDLE_STREAM_TIMEOUT if self.final_sent and self.finish_reason != "cancelled" else 5.0
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

