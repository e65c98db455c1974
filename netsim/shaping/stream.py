"""NETSIM-ONLY shaped byte streams: one TCP connection's two directions, delayed, throttled and held.

:class:`ShapedStream` wraps a dialed socket: writes (egress) and socket reads (ingress) go through one pump
per direction that delivers each chunk at ``max(previous delivery, sent + len/bandwidth + latency +- jitter
(+ RTO if lost))``, so order is kept per direction and data already in flight overlaps. Loss cannot drop
bytes of a TCP stream: a lost chunk arrives one retransmission timeout (:data:`RTO_S`) late, and everything
behind it waits for it (head-of-line blocking, as TCP does). A *blocked* link (a partition) holds data,
neither delivering nor dropping it, until the link heals, like TCP retransmitting through an outage. Each
direction buffers at most :data:`BUFFER_BYTES` (a socket buffer); past that, writers wait and the socket is
not read (backpressure).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from libp2p.io.abc import ReadWriteCloser

from netsim.shaping.table import NETSIM_ONLY, LinkParams, LinkView

log = logging.getLogger(__name__)

RTO_S = 0.2                     # extra delay of a "lost" chunk: Linux's minimum TCP retransmission timeout
BUFFER_BYTES = 4 * 1024 * 1024  # per direction, like a loopback socket buffer
READ_CHUNK = 64 * 1024
LINGER_S = 5.0                  # after close(), queued data gets this long to drain before the socket closes


@dataclass
class LinkClock:
    """Timing state of one direction of a link."""

    busy_until: float = -math.inf     # the link is still serialising earlier bytes until then
    last_delivery: float = -math.inf  # deliveries never overtake each other

    def delivery_time(self, p: LinkParams, *, sent_at: float, size: int, rng: random.Random) -> float:
        """When a chunk of ``size`` bytes handed to the link at ``sent_at`` reaches the other end."""
        start = max(sent_at, self.busy_until)
        finish = start + (size / p.bandwidth_bytes_s if p.bandwidth_bytes_s > 0 else 0.0)
        self.busy_until = finish
        delay = p.latency_ms / 1000
        if p.jitter_ms > 0:
            delay = max(0.0, delay + rng.uniform(-p.jitter_ms, p.jitter_ms) / 1000)
        if p.loss > 0 and rng.random() < p.loss:
            delay += RTO_S
        at = max(self.last_delivery, finish + delay)
        self.last_delivery = at
        return at


class _ByteBudget:
    """At most ``limit`` bytes queued in one direction; a chunk larger than the limit passes alone.

    Once closed (the connection is gone) nobody waits any more.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.closed = False
        self._lot = trio.lowlevel.ParkingLot()

    async def take(self, n: int) -> None:
        while not self.closed and self.used > 0 and self.used + n > self.limit:
            await self._lot.park()
        self.used += n

    async def wait_room(self) -> None:
        while not self.closed and self.used >= self.limit:
            await self._lot.park()

    def close(self) -> None:
        self.closed = True
        self._lot.unpark_all()

    def add(self, n: int) -> None:
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        self._lot.unpark_all()


# What travels through a direction's queue: data, b"" for end of stream, or the error the socket raised.
_Item = bytes | BaseException


class ShapedStream(ReadWriteCloser):
    """A TCP stream whose two directions are delayed, throttled and held as its :class:`LinkView` says.

    Needs :meth:`run` running in a nursery (the transport's) for as long as the connection lives.
    """

    def __init__(self, inner: ReadWriteCloser, link: LinkView, *, rng: random.Random | None = None,
                 buffer_bytes: int = BUFFER_BYTES, linger: float = LINGER_S) -> None:
        self._inner = inner
        self.link = link
        self._rng = rng or random.Random()
        self._linger = linger
        self._egress_clock, self._ingress_clock = LinkClock(), LinkClock()
        self._egress_budget, self._ingress_budget = _ByteBudget(buffer_bytes), _ByteBudget(buffer_bytes)
        self._egress_send, self._egress_recv = trio.open_memory_channel[tuple[float, _Item]](math.inf)
        self._wire_send, self._wire_recv = trio.open_memory_channel[tuple[float, _Item]](math.inf)
        self._out_send, self._out_recv = trio.open_memory_channel[_Item](math.inf)
        self._write_lock, self._read_lock = trio.Lock(), trio.Lock()
        self._leftover = b""
        self._read_error: BaseException | None = None
        self._write_error: BaseException | None = None
        self._closed = False
        self._scope = trio.CancelScope()
        self.finished = trio.Event()

    # ----- the libp2p side -------------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        """Queue ``data`` for the link; waits only when the direction's buffer is full."""
        async with self._write_lock:
            if self._write_error is not None:
                raise self._write_error
            if self._closed:
                return  # like TrioTCPStream after a local close
            await self._egress_budget.take(len(data))
            if self._closed or self._write_error is not None:  # it went away while we waited for room
                self._egress_budget.give(len(data))
                if self._write_error is not None:
                    raise self._write_error
                return
            self._egress_send.send_nowait((trio.current_time(), bytes(data)))

    async def read(self, n: int | None = None) -> bytes:
        async with self._read_lock:
            if n == 0:
                return b""
            if not self._leftover:
                if self._read_error is not None:
                    raise self._read_error
                try:
                    item = await self._out_recv.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return b""
                if isinstance(item, BaseException):
                    self._read_error = item
                    raise item
                self._leftover = item
            size = len(self._leftover) if n is None else min(n, len(self._leftover))
            out, self._leftover = self._leftover[:size], self._leftover[size:]
            self._ingress_budget.give(size)
            return out

    async def close(self) -> None:
        """Stop accepting writes; queued data drains in the background for at most the linger time."""
        if not self._closed:
            self._closed = True
            self._egress_send.close()
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + self._linger)
        await trio.lowlevel.checkpoint()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._inner.get_remote_address()

    # ----- the pumps -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Move bytes between the socket and the caller until closed, broken or cancelled."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_socket)
                    nursery.start_soon(self._pump, self._wire_recv, self._ingress_clock, self._deliver_in)
                    await self._pump(self._egress_recv, self._egress_clock, self._deliver_out)
                    nursery.cancel_scope.cancel()  # closed locally and drained: the connection is over
        except Exception as exc:  # one broken connection must never take the node (the transport nursery) down
            log.warning("%s: shaped connection failed: %r", NETSIM_ONLY, exc)
        finally:
            self._out_send.close()
            self._closed = True
            self._egress_budget.close()
            self._ingress_budget.close()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(_Closable(self._inner))
            self.finished.set()

    async def _read_socket(self) -> None:
        with self._wire_send:
            while True:
                await self._ingress_budget.wait_room()
                try:
                    data = await self._inner.read(READ_CHUNK)
                except Exception as exc:
                    self._wire_send.send_nowait((trio.current_time(), exc))
                    return
                self._ingress_budget.add(len(data))
                self._wire_send.send_nowait((trio.current_time(), data))
                if not data:
                    return

    async def _pump(self, source: trio.MemoryReceiveChannel[tuple[float, _Item]], clock: LinkClock,
                    deliver: Callable[[_Item], Awaitable[None]]) -> None:
        async for sent_at, item in source:
            size = len(item) if isinstance(item, bytes) else 0
            if await self.link.wait_open():  # partitioned when it was due to leave: it leaves after the heal
                sent_at = max(sent_at, trio.current_time())
            at = clock.delivery_time(self.link.params(), sent_at=sent_at, size=size, rng=self._rng)
            await trio.sleep_until(at)
            if await self.link.wait_open():  # the partition began while it was on the wire: sent again
                clock.last_delivery = trio.current_time() + self.link.params().latency_ms / 1000
                await trio.sleep_until(clock.last_delivery)
            await deliver(item)

    async def _deliver_out(self, item: _Item) -> None:
        assert isinstance(item, bytes)
        try:
            if self._write_error is None:
                await self._inner.write(item)
        except Exception as exc:  # the next write() reports it; what is queued is dropped
            self._write_error = exc
        finally:
            self._egress_budget.give(len(item))

    async def _deliver_in(self, item: _Item) -> None:
        if isinstance(item, bytes) and not item:
            self._out_send.close()  # end of stream, delivered in order after the data before it
            return
        try:
            self._out_send.send_nowait(item)
        except trio.ClosedResourceError:  # the stream already ended: nobody will read this
            if isinstance(item, bytes):
                self._ingress_budget.give(len(item))
        await trio.lowlevel.checkpoint()


class _Closable(trio.abc.AsyncResource):
    """Adapts a libp2p ``close()`` to trio's ``aclose()`` for :func:`trio.aclose_forcefully`."""

    def __init__(self, inner: ReadWriteCloser) -> None:
        self._inner = inner

    async def aclose(self) -> None:
        try:
            await self._inner.close()
        except Exception as exc:  # already broken: nothing left to close
            log.debug("closing a shaped connection: %s", exc)

