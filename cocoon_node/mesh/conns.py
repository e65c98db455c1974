"""Small helpers about py-libp2p connections that the NAT-traversal modules share.

Addresses are compared without their ``/p2p`` part; a connection is relayed when its transport addresses run
through ``/p2p-circuit``; and py-libp2p keeps a closing connection listed (and lets it block new dials to the
peer) until its close finished, which after a cut without a FIN can take minutes.
"""

from __future__ import annotations

from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator


def addr_key(addr: multiaddr.Multiaddr | str) -> str:
    """An address without its /p2p part (what reachability is decided for)."""
    text = str(addr)
    return text.split("/p2p/", 1)[0] if "/p2p-circuit" not in text else text


def dialable_ip_port(addr: str) -> tuple[str, str] | None:
    """(ip, transport) for a direct /ip4|/ip6 + /tcp or /udp/…/quic-v1 address; None for anything else."""
    parts = addr_key(addr).strip("/").split("/")
    if len(parts) < 4 or parts[0] not in ("ip4", "ip6") or "p2p-circuit" in parts:
        return None
    if parts[2] == "tcp" and len(parts) == 4:
        return parts[1], "tcp"
    if parts[2] == "udp" and parts[4:] == ["quic-v1"]:
        return parts[1], "quic"
    return None


def is_relayed(conn: Any) -> bool:
    """True for a connection (swarm or muxed) that runs over a circuit relay."""
    for obj in (conn, getattr(conn, "muxed_conn", None)):
        get = getattr(obj, "get_transport_addresses", None)
        if get is None:
            continue
        try:
            if any("/p2p-circuit" in str(a) for a in get() or ()):
                return True
        except Exception:
            continue
    return False


def live_connections(host: IHost, peer: ID) -> list[INetConn]:
    """Connections to ``peer`` not closed yet. py-libp2p keeps a closing connection listed until its close has
    finished, which on a connection cut without a FIN can take minutes."""
    return [c for c in host.get_network().get_connections(peer) if not getattr(c, "is_closed", False)]


def forget_dead_connections(host: IHost, peer: ID) -> None:
    """Drop ``peer``'s closed-but-still-listed connections from the swarm's table (the close goes on in the
    background). While one is listed, py-libp2p's ``connect`` and ``new_stream`` take the peer for connected and
    never dial it again: a relay or worker cut off without a FIN would stay unreachable after the heal."""
    network = host.get_network()
    remove = getattr(network, "remove_conn", None)
    if remove is None:
        return
    for conn in list(network.get_connections(peer)):
        if getattr(conn, "is_closed", False):
            remove(conn)


async def open_stream_on(host: IHost, conn: INetConn, protocol: TProtocol, timeout: float) -> INetStream:
    """A stream negotiated on exactly ``conn`` (``host.new_stream`` may pick any connection to the peer)."""
    stream = await conn.new_stream()
    try:
        client = getattr(host, "multiselect_client")  # noqa: B009 - BasicHost's negotiator, not in IHost
        selected = await client.select_one_of([protocol], MultiselectCommunicator(stream), timeout)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.reset()
        raise
    stream.set_protocol(selected)
    return stream
