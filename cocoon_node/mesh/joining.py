"""Keeping a node joined: routing-table refreshes right after start, only while it is sparsely connected."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import KadDHT

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
