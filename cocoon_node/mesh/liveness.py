"""Delist a worker as soon as its connection closed (or a stream to it failed) and its port refuses us, not only
when its TTL runs out.

A worker killed with SIGKILL sends nothing more, so without this it stays listed until its last announcement
expires: up to ``announce_ttl`` (and a liveness beat slow enough for a large network needs a long TTL). When
a connection to a listed worker closes, we wait a moment (it may be re-dialled, or the close was a trim by
the connection manager), then try a plain TCP connect to an address it announced: a dead process's port
refuses at once and the worker is dropped from the table; anything else (accepted, slow, unreachable
through a partition) keeps it until its TTL, as before. A raw TCP connect, rather than a libp2p dial, costs
no handshake and does not fight the connection manager's trimming. Its next announcement (higher seqno)
lists it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID

from cocoon_node.mesh.workers import WorkerTable

log = logging.getLogger(__name__)


class _Disconnects(INotifee):
    """Forwards the peer of every closed connection (non-blocking: a full channel drops the event)."""

    def __init__(self, send: trio.MemorySendChannel[ID]) -> None:
        self._send = send

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        try:
            self._send.send_nowait(conn.muxed_conn.peer_id)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        await trio.lowlevel.checkpoint()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()


def tcp_target(addrs: tuple[str, ...]) -> tuple[str, int] | None:
    """Host and port of the first plain TCP address (``/ip4|ip6/H/tcp/P``), if any. A relay circuit address
    names the relay's port, not the worker's: never a target."""
    for addr in addrs:
        if "/p2p-circuit" in addr:
            continue
        try:
            parts = multiaddr.Multiaddr(addr.split("/p2p/")[0])
            host = parts.value_for_protocol("ip4") or parts.value_for_protocol("ip6")
            port = parts.value_for_protocol("tcp")
        except Exception:
            continue
        if host and port:
            return str(host), int(port)
    return None


class WorkerLiveness:
    """Watches closed connections; drops listed workers whose announced port refuses connections."""

    def __init__(self, network: INetwork, connected: Callable[[], list[ID]], table: WorkerTable, *,
                 grace: float = 0.5, probe_timeout: float = 3.0) -> None:
        self._network = network
        self._connected = connected
        self._table = table
        self.grace = grace
        self.probe_timeout = probe_timeout
        self.delisted = 0
        self.probes = 0  # TCP probes made
        self.checked = 0  # closed connections of listed workers looked at (probed, or back already)
        self._probing: set[ID] = set()
        self._send: trio.MemorySendChannel[ID] | None = None

    def suspect(self, peer: ID) -> None:
        """Probe ``peer`` as if its connection had closed (a stream to it could not be opened)."""
        if self._send is not None:
            try:
                self._send.send_nowait(peer)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def run(self) -> None:
        send, recv = trio.open_memory_channel[ID](256)
        self._send = send
        self._network.register_notifee(_Disconnects(send))
        async with trio.open_nursery() as nursery:
            async for peer in recv:
                if peer not in self._probing and self._table.get(peer.to_bytes()) is not None:
                    self._probing.add(peer)
                    nursery.start_soon(self._probe, peer)

    async def _probe(self, peer: ID) -> None:
        try:
            await trio.sleep(self.grace)
            announcement = self._table.get(peer.to_bytes())
            if announcement is None or peer in self._connected():
                return
            target = tcp_target(announcement.addrs)
            if target is None:
                return  # nothing we can probe cheaply: its TTL decides
            self.probes += 1
            with trio.move_on_after(self.probe_timeout):
                try:
                    stream = await trio.open_tcp_stream(*target)
                except OSError as exc:
                    self._table.remove(peer.to_bytes())
                    self.delisted += 1
                    log.info("worker %s delisted: connection closed and %s:%d refuses (%s)", peer, *target,
                             exc.strerror or exc)
                    return
                await stream.aclose()
        finally:
            self._probing.discard(peer)
            self.checked += 1
