"""Keeping a node joined: the bootstrap dials, re-dials whenever it is alone, and routing-table refreshes right
after start, only while it is sparsely connected."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

log = logging.getLogger(__name__)

START_REFRESHES = (0.5, 2.0, 8.0, 30.0, 120.0)  # seconds between the start-up refreshes


async def refresh_while_sparse(dht: KadDHT, host: IHost, target_peers: int, skipped: Callable[[], None]) -> None:
    """Refresh the routing table a few times right after start, so the peerstore fills with candidates
    that py-libp2p's auto-connector dials (keeping us between the connection watermarks); after that,
    KadDHT's own 10-minute refresh takes over. Each refresh is a network-wide lookup, so refreshing often
    forever would be most of an idle node's CPU (measured with py-spy).

    A refresh is skipped while we already hold ``target_peers`` connections: it would only dial more
    peers (one FIND_NODE walk per routing-table bucket, each dialling whoever it finds), and at 50 nodes
    in one process those start-up refreshes and their Noise handshakes kept the core saturated for
    minutes, which is what DHT lookups queued behind (bench/RESULTS.md, mesh). KadDHT's own refresh at
    start still fills the routing table."""
    for delay in START_REFRESHES:
        await trio.sleep(delay + random.random() * 0.5)
        if len(host.get_connected_peers()) >= target_peers:
            skipped()
            continue
        # py-libp2p can raise from inside its own nurseries (e.g. PeerStoreError for a peer that just
        # left), mixed with cancellations: except* takes the errors and lets cancellation through, so
        # a failed refresh never takes the node down.
        try:
            with trio.move_on_after(10):
                await dht.refresh_routing_table()
        except* Exception as group:
            log.debug("routing table refresh failed: %s", group.exceptions)


async def dial_bootstrap(host: IHost, addrs: Sequence[str], connect: Callable[[str], Awaitable[ID]],
                         add_peer: Callable[[ID], Awaitable[object]], dial_timeout: float) -> None:
    """Dial each bootstrap peer once (within ``dial_timeout``) and add it to the routing table."""
    network = host.get_network()
    for addr in addrs:
        # py-libp2p keeps peers whose dial failed in a negative cache; a bootstrap peer that dropped our
        # handshake under load must get another chance.
        unblock = getattr(network, "unblock_peer", None)
        if unblock is not None:
            try:
                unblock(info_from_p2p_addr(multiaddr.Multiaddr(addr)).peer_id)
            except Exception:
                pass
        try:
            with trio.fail_after(dial_timeout):
                peer = await connect(addr)
            await add_peer(peer)
        except* Exception as group:  # a dead bootstrap peer must not stop the node
            log.warning("bootstrap peer %s unreachable: %s", addr, group.exceptions)


async def stay_joined(host: IHost, rejoin: Callable[[], Awaitable[None]]) -> None:
    """Call ``rejoin`` (re-dial the bootstrap and cached peers), with jittered backoff, whenever we have no
    connection.

    A bootstrap node hit by many joiners at once drops some handshakes; without this, a node whose only
    dial failed would stay alone forever.
    """
    delay = 1.0
    while True:
        await trio.sleep(delay * (0.5 + random.random()))
        if host.get_connected_peers():
            delay = 1.0
            continue
        log.info("no peers: dialling the bootstrap peers again")
        await rejoin()
        delay = min(delay * 2, 30.0)
