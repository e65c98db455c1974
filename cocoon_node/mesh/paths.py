"""How we reach a peer: dial its direct addresses first, else through a relay; and say which path a stream took.

py-libp2p's swarm never dials ``/p2p-circuit`` addresses (it has no relay transport wired in), so
:meth:`PathDialer.connect` does: direct addresses first (a bounded try), then each circuit address in turn.
Every path ends in the same Noise handshake against the peer id we asked for, so a wrong relay, a wrong
address or a forged announcement can only fail the dial, never reach someone else.

A stream's path is the path of its connection: ``relayed`` (over a circuit), ``hole-punched`` (a direct
connection that DCUtR opened while the peer was reachable only through a relay, see ``holepunch.py``), or
``direct`` (any other direct connection, whoever dialled it).
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from cocoon_node.mesh.conns import forget_dead_connections, is_relayed, live_connections
from cocoon_node.mesh.relay_client import dial_circuit

log = logging.getLogger(__name__)

DIRECT, HOLE_PUNCHED, RELAYED = "direct", "hole-punched", "relayed"
_PUNCHED: weakref.WeakSet[Any] = weakref.WeakSet()   # muxed connections opened by a hole punch


def mark_hole_punched(muxed_conn: Any) -> None:
    _PUNCHED.add(muxed_conn)


def connection_path(conn: Any) -> str:
    """The path of a swarm or muxed connection."""
    if is_relayed(conn):
        return RELAYED
    muxed = getattr(conn, "muxed_conn", conn)
    return HOLE_PUNCHED if muxed in _PUNCHED else DIRECT


def stream_path(stream: Any) -> str | None:
    """The path a libp2p stream runs over (None for anything that is not one, e.g. a test double)."""
    muxed = getattr(stream, "muxed_conn", None)
    return None if muxed is None else connection_path(muxed)


def peer_path(host: IHost, peer: ID) -> str | None:
    """The path new streams to ``peer`` take now (py-libp2p prefers direct connections), None if unconnected."""
    conns = live_connections(host, peer)
    if not conns:
        return None
    paths = {connection_path(c) for c in conns}
    if paths == {RELAYED}:
        return RELAYED
    return HOLE_PUNCHED if HOLE_PUNCHED in paths else DIRECT


class PathDialer:
    """Connects to a peer from its announced addresses: direct first, then through relays."""

    def __init__(self, host: IHost, *, direct_timeout: float = 5.0, relay_timeout: float = 10.0) -> None:
        self.host = host
        self.direct_timeout = direct_timeout
        self.relay_timeout = relay_timeout
        self.dials: Counter[str] = Counter()

    async def connect(self, peer: ID, addrs: Sequence[str]) -> None:
        if live_connections(self.host, peer):
            return
        forget_dead_connections(self.host, peer)
        direct = [a for a in addrs if "/p2p-circuit" not in a]
        circuits = [a for a in addrs if "/p2p-circuit" in a]
        errors: list[str] = []
        if direct:
            try:
                with trio.fail_after(self.direct_timeout):
                    await self.host.connect(PeerInfo(peer, [multiaddr.Multiaddr(a) for a in direct]))
                self.dials[DIRECT] += 1
                return
            except Exception as exc:
                errors.append(f"direct: {exc}")
        for addr in circuits:
            try:
                await dial_circuit(self.host, addr, timeout=self.relay_timeout)
                self.dials[RELAYED] += 1
                return
            except Exception as exc:
                errors.append(f"{addr.partition('/p2p-circuit')[0]}: {exc}")
        self.dials["failed"] += 1
        raise ConnectionError(f"could not reach {peer}: " + ("; ".join(errors) or "no usable address"))
