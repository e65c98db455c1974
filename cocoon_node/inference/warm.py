"""Warm inference streams: a few negotiated, idle streams kept open to the workers a requester uses.

Why: opening a libp2p stream costs a multistream-select negotiation that py-libp2p runs in Python on both
ends; on loopback it was ~5 ms of the ~12 ms a request spent in the mesh before its first token. A worker
holds no slot for a stream until a request frame arrives on it (it only waits, and hangs up after 30 s of
silence), so a requester can open the next streams ahead of time; and a stream whose request finished
cleanly comes back here (:meth:`give_back`) for the next one, so a busy requester opens almost none. Spares
are kept only for workers used recently, at most as many as were recently in flight there, and each is
dropped well before the worker's idle timeout. No prompt byte is written to a spare before a request takes
it, and a spare is opened through the same attested opener as any other stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from cocoon_node.mesh import Announcement

log = logging.getLogger(__name__)

StreamOpener = Callable[[Announcement], Awaitable[Any]]


@dataclass
class _Spares:
    worker: Announcement
    streams: list[tuple[float, Any]] = field(default_factory=list)  # (opened at, stream), oldest first
    last_used: float = 0.0
    in_flight: int = 0
    recent_peak: int = 1
    failures: int = 0
    retry_at: float = 0.0


class WarmStreams:
    """Hands out pre-opened streams to workers; :meth:`run` keeps the spares topped up and fresh."""

    def __init__(
        self,
        opener: StreamOpener,
        *,
        max_spares: int = 32,
        max_idle: float = 15.0,
        keep_warm_for: float = 60.0,
        open_timeout: float = 5.0,
    ) -> None:
        self._opener = opener
        self.max_spares = max_spares
        self.max_idle = max_idle  # must stay below the worker's first-frame timeout (30 s)
        self.keep_warm_for = keep_warm_for
        self._open_timeout = open_timeout
        self._workers: dict[bytes, _Spares] = {}
        self._wake = trio.Event()
        self.hits = 0
        self.misses = 0
        self.dead = 0  # spares found closed by the worker when a request took them
        self.reused = 0  # streams given back after a finished request

    def take(self, worker: Announcement) -> Any | None:
        """A fresh spare stream to ``worker`` or None; either way the worker counts as in use now."""
        spares = self._workers.get(worker.peer_id)
        if spares is None:
            spares = self._workers[worker.peer_id] = _Spares(worker)
        spares.worker = worker
        spares.last_used = time.monotonic()
        spares.in_flight += 1
        spares.recent_peak = max(spares.recent_peak, spares.in_flight)
        self._wake.set()
        now = time.monotonic()
        while spares.streams:
            opened_at, stream = spares.streams.pop()  # the newest: least likely to be near its idle timeout
            if now - opened_at < self.max_idle:
                self.hits += 1
                return stream
            self._discard(stream)
        self.misses += 1
        return None

    def give_back(self, worker: Announcement, stream: Any) -> None:
        """A stream whose request ended cleanly; the worker now waits for the next request on it."""
        spares = self._workers.get(worker.peer_id)
        if spares is None or len(spares.streams) >= min(self.max_spares, spares.worker.max_concurrent):
            self._discard(stream)
            return
        self.reused += 1
        spares.streams.append((time.monotonic(), stream))

    def release(self, worker: Announcement) -> None:
        """The request that took a stream to ``worker`` (warm or not) has ended (after any give_back)."""
        spares = self._workers.get(worker.peer_id)
        if spares is not None and spares.in_flight > 0:
            spares.in_flight -= 1
            self._wake.set()  # a stream that did not come back is replaced now, not at the next tick

    def spare_was_dead(self, worker: Announcement) -> None:
        """A taken spare had been closed by the worker; its other spares are suspect too."""
        self.dead += 1
        spares = self._workers.get(worker.peer_id)
        if spares is not None:
            for _, stream in spares.streams:
                self._discard(stream)
            spares.streams = []

    def forget(self, peer_id: bytes) -> None:
        """Drop a worker's spares (it failed, expired or lost its attestation)."""
        spares = self._workers.pop(peer_id, None)
        if spares is not None:
            for _, stream in spares.streams:
                self._discard(stream)

    def spare_count(self, peer_id: bytes) -> int:
        spares = self._workers.get(peer_id)
        return len(spares.streams) if spares else 0

    async def run(self) -> None:
        """Top up spares after use, replace stale ones, let unused workers' spares lapse."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    with trio.move_on_after(1.0):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    await self._maintain()
            finally:
                for peer_id in list(self._workers):
                    self.forget(peer_id)

    async def _maintain(self) -> None:
        now = time.monotonic()
        for peer_id, spares in list(self._workers.items()):
            fresh = []
            for opened_at, stream in spares.streams:
                if now - opened_at < self.max_idle:
                    fresh.append((opened_at, stream))
                else:
                    self._discard(stream)
            spares.streams = fresh
            if now - spares.last_used > self.keep_warm_for:
                self.forget(peer_id)
                continue
            if spares.in_flight == 0 and now - spares.last_used > self.max_idle:
                spares.recent_peak = max(1, spares.recent_peak // 2)  # demand has eased
            target = min(self.max_spares, spares.recent_peak, spares.worker.max_concurrent)
            # Requests in flight usually give their stream back when they end: count them as spares to
            # come, or a burst would open a second set of streams that the first set then displaces.
            missing = target - len(spares.streams) - spares.in_flight
            if missing <= 0 or now < spares.retry_at:
                continue
            async with trio.open_nursery() as openers:
                for _ in range(min(missing, target)):
                    openers.start_soon(self._open_one, spares)

    async def _open_one(self, spares: _Spares) -> None:
        try:
            with trio.fail_after(self._open_timeout):
                stream = await self._opener(spares.worker)
        except Exception as exc:  # the worker is unreachable: back off; requests open their own streams
            spares.failures += 1
            spares.retry_at = time.monotonic() + min(30.0, 2.0 ** spares.failures)
            log.debug("could not warm a stream to %s: %s", spares.worker.peer, exc)
            return
        spares.failures = 0
        if self._workers.get(spares.worker.peer_id) is spares:
            spares.streams.append((time.monotonic(), stream))
        else:
            self._discard(stream)

    def _discard(self, stream: Any) -> None:
        nursery = getattr(self, "_nursery", None)
        if nursery is not None:
            nursery.start_soon(_close_quietly, stream)


async def _close_quietly(stream: Any) -> None:
    with trio.move_on_after(2):
        try:
            await stream.close()
        except Exception:
            pass
