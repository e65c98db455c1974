"""The mesh's tunables (:class:`MeshSettings`) and the transport a node may inject instead of py-libp2p's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from libp2p.abc import ITransport
from libp2p.peer.id import ID

# Called with the node's peer id; returns the transport and the context its background work runs in (entered
# around the host, left after it).
TransportFactory = Callable[[ID], tuple[ITransport, AbstractAsyncContextManager[object]]]


@dataclass(frozen=True)
class MeshSettings:
    """Tunables of the mesh; defaults suit both a loopback cluster and the internet."""

    listen_addrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: Sequence[str] = ()
    max_connections: int = 200
    target_peers: int = 6
    # Connections to idle peers beyond this many are closed (mesh/trimmer.py: py-libp2p never closes a
    # connection that carries a stream, and every pubsub peer's does). None: twice target_peers; 0: never.
    trim_above: int | None = None
    heartbeat_interval: float = 1.0
    gossip_degree: int = 6
    gossip_degree_low: int = 4
    gossip_degree_high: int = 12
    # Loopback clusters put every peer on one IP; on the internet keep diversity protection on.
    local_cluster: bool = False
    max_inbound_rpc_size: int = 256 * 1024
    dial_timeout: float = 5.0
    topics: Sequence[str] = field(default_factory=tuple)
    # Where to remember peers we were connected to, so a restarted node finds the mesh again even when its
    # configured bootstrap peers are gone (or it was itself the bootstrap). None: no cache.
    peer_cache: Path | None = None
    # DHT reads (see cocoon_node/mesh/dht_lookup.py): most RPCs in flight per lookup, the limit per RPC (it
    # includes the dial when we are not connected to the peer, hence dial_timeout's 5 s), and how long a record
    # fetched from the network is reused (it is re-validated on every use either way).
    dht_alpha: int = 3
    dht_rpc_timeout: float = 5.0
    dht_cache_ttl: float = 30.0
    # DHT writes (cocoon_node/mesh/dht_put.py): how many closest peers a record is stored at (Kademlia's k,
    # also the width of a lookup's window), how often our own records are checked against the closest peers
    # we now know of (re-put when new ones appeared), and the periodic re-put regardless.
    dht_k: int = 20
    dht_check_interval: float = 30.0
    dht_republish_interval: float = 600.0
    # A transport to use instead of py-libp2p's own choice; None (production) keeps py-libp2p's. netsim injects
    # its NETSIM-ONLY shaped TCP (netsim/shaping/) this way, so the mesh never imports netsim.
    transport_factory: TransportFactory | None = None
