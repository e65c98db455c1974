"""NETSIM-ONLY link shaping; never used on a real network.

netsim wants per-link latency, jitter, loss, bandwidth and partitions between node processes on one loopback
interface. The kernel way (network namespaces, veth pairs, ``tc netem``) needs ``sch_netem``, which the CI
machines lack, so this module shapes links inside the TCP transport instead:

* :class:`ShapedTCP` is py-libp2p's TCP transport with ``dial`` overridden. Only the dialer shapes, because
  only the dialer knows who is at the other end (the dialed multiaddr carries the peer id and port); inbound
  connections are left alone, so every connection is shaped exactly once, in both directions, by its dialer.
* :class:`ShapedStream` wraps the dialed socket: writes (egress) and socket reads (ingress) go through one
  pump per direction that delivers each chunk at ``max(previous delivery, sent + len/bandwidth + latency
  +- jitter (+ RTO if lost))``, so order is kept per direction and data already in flight overlaps.
  Loss cannot drop bytes of a TCP stream: a lost chunk arrives one retransmission timeout (:data:`RTO_S`)
  late, and everything behind it waits for it (head-of-line blocking, as TCP does).
  A *blocked* link (a partition) holds data, neither delivering nor dropping it, until the link heals, like
  TCP retransmitting through an outage; a dial over a blocked link waits (like unanswered SYNs) until the
  caller's dial timeout. Each direction buffers at most :data:`BUFFER_BYTES` (a socket buffer); past that,
  writers wait and the socket is not read (backpressure).
* :class:`LinkTable` is the link description: a JSON file netsim rewrites atomically (temp file +
  ``os.replace``) and every node re-reads when it changes, so partitions, heals and link changes apply to
  connections that are already open.

Link table format (version 1)::

    {"version": 1, "seed": 3,
     "default": {"latency_ms": 20, "jitter_ms": 5, "loss": 0.01, "bandwidth_bytes_s": 0, "blocked": false},
     "nodes": {"worker1": {"peer_id": "12D3Koo...", "ports": [40123]}, ...},
     "rules": [{"a": ["worker1"], "b": ["requester1"], "latency_ms": 80},
               {"a": ["worker4"], "b": ["worker1", "requester1"], "blocked": true}]}

The link between two named nodes is ``default`` overlaid, in order, with every rule whose ``a`` holds one of
them and ``b`` the other (a rule sets only the keys it names). A peer the table does not name gets
``default``. Links are symmetric. Shaping is TCP-only: QUIC connections are never shaped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import trio
from libp2p.abc import IRawConnection
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.transport.tcp.tcp import TCP
from multiaddr import Multiaddr

log = logging.getLogger(__name__)

NETSIM_ONLY = "NETSIM-ONLY link shaping; never used on a real network"
TABLE_VERSION = 1
RTO_S = 0.2                     # extra delay of a "lost" chunk: Linux's minimum TCP retransmission timeout
BUFFER_BYTES = 4 * 1024 * 1024  # per direction, like a loopback socket buffer
READ_CHUNK = 64 * 1024
POLL_INTERVAL_S = 0.2           # how often a node checks whether the link table file changed
LINGER_S = 5.0                  # after close(), queued data gets this long to drain before the socket closes


class LinkTableError(ValueError):
    """The link table is unreadable or malformed."""


@dataclass(frozen=True)
class LinkParams:
    """One link's behaviour, the same in both directions."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0               # probability that a chunk needs a retransmission (+RTO_S)
    bandwidth_bytes_s: float = 0.0  # 0: unlimited
    blocked: bool = False           # partitioned: nothing crosses until it is unblocked

    def overlaid(self, overrides: dict[str, Any], where: str) -> LinkParams:
        """These params with ``overrides`` applied; unknown keys or bad values raise :class:`LinkTableError`."""
        known = {f.name for f in fields(LinkParams)}
        unknown = set(overrides) - known
        if unknown:
            raise LinkTableError(f"{where}: unknown link keys {sorted(unknown)}")
        values: dict[str, Any] = {}
        for key, value in overrides.items():
            if key == "blocked":
                if not isinstance(value, bool):
                    raise LinkTableError(f"{where}: blocked must be true or false")
                values[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise LinkTableError(f"{where}: {key} must be a non-negative number (got {value!r})")
            if key == "loss" and value >= 1:
                raise LinkTableError(f"{where}: loss must be below 1 (got {value!r})")
            values[key] = float(value)
        return replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Rule:
    a: frozenset[str]
    b: frozenset[str]
    overrides: dict[str, Any]

    def matches(self, x: str, y: str) -> bool:
        return (x in self.a and y in self.b) or (x in self.b and y in self.a)


class LinkTable:
    """The current link description; :meth:`replace` swaps it and wakes everyone waiting for a change."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.seed: int | None = None
        self._default = LinkParams()
        self._by_peer: dict[str, str] = {}
        self._by_port: dict[int, str] = {}
        self._rules: list[_Rule] = []
        self._cache: dict[tuple[str, str], LinkParams] = {}
        self._changed = trio.Event()
        self.generation = 0
        if data is not None:
            self.replace(data)

    @classmethod
    def from_file(cls, path: Path) -> LinkTable:
        return cls(read_table_file(path))

    def replace(self, data: dict[str, Any]) -> None:
        """Validate ``data`` completely, then switch to it (a bad table leaves the old one in force)."""
        if not isinstance(data, dict):
            raise LinkTableError("link table: expected a JSON object")
        unknown = set(data) - {"version", "seed", "default", "nodes", "rules", "note"}
        if unknown:
            raise LinkTableError(f"link table: unknown keys {sorted(unknown)}")
        if data.get("version", TABLE_VERSION) != TABLE_VERSION:
            raise LinkTableError(f"link table: version {data.get('version')!r}, this node reads {TABLE_VERSION}")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise LinkTableError("link table: seed must be an integer")
        default = LinkParams().overlaid(_table(data.get("default", {}), "default"), "default")
        by_peer: dict[str, str] = {}
        by_port: dict[int, str] = {}
        for name, node in _table(data.get("nodes", {}), "nodes").items():
            node = _table(node, f"nodes.{name}")
            if set(node) - {"peer_id", "ports"}:
                raise LinkTableError(f"nodes.{name}: unknown keys {sorted(set(node) - {'peer_id', 'ports'})}")
            if "peer_id" in node:
                if not isinstance(node["peer_id"], str):
                    raise LinkTableError(f"nodes.{name}.peer_id: expected a string")
                by_peer[node["peer_id"]] = name
            for port in node.get("ports", []):
                if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                    raise LinkTableError(f"nodes.{name}.ports: {port!r} is not a TCP port")
                by_port[port] = name
        rules = []
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise LinkTableError("rules: expected a list")
        for i, rule in enumerate(raw_rules):
            rule = dict(_table(rule, f"rules[{i}]"))
            sides = []
            for side in ("a", "b"):
                names = rule.pop(side, None)
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise LinkTableError(f"rules[{i}].{side}: expected a list of node names")
                sides.append(frozenset(names))
            rule.pop("why", None)  # free text for people reading the file
            LinkParams().overlaid(rule, f"rules[{i}]")  # validate now, not on first use
            rules.append(_Rule(sides[0], sides[1], rule))
        self.seed, self._default, self._by_peer, self._by_port, self._rules = seed, default, by_peer, by_port, rules
        self._cache = {}
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def name_of(self, *, peer_id: str | None = None, port: int | None = None) -> str | None:
        """The node's name: by peer id if the table knows it, else by listen port."""
        if peer_id is not None and peer_id in self._by_peer:
            return self._by_peer[peer_id]
        if port is not None:
            return self._by_port.get(port)
        return None

    def link(self, x: str | None, y: str | None) -> LinkParams:
        """Parameters of the link between nodes ``x`` and ``y`` (``default`` when either is unknown)."""
        if x is None or y is None:
            return self._default
        key = (x, y) if x <= y else (y, x)
        params = self._cache.get(key)
        if params is None:
            params = self._default
            for rule in self._rules:
                if rule.matches(x, y):
                    params = params.overlaid(rule.overrides, "rule")
            self._cache[key] = params
        return params


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LinkTableError(f"{where}: expected a JSON object")
    return value


def read_table_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LinkTableError(f"link table {path}: {exc}") from None
    return _table(data, f"link table {path}")


def write_table_file(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename), so a node never reads half a table."""
    LinkTable(data)  # refuse to write what the nodes would refuse to read
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"note": NETSIM_ONLY, **data}, indent=1))
    os.replace(tmp, path)


async def watch_table_file(table: LinkTable, path: Path, interval: float = POLL_INTERVAL_S) -> None:
    """Reload ``table`` from ``path`` whenever the file is replaced or rewritten; keep the old one if bad."""

    def signature() -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    seen: tuple[int, int, int] | None = None  # read once at start: it may have changed since the table was loaded
    while True:
        await trio.sleep(interval)
        now = signature()
        if now == seen or now is None:
            continue
        seen = now
        try:
            table.replace(read_table_file(path))
        except LinkTableError as exc:
            log.error("%s: keeping the previous link table: %s", NETSIM_ONLY, exc)


class LinkView:
    """One connection's link, looked up afresh on every use so table changes apply to open connections."""

    def __init__(self, table: LinkTable, local: str | None, remote: str | None) -> None:
        self.table, self.local, self.remote = table, local, remote

    def params(self) -> LinkParams:
        return self.table.link(self.local, self.remote)

    async def wait_open(self) -> bool:
        """Return once the link is not blocked; True if it had to wait (a partition was in force)."""
        waited = False
        while self.params().blocked:
            waited = True
            await self.table.wait_changed()
        return waited


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


def remote_of(maddr: Multiaddr) -> tuple[str | None, int | None]:
    """The peer id (if the multiaddr carries one) and TCP port a dial goes to."""
    peer_id = port = None
    try:
        peer_id = maddr.value_for_protocol("p2p")
    except Exception:
        peer_id = None
    try:
        value = maddr.value_for_protocol("tcp")
        port = int(value) if value is not None else None
    except Exception:
        port = None
    return (str(peer_id) if peer_id else None), port


class ShapedTCP(TCP):
    """NETSIM-ONLY: py-libp2p's TCP transport, with every dialed connection shaped by the link table.

    Use :meth:`running` around the host: it owns the nursery the connections' pumps and the table watcher
    run in, and tears them down when it exits.
    """

    def __init__(self, table_path: Path, local_peer_id: str, *, poll_interval: float = POLL_INTERVAL_S) -> None:
        super().__init__()
        self.table_path = table_path
        self.table = LinkTable.from_file(table_path)
        self.local_peer_id = local_peer_id
        self._poll_interval = poll_interval
        self._nursery: trio.Nursery | None = None
        self._dials = 0
        log.warning("%s: shaping dialed TCP connections per %s", NETSIM_ONLY, table_path)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ShapedTCP]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(watch_table_file, self.table, self.table_path, self._poll_interval)
            try:
                yield self
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    def link_to(self, maddr: Multiaddr) -> LinkView:
        peer_id, port = remote_of(maddr)
        return _ResolvingLinkView(self.table, self.local_peer_id, peer_id, port)

    async def dial(self, maddr: Multiaddr) -> IRawConnection:
        link = self._before_dial(maddr)
        await link.wait_open()  # a partition answers no SYN; the caller's dial timeout ends the wait
        return await self._shape(await super().dial(maddr), link)

    async def dial_with_source(self, maddr: Multiaddr, source: tuple[str, int]) -> IRawConnection:
        link = self._before_dial(maddr)
        await link.wait_open()
        return await self._shape(await super().dial_with_source(maddr, source), link)

    def _before_dial(self, maddr: Multiaddr) -> LinkView:
        if self._nursery is None:
            raise RuntimeError("ShapedTCP.running() must be entered before dialling")
        return self.link_to(maddr)

    async def _shape(self, raw: IRawConnection, link: LinkView) -> IRawConnection:
        if self._nursery is None or not isinstance(raw, RawConnection):
            return raw
        self._dials += 1
        seed = self.table.seed
        rng = random.Random(f"{seed}:{self.local_peer_id}:{self._dials}") if seed is not None else random.Random()
        shaped = ShapedStream(raw.stream, link, rng=rng)
        raw.stream = shaped
        self._nursery.start_soon(shaped.run)
        # The TCP handshake costs one round trip before the dialer may send.
        await trio.sleep(2 * link.params().latency_ms / 1000)
        return raw


class _ResolvingLinkView(LinkView):
    """A link whose ends are named lazily: the table may learn a node's peer id after the dial."""

    def __init__(self, table: LinkTable, local_peer_id: str, remote_peer_id: str | None,
                 remote_port: int | None) -> None:
        super().__init__(table, None, None)
        self._ids = (local_peer_id, remote_peer_id, remote_port)
        self._generation = -1

    def params(self) -> LinkParams:
        if self._generation != self.table.generation:
            local_peer_id, remote_peer_id, remote_port = self._ids
            self.local = self.table.name_of(peer_id=local_peer_id)
            self.remote = self.table.name_of(peer_id=remote_peer_id, port=remote_port)
            self._generation = self.table.generation
        return self.table.link(self.local, self.remote)
