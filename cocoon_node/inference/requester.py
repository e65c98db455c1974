"""Requester side: choose a worker, keep score of how workers behave, retry before the first token.

Data flows one way: the worker table (discovery) gives candidates, the attestation gate filters them,
:class:`WorkerSelector` ranks them, and :meth:`Requester.stream` opens the attested stream and relays
metered deltas. A worker that fails before its first token is skipped for the next candidate; once tokens
have reached the client, a failure is reported rather than hidden behind a silent restart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import trio

from cocoon_node.inference.admission import AdmissionQueue, Ticket
from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.receiver import FailingReceiver, discard_stream
from cocoon_node.inference.selection import WorkerSelector
from cocoon_node.inference.stream import (
    PROTOCOL_ID,
    Delta,
    Final,
    ReportLookup,
    RequesterMeter,
    WorkerFailure,
    call_worker,
    sole_exception,
)
from cocoon_node.inference.unservable import (
    CLIENT_FAULTS,
    CapabilityUnavailable,
    ContextTooLong,
    ModelNotFound,
    NoWorkerAvailable,
    TokenCounterFor,
    context_refusal,
    lacking_capability,
    why_unusable,
)
from cocoon_node.inference.warm import WarmStreams
from cocoon_node.mesh import Announcement, stream_path

log = logging.getLogger(__name__)


class Attestor(Protocol):
    async def is_attested(self, announcement: Announcement) -> bool: ...


async def still_attested(attestor: Attestor, worker: Announcement) -> bool:
    """The gate's verdict right now: its cached answer when it has one, else a fresh check.

    Called just before the prompt is written, after the awaits that follow selection (payment channel set-up,
    opening the stream), during which a verdict can expire or the policy change.
    """
    known = getattr(attestor, "known", None)
    verdict = known(worker) if known is not None else None
    return verdict if verdict is not None else await attestor.is_attested(worker)


_PARALLEL_CHECKS = 8  # attestation checks a request may wait on at once when no verdict is known yet


StreamOpener = Callable[[Announcement], Awaitable[Any]]


@dataclass(frozen=True)
class StreamStart:
    """First event of a stream: which worker answers and how many prompt tokens it counted."""

    worker: Announcement
    prompt_tokens: int
    attempts: int
    path: str | None = None  # direct / hole-punched / relayed (cocoon_node/mesh/paths.py; issue 14)


Event = StreamStart | Delta | Final


class Requester:
    """Buys inference from the mesh for local clients (the HTTP API and ``cocoon-node chat``)."""

    def __init__(
        self,
        workers: Callable[[], Sequence[Announcement]],
        open_stream: StreamOpener,
        attestor: Attestor,
        *,
        max_price_prompt: int,
        max_price_completion: int,
        meter_factory: Callable[[Announcement], Awaitable[RequesterMeter | None]] | None = None,
        first_token_timeout: float = 60.0,
        max_attempts: int = 3,
        allow_synthetic: bool = True,
        open_timeout: float = 5.0,
        warm: WarmStreams | None = None,
        admission: AdmissionQueue | None = None,
        token_counter: TokenCounterFor | None = None,
        reports: ReportLookup | None = None,
    ) -> None:
        # The workers' attested reports, to check the receipts we ask for (issue 16); None: ask for none.
        self._reports = reports
        # A worker that cannot open a stream or accept within seconds is treated as gone (a frozen peer
        # would otherwise hold the client until the first-token timeout); the next candidate is tried.
        self._open_timeout = open_timeout
        # Pre-opened streams to recently used workers (see cocoon_node.inference.warm); None: open per request.
        self._warm = warm
        self._workers = workers
        self._open_stream = open_stream
        self._attestor = attestor
        self.max_price_prompt = max_price_prompt
        self.max_price_completion = max_price_completion
        self._meter_factory = meter_factory
        self._first_token_timeout = first_token_timeout
        self._max_attempts = max_attempts
        self._allow_synthetic = allow_synthetic
        self.selector = WorkerSelector()
        # Requests wait here for a free slot (429 when it is full or the wait runs out; issue 13).
        self.admission = admission if admission is not None else AdmissionQueue()
        # Tokenizer hash -> our exact counter, to refuse a prompt beyond a worker's announced context here.
        self._token_counter = token_counter
        # Workers that answered "overloaded" (full of other requesters' requests), by the announcement's seqno
        # then: no slot counts as free on them until they announce again (their load changed).
        self._full: dict[bytes, int] = {}
        self.completed = 0
        self.failed = 0

    async def candidates(self, model: str, needs: Mapping[str, str] | None = None) -> list[Announcement]:
        eligible = self.selector.eligible(
            self._workers(),
            model,
            self.max_price_prompt,
            self.max_price_completion,
            allow_synthetic=self._allow_synthetic,
            needs=needs,
        )
        # Workers with a fresh verdict are used without waiting; the gate's prefetcher checks the others in
        # the background. Only when no eligible worker is known good yet does the request wait, on the best
        # ranked unknowns checked side by side until one passes (one at a time, a slow DHT lookup held everything).
        known = getattr(self._attestor, "known", None)
        attested, unknown = [], []
        for w in eligible:
            verdict = known(w) if known is not None else None
            if verdict is True:
                attested.append(w)
            elif verdict is None:
                unknown.append(w)
        if not attested and unknown:
            passed: set[bytes] = set()

            async def check(w: Announcement, done: trio.CancelScope) -> None:
                if await self._attestor.is_attested(w):
                    passed.add(w.peer_id)
                    done.cancel()  # one verified worker is enough to start; the rest are checked later

            async with trio.open_nursery() as nursery:
                for w in self.selector.rank(unknown)[:_PARALLEL_CHECKS]:
                    nursery.start_soon(check, w, nursery.cancel_scope)
            attested = [w for w in unknown if w.peer_id in passed]
        return self.selector.rank(attested)

    def workers_changed(self) -> None:
        """An announcement arrived (a new worker, a load change): a queued request may fit now."""
        self.admission.notify()

    def free_slots(self, model: str, needs: Mapping[str, str] | None = None) -> int:
        """Slots our own requests leave free on the workers a request may use (attestation not refused)."""
        return sum(max(0, w.max_concurrent - self.selector.in_flight.get(w.peer_id, 0))
                   for w in self._usable(model, needs)
                   if not self._refused(w) and self._full.get(w.peer_id) != w.seqno)

    def _usable(self, model: str, needs: Mapping[str, str] | None) -> list[Announcement]:
        return self.selector.eligible(self._workers(), model, self.max_price_prompt, self.max_price_completion,
                                      allow_synthetic=self._allow_synthetic, needs=needs, with_free_slot=False)

    @asynccontextmanager
    async def stream(self, chat: ChatRequest, *, client: str = "") -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """Yield a channel of events: one :class:`StreamStart`, then deltas, then one :class:`Final`.

        Errors surface from the channel's ``receive`` as :class:`NoWorkerAvailable` or
        :class:`WorkerFailure`. The buffer is small so a slow client slows the worker (backpressure).
        Leaving the block cancels the request on the worker. ``client`` (a digest of the API key or
        address) is the admission queue's fairness key.
        """
        send, recv = trio.open_memory_channel[Event](4)
        failure: list[BaseException] = []

        async def run() -> None:
            async with send:
                try:
                    await self._run(chat, send, client)
                except (NoWorkerAvailable, WorkerFailure) as exc:
                    failure.append(exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        reader = FailingReceiver(recv, failure)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                try:
                    yield reader  # type: ignore[misc]
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nursery wraps the caller's own exception; hand back the plain one (there is only ever one).
            raise sole_exception(group) from None

    async def _run(self, chat: ChatRequest, send: trio.MemorySendChannel[Event], client: str) -> None:
        needs = chat.capabilities_used()
        if not any(w.model == chat.model for w in self._workers()):
            raise ModelNotFound(chat.model)
        if (lacking := lacking_capability(self._workers(), chat.model, needs)) is not None:
            raise CapabilityUnavailable(chat.model, *lacking)
        counts: dict[bytes, int] = {}  # prompt tokens by tokenizer, counted once per request

        def fits(w: Announcement) -> bool:  # not known to be beyond the worker's announced context
            return context_refusal([w], chat, self._token_counter, counts) is None

        if not [w for w in self._usable(chat.model, needs) if fits(w) and not self._refused(w)]:
            offered = [w for w in self._workers() if w.model == chat.model]
            if (refusal := context_refusal(offered, chat, self._token_counter, counts)) is not None:
                raise ContextTooLong(refusal)
            raise NoWorkerAvailable(self._why_unusable(chat.model))
        deadline = trio.current_time() + self.admission.max_wait
        while True:
            try:
                async with self.admission.admit(client, chat.model, partial(self.free_slots, chat.model, needs),
                                                max_wait=deadline - trio.current_time()) as ticket:
                    await self._dispatch(chat, send, needs, ticket, fits)
                return
            except WorkerFailure as exc:
                # Every worker we tried was full of other requesters' requests (our counts said a slot was
                # free): back to the queue until one announces a change, within the same longest wait.
                if exc.code != "overloaded" or not exc.before_first_token or trio.current_time() >= deadline:
                    self.failed += 1
                    raise
                log.info("every worker for %s is full of other requests; waiting in the queue again", chat.model)

    def _refused(self, w: Announcement) -> bool:
        known = getattr(self._attestor, "known", None)
        return known is not None and known(w) is False

    def _why_unusable(self, model: str) -> str:
        return why_unusable([w for w in self._workers() if w.model == model], model,
                            max_price_prompt=self.max_price_prompt, max_price_completion=self.max_price_completion,
                            allow_synthetic=self._allow_synthetic, dropped=self.selector.dropped,
                            refused=self._refused)

    async def _dispatch(self, chat: ChatRequest, send: trio.MemorySendChannel[Event], needs: Mapping[str, str],
                        ticket: Ticket, fits: Callable[[Announcement], bool]) -> None:
        tried: set[bytes] = set()
        last_error: WorkerFailure | None = None
        for attempt in range(1, self._max_attempts + 1):
            options = [w for w in await self.candidates(chat.model, needs)
                       if w.peer_id not in tried and fits(w)]
            if not options:
                break
            worker = options[0]
            tried.add(worker.peer_id)
            try:
                await self._attempt(worker, chat, send, attempt, ticket)
                self.completed += 1
                return
            except WorkerFailure as exc:
                timeout = exc.code == "timeout"
                if self._warm is not None and exc.code in ("timeout", "unreachable", "worker_gone", "attestation",
                                                           "overcount"):
                    self._warm.forget(worker.peer_id)
                if exc.code == "overloaded":
                    self._full[worker.peer_id] = worker.seqno
                if exc.code == "overcount":
                    log.warning("dropping worker %s: %s", worker.peer, exc)
                    self.selector.dropped[worker.peer_id] = str(exc)
                # not the worker's fault: the client's request, a full worker, our own gate or our own store
                if exc.code not in (*CLIENT_FAULTS, "overloaded", "attestation", "local_payment"):
                    self.selector.reputation(worker.peer_id).record_failure(timeout=timeout)
                last_error = exc
                if not exc.before_first_token or exc.code in (*CLIENT_FAULTS, "local_payment"):
                    raise  # counted as failed by _run
                log.info("worker %s failed before the first token (%s); trying another", worker.peer, exc)
        if last_error is not None:
            raise last_error
        self.failed += 1
        raise NoWorkerAvailable(self._why_unusable(chat.model))

    async def _attempt(
        self, worker: Announcement, chat: ChatRequest, send: trio.MemorySendChannel[Event], attempt: int,
        ticket: Ticket,
    ) -> None:
        peer_id = worker.peer_id
        self.selector.in_flight[peer_id] = self.selector.in_flight.get(peer_id, 0) + 1
        ticket.settle()  # our in-flight count holds the slot now, not the queue's reservation
        spare = self._warm.take(worker) if self._warm is not None else None
        try:
            try:
                meter = await self._meter_factory(worker) if self._meter_factory else None
            except Exception as exc:  # channel could not be opened or funded: try another worker
                raise WorkerFailure(f"payment setup failed: {exc}", code="payment",
                                    before_first_token=True) from None
            if spare is not None:
                try:
                    await self._call(worker, spare, chat, meter, send, attempt)
                    return
                except WorkerFailure as exc:
                    # A spare the worker hung up on (idle timeout, restart) fails before any answer; that
                    # says nothing about the worker, so try once more on a stream opened now.
                    if exc.code != "worker_gone" or not exc.before_first_token:
                        raise
                    log.debug("warm stream to %s was dead; opening a fresh one", worker.peer)
                    if self._warm is not None:
                        self._warm.spare_was_dead(worker)
            await self._call(worker, await self._open(worker), chat, meter, send, attempt)
        finally:
            self.selector.in_flight[peer_id] -= 1
            if self._warm is not None:
                self._warm.release(worker)
            self.admission.notify()  # the slot is free: the next queued request goes now

    async def _open(self, worker: Announcement) -> Any:
        try:
            with trio.fail_after(self._open_timeout):
                return await self._open_stream(worker)
        except trio.TooSlowError:
            raise WorkerFailure(
                "could not open a stream to the worker", code="timeout", before_first_token=True
            ) from None
        except WorkerFailure:
            raise
        except Exception as exc:
            raise WorkerFailure(
                f"could not reach the worker: {exc}", code="unreachable", before_first_token=True
            ) from None

    async def _call(
        self, worker: Announcement, stream: Any, chat: ChatRequest, meter: RequesterMeter | None,
        send: trio.MemorySendChannel[Event], attempt: int,
    ) -> None:
        # Nothing awaits between this check and call_worker's first write, which carries the prompt.
        if worker.model != chat.model or not await still_attested(self._attestor, worker):
            await discard_stream(stream)
            raise WorkerFailure("the worker's attestation no longer holds", code="attestation",
                                before_first_token=True)
        async with call_worker(
            stream,
            chat,
            price_prompt=worker.price_prompt,
            price_completion=worker.price_completion,
            meter=meter,
            first_token_timeout=self._first_token_timeout,
            on_reusable=partial(self._warm.give_back, worker) if self._warm is not None else None,
            receipts=(worker.peer_id, self._reports) if self._reports is not None else None,
        ) as call:
            await send.send(StreamStart(worker, call.prompt_tokens, attempt, stream_path(stream)))
            async for delta in call.deltas():
                await send.send(delta)
            assert call.final is not None
            self.selector.reputation(worker.peer_id).record_success(call.final.ttft_ms, call.final.tokens_per_second)
            await send.send(call.final)


def expected_protocol() -> str:
    return PROTOCOL_ID
