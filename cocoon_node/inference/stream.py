"""The direct inference stream ``/cocoon/inference/1.0.0``: worker handler and requester client.

Requests in sequence on one stream. The worker reads a request, validates it like the OpenAI API would,
answers accept or reject, then streams deltas while a second task listens for ``cancel`` and ``voucher``
frames; a cancel frame or the stream closing cancels generation, which the backend honours within one token
step. After a clean ``final`` the worker (which says ``keep_open`` in its accept) waits for the requester's
next request on the same stream, so a busy requester does not pay for a new stream per request.
Both sides bound every wait. Payments plug in through :class:`WorkerMeter` / :class:`RequesterMeter`, so
this module carries frames and never decides what a token costs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from cocoon_node.inference.audit import Overcount, TokenAudit
from cocoon_node.inference.backend import Backend, BackendError
from cocoon_node.inference.chat import ChatRequest, RequestValidationError
from cocoon_node.inference.tokencount import TokenCounter
from cocoon_node.wire import FrameError, FrameStream, load_protocol

log = logging.getLogger(__name__)

_PROTO = load_protocol("inference")
PROTOCOL_ID: str = _PROTO.meta["id"]
MAX_FRAME: int = int(_PROTO.meta["max_frame_bytes"])
WIRE = "inference"
_DELTA_QUEUE = 64  # deltas a worker may have generated but not yet written
_LINGER_PER_STREAM = 0.002  # seconds a delta writer waits after a frame, per other stream in flight
_MAX_LINGER = 0.05
_IDLE_STREAM_TIMEOUT = 30.0  # how long a worker waits for a request on a new or finished stream


# ----- worker side ---------------------------------------------------------------------------------------


class WorkerMeter(Protocol):
    """Payment accounting for one request on the worker (see cocoon_node.payments)."""

    credit_window: int

    async def admit(self, request_id: str, payment: dict[str, Any] | None, prompt_tokens: int,
                    payer_key: bytes | None = None) -> None:
        """Raise PaymentRequired when the request cannot be served on credit (``payer_key``: the stream's
        authenticated remote key, which must own the channel)."""

    async def before_tokens(self, request_id: str, completion_tokens: int) -> None:
        """Wait until ``completion_tokens`` more tokens are within the credit window."""

    async def on_voucher(self, request_id: str, voucher: bytes) -> None: ...

    async def finish(self, request_id: str, prompt_tokens: int, completion_tokens: int) -> None: ...


class PaymentRequired(Exception):
    """The worker will not serve without a payment channel or a fresh voucher."""


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
    ) -> None:
        self.backend = backend
        self.terms = terms
        self.meter = meter
        self.stats = WorkerStats()
        self._on_load_change = on_load_change
        # What prompts reached this worker; tests assert on it (attestation policy must keep it empty).
        self.request_log = request_log if request_log is not None else []

    @property
    def load(self) -> int:
        return self.stats.in_flight

    async def handle(self, raw_stream: Any) -> None:
        """libp2p stream handler."""
        frames = FrameStream(raw_stream, WIRE, max_frame=MAX_FRAME)
        try:
            await self._serve(frames, _remote_key(raw_stream))
        except FrameError as exc:
            log.info("closing inference stream after a malformed frame: %s", exc)
            await _send_quietly(
                frames, {"t": "error", "id": "", "code": "protocol", "message": str(exc)[:1000]}
            )
        except trio.TooSlowError:
            await _send_quietly(
                frames, {"t": "error", "id": "", "code": "timeout", "message": "request timed out"}
            )
        except Exception as exc:  # one bad stream must never take the worker down
            log.warning("inference stream failed: %r", exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await raw_stream.close()
                except Exception:
                    pass

    async def _serve(self, frames: FrameStream, remote_key: bytes | None = None) -> None:
        """Serve requests one after another until the requester closes the stream or leaves it idle."""
        with trio.fail_after(_IDLE_STREAM_TIMEOUT):
            frame = await frames.receive()
        while frame is not None:
            if frame["t"] != "request":
                raise FrameError(f"expected a request frame, got {frame['t']!r}")
            frame = await self._serve_request(frames, frame, remote_key)

    async def _serve_request(
        self, frames: FrameStream, first: dict[str, Any], remote_key: bytes | None
    ) -> dict[str, Any] | None:
        """One request; returns the next request frame when the requester sent one on this stream."""
        request_id = first["id"]

        async def reject(code: str, message: str, field: str | None = None) -> None:
            """A rejected request ends the stream (the requester tries elsewhere or gives up)."""
            self.stats.rejected += 1
            frame: dict[str, Any] = {"t": "reject", "id": request_id, "code": code, "message": message[:1000]}
            if field is not None:
                frame["field"] = field[:128]
            await frames.send(frame)

        try:
            chat = ChatRequest.from_wire(first["chat"], max_tokens_limit=self.terms.max_tokens_cap)
        except RequestValidationError as exc:
            await reject("invalid_request", exc.message, exc.field)
            return None
        if chat.model != self.terms.model:
            await reject("model_mismatch", f"this worker serves {self.terms.model!r}", "model")
            return None
        if (
            first["price_prompt"] < self.terms.price_prompt
            or first["price_completion"] < self.terms.price_completion
        ):
            await reject("price_mismatch", "offered prices are below the announced prices")
            return None
        if self.stats.in_flight >= self.terms.max_concurrent:
            await reject("overloaded", f"all {self.terms.max_concurrent} slots are busy")
            return None
        prompt_tokens = self.backend.count_tokens(chat)
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
                try:
                    await self.meter.admit(request_id, first.get("payment"), prompt_tokens, remote_key)
                except PaymentRequired as exc:
                    await reject("payment_required", str(exc))
                    return None
            self.request_log.append(chat)
            accept = {
                "t": "accept",
                "id": request_id,
                "prompt_tokens": prompt_tokens,
                "credit_window": self.meter.credit_window if self.meter else 0,
                "keep_open": True,
            }
            return await self._generate(frames, accept, chat, release_slot)
        finally:
            release_slot()

    async def _generate(
        self, frames: FrameStream, accept: dict[str, Any], chat: ChatRequest, release_slot: Callable[[], None],
    ) -> dict[str, Any] | None:
        """Accept and stream one completion while a listener handles cancel and voucher frames; returns the
        requester's next request on this stream, if it sent one.

        The backend starts before the accept frame is written (the writer task sends it ahead of the first
        delta), so writing it overlaps the model's time to first token instead of adding to it.

        The listener runs until the requester closes the stream or sends its next request, also after
        ``final``, so the voucher that pays the tail still arrives; it is never cancelled mid-read (that
        could lose buffered bytes) unless the stream is about to be closed. The slot is released once
        generation is over: waiting for the tail voucher costs the backend nothing, and a requester starting
        its next request at once would otherwise find every slot "busy".
        """
        request_id: str = accept["id"]
        prompt_tokens: int = accept["prompt_tokens"]
        accepted = trio.Event()
        started = time.monotonic()
        first_token_at: float | None = None
        completion_tokens = 0
        finish_reason = "cancelled"
        peer_done = trio.Event()  # the requester closed the stream or sent its next request
        final_sent = False
        next_request: list[dict[str, Any]] = []
        payment_error: list[str] = []
        protocol_error: list[str] = []
        generation = trio.CancelScope()

        async def listen() -> None:
            while True:
                try:
                    frame = await frames.receive()
                except FrameError as exc:
                    log.info("bad frame during generation: %s", exc)
                    frame = None
                if frame is None:
                    peer_done.set()
                    generation.cancel()
                    return
                if frame["t"] == "cancel":
                    generation.cancel()
                elif frame["t"] == "voucher" and self.meter is not None:
                    try:
                        await self.meter.on_voucher(request_id, frame["voucher"])
                    except PaymentRequired as exc:  # forged, replayed or cross-channel voucher
                        payment_error.append(str(exc))
                        generation.cancel()
                elif frame["t"] == "request":
                    if not final_sent:  # requests on one stream are sequential
                        protocol_error.append("a new request arrived before this one finished")
                        generation.cancel()
                        peer_done.set()
                        return
                    next_request.append(frame)
                    peer_done.set()
                    return

        async def run_backend() -> None:
            """Feed the backend's deltas to the writer. A backend error ends the feed, lets the writer send
            (and finish) what came before it, then is raised: a writer cancelled mid-write would leave half a
            frame on the stream and the error frame would never be readable."""
            nonlocal completion_tokens, first_token_at, finish_reason
            failed: list[BackendError] = []
            try:
                async with trio.open_nursery() as senders, self.backend.generate(chat) as deltas:
                    out_send, out_recv = trio.open_memory_channel[tuple[str, int, bool]](_DELTA_QUEUE)
                    generation_over = trio.Event()
                    senders.start_soon(self._send_deltas, frames, accept, accepted, out_recv, generation,
                                       generation_over)
                    async with out_send:
                        try:
                            async for delta in deltas:
                                if delta.token_count and self.meter is not None:
                                    try:
                                        await self.meter.before_tokens(request_id, delta.token_count)
                                    except PaymentRequired as exc:  # the requester stopped paying
                                        payment_error.append(str(exc))
                                        break
                                completion_tokens += delta.token_count
                                if first_token_at is None and delta.token_count:
                                    first_token_at = time.monotonic()
                                last = delta.finish_reason is not None
                                if delta.text or delta.token_count or last:
                                    await out_send.send((delta.text, delta.token_count, last))
                                if delta.finish_reason is not None:
                                    finish_reason = delta.finish_reason
                        except BackendError as exc:
                            failed.append(exc)
                        finally:
                            generation_over.set()  # the writer stops lingering
            except BaseExceptionGroup as group:  # e.g. a BackendError from the backend's start, wrapped
                raise sole_exception(group) from None
            if failed:
                raise failed[0]

        error: dict[str, Any] | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            try:
                with generation, trio.fail_after(self.terms.request_timeout):
                    await run_backend()
            except BackendError as exc:  # ContextLengthError included
                error = {"t": "error", "id": request_id, "code": "backend", "message": str(exc)[:1000]}
            finally:
                if self.meter is not None:
                    with trio.CancelScope(shield=True):
                        await self.meter.finish(request_id, prompt_tokens, completion_tokens)
            ended = time.monotonic()
            if error is None and protocol_error:
                error = {"t": "error", "id": request_id, "code": "protocol", "message": protocol_error[0]}
            if error is None and payment_error:
                error = {"t": "error", "id": request_id, "code": "payment", "message": payment_error[0][:1000]}
            if error is not None:
                self.stats.failed += 1
                if not accepted.is_set():  # the backend failed before the writer sent the accept
                    await _send_quietly(frames, accept)
                await _send_quietly(frames, error)
            else:
                if finish_reason == "cancelled":
                    self.stats.cancelled += 1
                else:
                    self.stats.served += 1
                if not peer_done.is_set():
                    ttft = ((first_token_at or ended) - started) * 1000
                    gen_s = max(ended - (first_token_at or started), 1e-9)
                    final_sent = True  # set before the write: the listener may see the next request at once
                    await _send_quietly(frames, {
                        "t": "final", "id": request_id, "finish_reason": finish_reason,
                        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens, "ttft_ms": float(ttft),
                        "generation_ms": float((ended - started) * 1000),
                        "tokens_per_second": float(completion_tokens / gen_s) if completion_tokens else 0.0,
                    })
            release_slot()
            # After a clean final the stream stays open for the requester's next request (it pays the tail
            # first); otherwise it only waits for the tail voucher and the hang-up. Bounded either way.
            idle = _IDLE_STREAM_TIMEOUT if final_sent and finish_reason != "cancelled" else 5.0
            with trio.move_on_after(idle if self.meter is not None or final_sent else 1.0):
                await peer_done.wait()
            nursery.cancel_scope.cancel()
        return next_request[0] if next_request and error is None else None

    async def _send_deltas(self, frames: FrameStream, accept: dict[str, Any], accepted: trio.Event,
                           queue: trio.MemoryReceiveChannel[tuple[str, int, bool]],
                           generation: trio.CancelScope, generation_over: trio.Event) -> None:
        """Write the accept, then the queued deltas, coalescing whatever piled up while the previous write
        was in flight.

        An idle stream sends each token as soon as it exists; a busy one sends several per frame, so the
        per-frame cost (encryption, muxing, syscalls: ~0.3 ms in py-libp2p) stops capping tokens per second.
        With other streams in flight the writer also lingers a little after each frame (2 ms per other
        stream, at most 50 ms) so that paced tokens share frames too; the first token never waits, and the
        last one (the delta that finishes generation) is sent at once. The queue is bounded: a slow reader
        slows the generator.
        """
        request_id = accept["id"]
        last_sent: float | None = None
        async with queue:
            try:
                await frames.send(accept)
            except Exception:  # the requester is gone: stop generating
                generation.cancel()
                return
            accepted.set()
            async for text, tokens, last in queue:
                linger = min(_MAX_LINGER, _LINGER_PER_STREAM * (self.stats.in_flight - 1))
                if not last and last_sent is not None and linger > 0:
                    # One timer per frame, not per token; the last token cuts the wait short.
                    with trio.move_on_at(last_sent + linger):
                        await generation_over.wait()
                parts = [text]
                while not last:
                    try:
                        more_text, more_tokens, last = queue.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    parts.append(more_text)
                    tokens += more_tokens
                text = "".join(parts)
                if not text and not tokens:
                    continue  # a bare finish marker with nothing queued before it
                try:
                    await frames.send({"t": "delta", "id": request_id, "text": text, "tokens": tokens})
                except Exception:  # the requester is gone: stop generating
                    generation.cancel()
                    return
                last_sent = trio.current_time()

    def _load_changed(self) -> None:
        if self._on_load_change is not None:
            self._on_load_change(self.stats.in_flight)


def sole_exception(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside nested single-member groups (a nursery wrapped the caller's own error),
    else the group itself."""
    leaves: list[BaseException] = [group]
    while len(leaves) == 1 and isinstance(leaves[0], BaseExceptionGroup):
        leaves = list(leaves[0].exceptions)
    return leaves[0] if len(leaves) == 1 else group


def _remote_key(stream: Any) -> bytes | None:
    """The raw public key of the peer at the other end of a libp2p stream (authenticated by Noise/TLS)."""
    try:
        key = stream.muxed_conn.peer_id.extract_public_key()
    except AttributeError:
        return None  # not a libp2p stream (tests with in-memory streams)
    return key.to_bytes() if key is not None else None


async def _send_quietly(frames: FrameStream, frame: dict[str, Any]) -> None:
    with trio.move_on_after(2):
        try:
            await frames.send(frame)
        except Exception:
            pass


# ----- requester side -------------------------------------------------------------------------------------


class WorkerFailure(Exception):
    """The worker failed the request. ``before_first_token`` tells whether a retry elsewhere is safe."""

    def __init__(
        self, message: str, *, before_first_token: bool, code: str = "worker_error", field: str | None = None
    ) -> None:
        super().__init__(message)
        self.before_first_token = before_first_token
        self.code = code
        self.field = field


class MeterError(Exception):
    """The requester's own meter could not pay (its voucher store failed): the call ends, the worker is not
    blamed (WorkerFailure code ``local_payment``)."""


class RequesterMeter(Protocol):
    """Payment side of one request on the requester (see cocoon_node.payments)."""

    #: The worker's tokenizer when we hold it: the stream then counts claimed tokens itself (inference.audit).
    token_counter: TokenCounter | None

    def payment_ref(self) -> dict[str, Any] | None: ...

    def respect_credit_window(self, window: int) -> None:
        """The worker's credit window (from its accept): pay often enough that it never stalls."""

    async def on_accept(self, prompt_tokens: int) -> bytes | None:
        """Voucher covering the prompt, if any."""

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        """Voucher covering tokens received so far, when one is due."""

    async def on_final(self, completion_tokens: int) -> bytes | None:
        """Voucher paying whatever is still unpaid once the worker sent its final frame."""


@dataclass(frozen=True)
class Delta:
    text: str
    tokens: int


@dataclass(frozen=True)
class Final:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tokens_per_second: float
    worker_ttft_ms: float


class InferenceCall:
    """One open request: iterate for :class:`Delta` items, then read :attr:`final`."""

    def __init__(
        self,
        frames: FrameStream,
        request_id: str,
        prompt_tokens: int,
        started: float,
        meter: RequesterMeter | None,
        first_token_timeout: float,
        token_timeout: float,
        audit: TokenAudit,
    ) -> None:
        self._frames = frames
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
        self._tokens_counted = trio.Event()
        self._pay_lock = trio.Lock()  # one meter call (sign, store, send) at a time, in order

    @property
    def paying(self) -> bool:
        """A voucher is being signed, stored or written right now."""
        return self._pay_lock.locked()

    async def _send_voucher(self, voucher: bytes | None) -> None:
        if voucher is not None:
            try:
                await self._frames.send({"t": "voucher", "id": self.request_id, "voucher": voucher})
            except FrameError:
                raise
            except Exception as exc:  # the stream died under us: the worker, or a relay between us, went away
                raise WorkerFailure(f"voucher could not be sent: {exc}", code="worker_gone",
                                    before_first_token=self._first_token_at is None) from None

    async def pay(self) -> None:
        """Pay as tokens arrive, off the token path: the prompt at once, then whatever is due each time the
        reader has counted more tokens.

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

    async def deltas(self) -> AsyncIterator[Delta]:
        while True:
            timeout = self._first_token_timeout if self._first_token_at is None else self._token_timeout
            try:
                with trio.fail_after(timeout):
                    frame = await self._frames.receive()
            except trio.TooSlowError:
                raise WorkerFailure(
                    "worker stopped sending tokens",
                    code="timeout",
                    before_first_token=self._first_token_at is None,
                ) from None
            except FrameError as exc:
                raise WorkerFailure(
                    f"worker sent a bad frame: {exc}",
                    code="protocol",
                    before_first_token=self._first_token_at is None,
                ) from None
            if frame is None:
                raise WorkerFailure(
                    "worker closed the stream before finishing",
                    code="worker_gone",
                    before_first_token=self._first_token_at is None,
                )
            kind = frame["t"]
            if kind == "delta":
                fresh = self._first_token_at is None  # nothing reached the client yet
                if fresh:
                    self._first_token_at = time.monotonic()
                try:
                    self.completion_tokens = self._audit.add_delta(frame["text"], frame["tokens"])
                except Overcount as exc:  # charge what we can account for, then drop the worker
                    self.completion_tokens = self._audit.completion_tokens
                    self._tokens_counted.set()
                    raise WorkerFailure(str(exc), code="overcount", before_first_token=fresh) from None
                if frame["tokens"]:
                    self._tokens_counted.set()  # the pay task charges them (see pay)
                yield Delta(frame["text"], frame["tokens"])
            elif kind == "usage":
                continue
            elif kind == "final":
                if frame["completion_tokens"] != self.completion_tokens:  # claiming more is an over-count: dropped
                    raise WorkerFailure(
                        f"worker claims {frame['completion_tokens']} completion tokens but streamed "
                        f"{self.completion_tokens}",
                        code="overcount" if frame["completion_tokens"] > self.completion_tokens else "protocol",
                        before_first_token=False,
                    )
                if frame["prompt_tokens"] != self.prompt_tokens:
                    raise WorkerFailure(f"worker's final claims {frame['prompt_tokens']} prompt tokens, its accept "
                                        f"{self.prompt_tokens}", before_first_token=False,
                                        code="overcount" if frame["prompt_tokens"] > self.prompt_tokens else "protocol")
                if self._meter is not None:
                    await self._settle(final=True)
                end = time.monotonic()
                first = self._first_token_at or end
                self.final = Final(
                    frame["finish_reason"],
                    frame["prompt_tokens"],
                    frame["completion_tokens"],
                    (first - self._started) * 1000,
                    self.completion_tokens / max(end - first, 1e-9) if self.completion_tokens else 0.0,
                    frame["ttft_ms"],
                )
                return
            elif kind == "error":
                raise WorkerFailure(
                    f"worker error ({frame['code']}): {frame['message']}",
                    code=frame["code"],
                    before_first_token=self._first_token_at is None,
                )
            else:
                raise WorkerFailure(
                    f"unexpected {kind!r} frame",
                    code="protocol",
                    before_first_token=self._first_token_at is None,
                )

    async def cancel(self) -> None:
        if self._meter is not None:
            with trio.move_on_after(2):
                try:
                    await self._settle(final=True)  # tokens already handed on are owed, cancelled or not
                except Exception as exc:
                    log.info("could not charge the tokens of a cancelled request: %r", exc)
        await _send_quietly(self._frames, {"t": "cancel", "id": self.request_id})


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
) -> AsyncIterator[InferenceCall]:
    """Send one request on an open stream and yield the call once the worker accepted it.

    The stream is closed afterwards, unless the call ended cleanly (``final`` read, tail paid, nothing
    unread, no voucher being written) on a worker that keeps streams open: then ``on_reusable`` gets it
    for the next request to that worker.
    """
    frames = FrameStream(stream, WIRE, max_frame=MAX_FRAME)
    reusable = False
    request_id = uuid.uuid4().hex
    started = time.monotonic()
    request: dict[str, Any] = {
        "t": "request",
        "v": 1,
        "id": request_id,
        "chat": chat.to_wire(),
        "price_prompt": price_prompt,
        "price_completion": price_completion,
    }
    payment = meter.payment_ref() if meter is not None else None
    if payment is not None:
        request["payment"] = payment
    try:
        try:
            await frames.send(request)
        except FrameError:
            raise
        except Exception as exc:  # reset or closed by the worker before it read anything
            raise WorkerFailure(
                f"worker closed the stream: {exc}", code="worker_gone", before_first_token=True
            ) from None
        try:
            with trio.fail_after(accept_timeout):
                answer = await frames.receive()
        except trio.TooSlowError:
            raise WorkerFailure(
                "worker did not answer the request", code="timeout", before_first_token=True
            ) from None
        except FrameError as exc:
            raise WorkerFailure(
                f"worker sent a bad frame: {exc}", code="protocol", before_first_token=True
            ) from None
        if answer is None:
            raise WorkerFailure("worker closed the stream", code="worker_gone", before_first_token=True)
        if answer["t"] == "reject":
            raise WorkerFailure(
                answer["message"], code=answer["code"], field=answer.get("field"), before_first_token=True
            )
        if answer["t"] != "accept":
            raise WorkerFailure(
                f"expected accept, got {answer['t']!r}", code="protocol", before_first_token=True
            )
        audit = TokenAudit(chat, meter.token_counter if meter is not None else None)
        try:
            prompt_tokens = audit.check_prompt(answer["prompt_tokens"])
        except Overcount as exc:  # nothing is signed for this request: the worker is dropped
            raise WorkerFailure(str(exc), code="overcount", before_first_token=True) from None
        if meter is not None and answer["credit_window"] > 0:
            meter.respect_credit_window(answer["credit_window"])
        call = InferenceCall(
            frames, request_id, prompt_tokens, started, meter, first_token_timeout, token_timeout, audit
        )
        try:
            async with trio.open_nursery() as nursery:
                if meter is not None:
                    # Vouchers are signed and stored (fsync) while tokens keep flowing, not before reading
                    # them; the prompt's goes first, so a worker whose credit window is smaller than the
                    # prompt still gets it before it must produce a token.
                    nursery.start_soon(call.pay)
                else:
                    call.prompt_paid.set()
                try:
                    yield call
                finally:
                    if call.final is None:
                        with trio.CancelScope(shield=True):
                            await call.cancel()
                    else:
                        # No checkpoint between this check and the cancel: the pay task is parked (waiting
                        # for tokens or the lock), never inside a write, so the stream stays frame-aligned.
                        reusable = (on_reusable is not None and answer.get("keep_open", False)
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
