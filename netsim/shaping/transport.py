"""NETSIM-ONLY shaped TCP transport, injected into the mesh through ``MeshSettings.transport_factory``.

:class:`ShapedTCP` is py-libp2p's TCP transport with ``dial`` overridden. Only the dialer shapes, because only
the dialer knows who is at the other end (the dialed multiaddr carries the peer id and port); inbound
connections are left alone, so every connection is shaped exactly once, in both directions, by its dialer. A
dial over a blocked link waits (like unanswered SYNs) until the caller's dial timeout. Shaping is TCP-only:
QUIC connections are never shaped (and the mesh refuses an injected transport next to a QUIC listen address).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import trio
from libp2p.abc import IRawConnection, ITransport
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.transport.tcp.tcp import TCP
from multiaddr import Multiaddr

from cocoon_node.mesh import TransportFactory
from netsim.shaping.stream import ShapedStream
from netsim.shaping.table import NETSIM_ONLY, POLL_INTERVAL_S, LinkParams, LinkTable, LinkView, watch_table_file

log = logging.getLogger(__name__)


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


def shaped_transport_factory(table_path: Path, *, poll_interval: float = POLL_INTERVAL_S) -> TransportFactory:
    """A ``MeshSettings.transport_factory`` giving each node a :class:`ShapedTCP` that reads ``table_path``."""

    def factory(local_peer_id: ID) -> tuple[ITransport, AbstractAsyncContextManager[object]]:
        shaped = ShapedTCP(table_path, local_peer_id.to_base58(), poll_interval=poll_interval)
        return shaped, shaped.running()

    return factory
