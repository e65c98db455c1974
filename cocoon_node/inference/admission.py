"""The requester's admission queue: a burst waits for a free slot instead of failing at once (issue 13).

A request that finds no eligible worker with a free slot waits here, in a bounded queue that is FIFO per
client and round-robin between clients, so one client's burst cannot starve another. It is dispatched the
moment a slot frees: the requester calls :meth:`AdmissionQueue.notify` when one of its own requests leaves a
worker and when a worker's announcement arrives (new worker, load change); nothing polls. A full queue or a
wait longer than ``max_wait`` is :class:`QueueRejected` (429 with ``Retry-After``); a client that goes away
while queued (its task cancelled) leaves the queue at once.

Slots are counted from the requester's own in-flight counts (exact), not from announced load (a heartbeat
behind): a worker kept full by another requester answers "overloaded" and the request tries the next one;
when every one it tried was full, it comes back here (the requester counts no free slot on those workers
until they announce again) for what is left of its longest wait.
A request granted a slot holds a reservation until its first attempt is in flight, so two waiters are never
woken for the same slot.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from cocoon_node.inference.unservable import NoWorkerAvailable

DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_WAIT = 120.0  # as long as requester.request_timeout: a CPU model serves a burst slowly
_RECENT_WAITS = 256  # waits kept for the percentiles in the status


class QueueRejected(NoWorkerAvailable):
    """The queue is full (``queue_full``) or the wait ran out (``queue_timeout``): 429 with ``Retry-After``."""

    def __init__(self, message: str, *, code: str, retry_after: int) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


def client_key(raw: str) -> str:
    """A short, stable digest of what identifies a client (API key, ``user``, address): the queue and the
    status never hold a key itself."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(eq=False)
class _Waiter:
    client: str
    model: str
    free: Callable[[], int]  # free slots on the workers this request may use, by the requester's counts
    enqueued: float
    granted: trio.Event = field(default_factory=trio.Event)


class Ticket:
    """An admitted request. :meth:`settle` once its first attempt counts as in flight: the reservation it
    held until then is released (the requester's own in-flight count now holds the slot)."""

    def __init__(self, queue: AdmissionQueue, model: str, waited: float) -> None:
        self._queue = queue
        self.model = model
        self.waited = waited
        self._reserved = True

    def settle(self) -> None:
        if self._reserved:
            self._reserved = False
            self._queue._unreserve(self.model)

    def _drop(self) -> None:
        """Leaving without an attempt in flight: give the reserved slot to the next waiter."""
        if self._reserved:
            self._reserved = False
            self._queue._unreserve(self.model)
            self._queue.notify()


class AdmissionQueue:
    """Bounded, fair waiting room in front of the requester's worker selection."""

    def __init__(self, *, max_queue: int = DEFAULT_MAX_QUEUE, max_wait: float = DEFAULT_MAX_WAIT) -> None:
        self.max_queue = max_queue
        self.max_wait = max_wait
        self._queues: dict[str, deque[_Waiter]] = {}  # client -> its waiters, oldest first
        self._turn: deque[str] = deque()  # clients with waiters, in round-robin order
        self._reserved: dict[str, int] = {}  # model -> granted requests not yet in flight
        self._active = 0  # admitted requests not yet finished
        self._hold = 0.0  # smoothed seconds an admitted request holds its slot (for Retry-After)
        self._recent: deque[float] = deque(maxlen=_RECENT_WAITS)
        self.admitted = 0
        self.queued_total = 0  # admitted after waiting
        self.rejected_full = 0
        self.expired = 0
        self.left = 0  # clients gone while queued
        self.max_waited = 0.0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @asynccontextmanager
    async def admit(self, client: str, model: str, free: Callable[[], int],
                    max_wait: float | None = None) -> AsyncIterator[Ticket]:
        """Wait for a slot (or none, when one is free and nobody waits ahead); raises :class:`QueueRejected`.
        ``max_wait``: what is left of a request's longest wait when it comes back to the queue."""
        wait = self.max_wait if max_wait is None else max(0.0, min(self.max_wait, max_wait))
        now = trio.current_time()
        waiter = _Waiter(client, model, free, now)
        self._enqueue(waiter)
        self.notify()
        queued = not waiter.granted.is_set()
        if queued:
            if len(self) > self.max_queue:
                self._remove(waiter)
                self.rejected_full += 1
                raise QueueRejected(f"the requester's queue is full ({self.max_queue} waiting); retry later",
                                    code="queue_full", retry_after=self.retry_after())
            try:
                with trio.move_on_after(wait):
                    await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():  # granted as the cancel came: hand the slot on
                    self._unreserve(model)
                    self.notify()
                else:
                    self._remove(waiter)
                    self.left += 1  # cancelled while queued: the client went away
                raise
            if not waiter.granted.is_set():
                self._remove(waiter)
            if not waiter.granted.is_set():
                self.expired += 1
                raise QueueRejected(f"no worker slot freed within {self.max_wait:g} s; retry later",
                                    code="queue_timeout", retry_after=self.retry_after())
        waited = trio.current_time() - now
        ticket = Ticket(self, model, waited)
        self._record_admission(waited, queued=queued)
        self._active += 1
        started = trio.current_time()
        try:
            yield ticket
        finally:
            self._active -= 1
            held = trio.current_time() - started
            self._hold = held if self._hold == 0 else self._hold + 0.2 * (held - self._hold)
            ticket._drop()

    def notify(self) -> None:
        """A slot may have freed (a request left a worker, an announcement arrived): grant what fits, one
        waiter per client in turn."""
        granted = True
        while granted and self._turn:
            granted = False
            for client in list(self._turn):
                queue = self._queues[client]
                waiter = next((w for w in queue if w.free() - self._reserved.get(w.model, 0) > 0), None)
                if waiter is None:
                    continue
                queue.remove(waiter)
                self._reserved[waiter.model] = self._reserved.get(waiter.model, 0) + 1
                waiter.granted.set()
                self._turn.remove(client)
                if queue:
                    self._turn.append(client)  # this client's next waiter comes after every other client's
                else:
                    del self._queues[client]
                granted = True
                break

    def retry_after(self) -> int:
        """Whole seconds until a slot is likely free for one more request: the queue ahead times the smoothed
        hold of a slot, spread over the requests in service (at least 1, at most the longest wait)."""
        ahead = len(self) + 1
        estimate = self._hold * ahead / max(self._active, 1) if self._hold else 1.0
        return int(min(max(math.ceil(estimate), 1), max(math.ceil(self.max_wait), 1)))

    def stats(self) -> dict[str, object]:
        """For ``cocoon-node status`` and ``/metrics``: queue length, bounds, outcomes and wait times (ms)."""
        now = trio.current_time() if self._queues else 0.0
        waits = sorted(self._recent)

        def pct(p: float) -> float | None:
            return round(waits[min(int(p * len(waits)), len(waits) - 1)] * 1000, 1) if waits else None

        oldest = max((now - q[0].enqueued for q in self._queues.values() if q), default=0.0)
        return {
            "queued": len(self), "clients_waiting": len(self._queues), "max_queue": self.max_queue,
            "max_wait_s": self.max_wait, "in_service": self._active, "admitted": self.admitted,
            "admitted_after_wait": self.queued_total, "rejected_full": self.rejected_full,
            "expired": self.expired, "left": self.left, "oldest_wait_ms": round(oldest * 1000, 1),
            "wait_ms": {"p50": pct(0.5), "p95": pct(0.95), "max": round(self.max_waited * 1000, 1)},
        }

    def _record_admission(self, waited: float, *, queued: bool) -> None:
        self.admitted += 1
        if queued:
            self.queued_total += 1
        self._recent.append(waited)
        self.max_waited = max(self.max_waited, waited)

    def _enqueue(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.client)
        if queue is None:
            queue = self._queues[waiter.client] = deque()
            self._turn.append(waiter.client)
        queue.append(waiter)

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.client)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._queues[waiter.client]
            self._turn.remove(waiter.client)

    def _unreserve(self, model: str) -> None:
        left = self._reserved.get(model, 0) - 1
        if left > 0:
            self._reserved[model] = left
        else:
            self._reserved.pop(model, None)
