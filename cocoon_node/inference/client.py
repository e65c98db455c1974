"""The requester's end of the inference stream: :func:`call_worker` sends one request, :class:`InferenceCall`
reads its deltas.

Every wait is bounded (accept, first token, each next token). The client counts what the worker claims
(:mod:`.audit`) before it pays for it, pays off the token path (:meth:`InferenceCall.pay`), and says in each
:class:`WorkerFailure` whether tokens already reached the caller, so a failure before the first token can
be retried elsewhere. A stream that ended cleanly can be handed back for the next request (``keep_open``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from cocoon_node.inference.audit import Overcount, TokenAudit
from cocoon_node.inference.chat import ChatRequest, RequestValidationError
from cocoon_node.inference.extras import TokenLogprob, ToolCallDelta, from_frame
from cocoon_node.inference.port import (
    InferenceFrame,
    MeterError,
    PaidBy,
    RequesterMeter,
    open_frames,
    send_quietly,
    sole_exception,
)
from cocoon_node.inference.receipting import ReceiptExpectation, ReceiptMismatch, ReportLookup, check_receipt
from cocoon_node.wire import FrameError, FrameStream, frame_tag
from cocoon_node.wire.messages.inference import (
    AcceptFrame,
    CancelFrame,
    DeltaFrame,
    ErrorFrame,
    FinalFrame,
    PaymentRef,
    ReceiptFrame,
    ReceiptRequestFrame,
    RejectFrame,
    RequestFrame,
    UsageFrame,
    VoucherFrame,
)
from cocoon_node.wire.typed import UINT64_MAX

log = logging.getLogger(__name__)

RECEIPT_TIMEOUT = 10.0  # how long a requester waits for the receipt it asked for after ``final``


class WorkerFailure(Exception):
    """The worker failed the request. ``before_first_token`` tells whether a retry elsewhere is safe."""

    def __init__(
        self, message: str, *, before_first_token: bool, code: str = "worker_error", field: str | None = None
    ) -> None:
        super().__init__(message)
        self.before_first_token = before_first_token
        self.code = code
        self.field = field


class RequestTooLarge(RequestValidationError):
    """The request does not fit the wire's request frame: refused (413) before anything is sent."""


def check_sendable(chat: ChatRequest) -> int:
    """The size of ``chat``'s request frame, or :class:`RequestTooLarge` when it would not fit (leaving room
    for the largest payment reference), :class:`RequestValidationError` when it cannot be encoded at all
    (a lone surrogate). The client's fault either way: no worker sees the request, none is blamed."""
    frame = RequestFrame(v=1, id="0" * 32, chat=chat.to_wire(), price_prompt=UINT64_MAX, price_completion=UINT64_MAX)
    try:
        size = len(msgspec.msgpack.encode(frame))
    except UnicodeEncodeError:
        raise RequestValidationError("messages", "contains text that is not valid Unicode (a lone surrogate?)") \
            from None
    limit = RequestFrame.MAX_BYTES - PaymentRef.MAX_BYTES
    if size > limit:
        raise RequestTooLarge("messages", f"the request encodes to {size} bytes; a request frame carries at most "
                              f"{limit} (protocols/inference.toml)")
    return size


@dataclass(frozen=True)
class Delta:
    text: str
    tokens: int
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class CheckedReceipt:
    """A worker's signed receipt that agreed with everything we saw, and the attested report it names."""

    envelope: bytes
    report: bytes


@dataclass(frozen=True)
class Final:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tokens_per_second: float
    worker_ttft_ms: float
    receipt: CheckedReceipt | None = None
    receipt_missing: str = ""  # why there is no receipt (a worker that does not issue them, ...)


class InferenceCall:
    """One open request: iterate for :class:`Delta` items, then read :attr:`final`."""

    def __init__(
        self,
        frames: FrameStream[InferenceFrame],
        request_id: str,
        prompt_tokens: int,
        started: float,
        meter: RequesterMeter | None,
        first_token_timeout: float,
        token_timeout: float,
        audit: TokenAudit,
        request: RequestFrame | None = None,
        receipts: tuple[bytes, ReportLookup] | None = None,
    ) -> None:
        self._frames = frames
        self._request = request
        self._receipts = receipts  # (the worker's peer id, its attested reports): ask for and check receipts
        self._output: list[str] = []
        self.hung_up = False  # the stream cannot carry another request (a worker without receipts closed it)
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._audit = audit
        self._started = started
        self._meter = meter
        self._first_token_timeout = first_token_timeout
        self._token_timeout = token_timeout
        self.completion_tokens = 0
        self.final: Final | None = None
        self._first_token_at: float | None = None
        self.prompt_paid = trio.Event()
        self.worker_failed = False  # the call ended in a WorkerFailure (see cancel)
        self._tokens_counted = trio.Event()
        self._pay_lock = trio.Lock()  # one meter call (sign, store, send) at a time, in order

    @property
    def paying(self) -> bool:
        """A voucher is being signed, stored or written right now."""
        return self._pay_lock.locked()

    async def _send_voucher(self, voucher: bytes | None) -> None:
        if voucher is not None:
            try:
                await self._frames.send(VoucherFrame(id=self.request_id, voucher=voucher))
            except FrameError:
                raise
            except Exception as exc:  # the stream died under us: the worker, or a relay between us, went away
                raise WorkerFailure(f"voucher could not be sent: {exc}", code="worker_gone",
                                    before_first_token=self._first_token_at is None) from None

    async def pay(self) -> None:
        """Pay as tokens arrive, off the token path: whatever is due each time the reader has counted more
        tokens (the prompt falls due with the first one).

        Signing a voucher means storing it with an fsync before it is sent; done inline, every voucher held
        the next token back, and with many streams on one channel they queued on the channel's lock. Charges
        are cumulative, so one pass covers every token counted so far; if payment lags, the worker's credit
        window, not this task, decides when generation waits.
        """
        assert self._meter is not None
        async with self._pay_lock:
            await self._send_voucher(await self._local(self._meter.on_accept(self.prompt_tokens)))
        self.prompt_paid.set()
        while True:
            await self._tokens_counted.wait()
            self._tokens_counted = trio.Event()
            async with self._pay_lock:
                await self._send_voucher(await self._local(self._meter.on_tokens(self.completion_tokens)))

    async def _local(self, pending: Awaitable[bytes | None]) -> bytes | None:
        """A meter call; our own store failing is our fault, not the worker's."""
        try:
            return await pending
        except MeterError as exc:
            raise WorkerFailure(f"requester could not pay: {exc}", code="local_payment",
                                before_first_token=self._first_token_at is None) from exc

    async def _settle(self, *, final: bool) -> None:
        """Charge every token counted (and, at the end of a completed call, pay the whole tail)."""
        assert self._meter is not None
        await self.prompt_paid.wait()
        async with self._pay_lock:
            counted = self.completion_tokens
            voucher = await self._local(self._meter.on_final(counted) if final else self._meter.on_tokens(counted))
            await self._send_voucher(voucher)

    def _failure(self, message: str, code: str) -> WorkerFailure:
        return WorkerFailure(message, code=code, before_first_token=self._first_token_at is None)

    async def deltas(self) -> AsyncIterator[Delta]:
        while True:
            timeout = self._first_token_timeout if self._first_token_at is None else self._token_timeout
            try:
                with trio.fail_after(timeout):
                    frame = await self._frames.receive()
            except trio.TooSlowError:
                raise self._failure("worker stopped sending tokens", "timeout") from None
            except FrameError as exc:
                raise self._failure(f"worker sent a bad frame: {exc}", "protocol") from None
            match frame:
                case None:
                    raise self._failure("worker closed the stream before finishing", "worker_gone")
                case DeltaFrame(text=text, tokens=tokens):
                    fresh = self._first_token_at is None  # nothing reached the client yet
                    if fresh:
                        self._first_token_at = time.monotonic()
                    calls, logprobs = from_frame(frame)
                    asked = self._audit.chat.features
                    if (calls and not asked.tools) or (logprobs and not asked.logprobs):
                        raise WorkerFailure("worker sent tool calls or logprobs the request did not ask for",
                                            code="protocol", before_first_token=fresh)
                    try:
                        self.completion_tokens = self._audit.add_delta(text, tokens, tool_calls=calls)
                    except Overcount as exc:  # charge what we can account for, then drop the worker
                        self.completion_tokens = self._audit.completion_tokens
                        self._tokens_counted.set()
                        raise WorkerFailure(str(exc), code="overcount", before_first_token=fresh) from None
                    if tokens:
                        self._tokens_counted.set()  # the pay task charges them (see pay)
                    self._output.append(text)
                    yield Delta(text, tokens, calls, logprobs)
                case UsageFrame():
                    continue
                case FinalFrame():
                    await self._finish(frame)
                    return
                case ErrorFrame(code=code, message=message):
                    raise self._failure(f"worker error ({code}): {message}", code)
                case _:
                    raise self._failure(f"unexpected {frame_tag(frame)!r} frame", "protocol")

    async def _finish(self, frame: FinalFrame) -> None:
        """Check the final frame's counts against what was streamed and accepted, pay the tail, keep the
        figures."""
        if frame.completion_tokens != self.completion_tokens:  # claiming more is an over-count: dropped
            raise WorkerFailure(
                f"worker claims {frame.completion_tokens} completion tokens but streamed {self.completion_tokens}",
                code="overcount" if frame.completion_tokens > self.completion_tokens else "protocol",
                before_first_token=False,
            )
        if frame.prompt_tokens != self.prompt_tokens:
            raise WorkerFailure(f"worker's final claims {frame.prompt_tokens} prompt tokens, its accept "
                                f"{self.prompt_tokens}", before_first_token=False,
                                code="overcount" if frame.prompt_tokens > self.prompt_tokens else "protocol")
        if self._meter is not None:
            await self._settle(final=True)
        end = time.monotonic()
        receipt, missing = await self._receipt() if self._receipts is not None else (None, "not asked for")
        first = self._first_token_at or end
        self.final = Final(
            frame.finish_reason,
            frame.prompt_tokens,
            frame.completion_tokens,
            (first - self._started) * 1000,
            self.completion_tokens / max(end - first, 1e-9) if self.completion_tokens else 0.0,
            frame.ttft_ms,
            receipt,
            missing,
        )

    async def _receipt(self) -> tuple[CheckedReceipt | None, str]:
        """Ask for the receipt with the voucher that paid the request, and check it against what we saw; a
        receipt that disagrees is the worker's fault (:class:`WorkerFailure` ``bad_receipt``). A worker that
        does not issue receipts (it closes the stream, or says nothing) leaves the response receipt-less."""
        assert self._receipts is not None and self._request is not None
        worker, reports = self._receipts
        paid_by = getattr(self._meter, "paid_by", None)
        paid: PaidBy | None = paid_by() if paid_by is not None else None
        expected = ReceiptExpectation.of(self._request, "".join(self._output), self.prompt_tokens,
                                         self.completion_tokens, (paid.seqno, paid.cumulative) if paid else (0, 0))
        try:
            await self._frames.send(ReceiptRequestFrame(id=self.request_id, voucher=paid.voucher if paid else b""))
            with trio.fail_after(RECEIPT_TIMEOUT):
                frame = await self._frames.receive()
        except Exception as exc:  # a worker gone after its final: the answer stands, without a receipt
            frame, why = None, f"no receipt: {exc!r}"
        else:
            why = "the worker issues no receipts (it closed the stream)"
        if not isinstance(frame, ReceiptFrame) or frame.id != self.request_id:
            self.hung_up = True
            if frame is not None:
                why = f"the worker answered the receipt request with {frame_tag(frame)!r}"
            log.info("request %s: receipt-less: %s", self.request_id, why)
            return None, why
        try:
            _, report = await check_receipt(frame.receipt, expected, worker, reports)
        except ReceiptMismatch as exc:
            log.warning("request %s: the worker's receipt disagrees with what we saw: %s (field %s: ours %r, "
                        "theirs %r)", self.request_id, exc, exc.field, exc.ours, exc.theirs)
            raise WorkerFailure(str(exc), code="bad_receipt", before_first_token=False) from None
        return CheckedReceipt(frame.receipt, report), ""

    async def cancel(self) -> None:
        # A worker that failed before we counted a token of its answer is paid nothing, not even the prompt
        # (payments.payer charges it with the first token); one our client walked away from is owed it.
        if self._meter is not None and not (self.worker_failed and self.completion_tokens == 0):
            with trio.move_on_after(2):
                try:
                    await self._settle(final=True)  # tokens already handed on are owed, cancelled or not
                except Exception as exc:
                    log.info("could not charge the tokens of a cancelled request: %r", exc)
        await send_quietly(self._frames, CancelFrame(id=self.request_id))


async def _accepted(frames: FrameStream[InferenceFrame], request: RequestFrame, accept_timeout: float) -> AcceptFrame:
    """Send the request and read the worker's answer: its accept, or a :class:`WorkerFailure` (all of them
    before the first token, so the requester may try another worker)."""
    try:
        await frames.send(request)
    except (FrameError, UnicodeError) as exc:  # we could not encode it: the request's fault, not the worker's
        raise WorkerFailure(f"request cannot be sent: {exc}", code="invalid_request",
                            before_first_token=True) from None
    except Exception as exc:  # reset or closed by the worker before it read anything
        raise WorkerFailure(f"worker closed the stream: {exc}", code="worker_gone", before_first_token=True) from None
    try:
        with trio.fail_after(accept_timeout):
            answer = await frames.receive()
    except trio.TooSlowError:
        raise WorkerFailure("worker did not answer the request", code="timeout", before_first_token=True) from None
    except FrameError as exc:
        raise WorkerFailure(f"worker sent a bad frame: {exc}", code="protocol", before_first_token=True) from None
    match answer:
        case AcceptFrame():
            return answer
        case None:
            raise WorkerFailure("worker closed the stream", code="worker_gone", before_first_token=True)
        case RejectFrame(code=code, message=message, field=field):
            raise WorkerFailure(message, code=code, field=field or None, before_first_token=True)
        case _:
            raise WorkerFailure(f"expected accept, got {frame_tag(answer)!r}", code="protocol",
                                before_first_token=True)


@asynccontextmanager
async def call_worker(
    stream: Any,
    chat: ChatRequest,
    *,
    price_prompt: int,
    price_completion: int,
    meter: RequesterMeter | None = None,
    accept_timeout: float = 10.0,
    first_token_timeout: float = 60.0,
    token_timeout: float = 30.0,
    on_reusable: Callable[[Any], None] | None = None,
    receipts: tuple[bytes, ReportLookup] | None = None,
) -> AsyncIterator[InferenceCall]:
    """Send one request on an open stream and yield the call once the worker accepted it.

    The stream is closed afterwards, unless the call ended cleanly (``final`` read, tail paid, nothing
    unread, no voucher being written) on a worker that keeps streams open: then ``on_reusable`` gets it
    for the next request to that worker. ``receipts`` (the worker's peer id and a lookup of its attested
    reports): ask for a receipt after ``final`` and check it (:meth:`InferenceCall._receipt`).
    """
    frames = open_frames(stream)
    reusable = False
    request_id = uuid.uuid4().hex
    started = time.monotonic()
    payment = meter.payment_ref() if meter is not None else None
    request = RequestFrame(v=1, id=request_id, chat=chat.to_wire(), price_prompt=price_prompt,
                           price_completion=price_completion,
                           payment=payment if payment is not None else msgspec.UNSET)
    try:
        answer = await _accepted(frames, request, accept_timeout)
        audit = TokenAudit(chat, meter.token_counter if meter is not None else None)
        try:
            prompt_tokens = audit.check_prompt(answer.prompt_tokens)
        except Overcount as exc:  # nothing is signed for this request: the worker is dropped
            raise WorkerFailure(str(exc), code="overcount", before_first_token=True) from None
        if meter is not None and answer.credit_window > 0:
            meter.respect_credit_window(answer.credit_window)
        call = InferenceCall(
            frames, request_id, prompt_tokens, started, meter, first_token_timeout, token_timeout, audit,
            request, receipts,
        )
        try:
            async with trio.open_nursery() as nursery:
                if meter is not None:
                    # Vouchers are signed and stored (fsync) while tokens keep flowing, not before reading
                    # them; the prompt is paid with the first token (payments.payer).
                    nursery.start_soon(call.pay)
                else:
                    call.prompt_paid.set()
                try:
                    yield call
                except WorkerFailure:
                    call.worker_failed = True
                    raise
                finally:
                    if call.final is None:
                        with trio.CancelScope(shield=True):
                            await call.cancel()
                    else:
                        # No checkpoint between this check and the cancel: the pay task is parked (waiting
                        # for tokens or the lock), never inside a write, so the stream stays frame-aligned.
                        reusable = (on_reusable is not None and answer.keep_open and not call.hung_up
                                    and not call.paying and frames.buffered == 0)
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None
    finally:
        if reusable:
            assert on_reusable is not None
            on_reusable(stream)
        else:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass
