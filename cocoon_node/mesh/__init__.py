"""The mesh: libp2p host, gossip discovery of workers, the validated Kademlia DHT, and NAT traversal.

- :mod:`.host`: :class:`Mesh`, the py-libp2p host (Noise, yamux, GossipSub, Kademlia); the transport is
  injectable (:data:`TransportFactory`), which is how netsim shapes links without the mesh importing it;
  its tunables are in :mod:`._settings`, its race-free teardown in :mod:`._shutdown`;
- :mod:`.identity`: the node's persisted Ed25519 key; :mod:`.peer_cache`: where our peers listened last run;
- :mod:`.announce` (signed worker announcements and their gossip validator), :mod:`.workers` (the
  requester's live table of them);
- :mod:`.records` (namespaced DHT record validation), :mod:`.dht_lookup` (first valid answer wins, over
  :mod:`.kad_walk`, one iterative walk);
- NAT traversal: :mod:`.connectivity` (one node's reachability, relays, hole punching), :mod:`.reach`
  (dial-back), :mod:`.relay_client` and :mod:`.relay_hop` (circuit relay v2), :mod:`.holepunch` (DCUtR),
  :mod:`.paths` (which path a stream took), :mod:`.conns` (small connection helpers);
- :mod:`.trimmer`: closes idle connections over twice ``target_peers`` (py-libp2p's pruner never does);
- pinned py-libp2p 0.8.1 patches: :mod:`.kad_protocol`, :mod:`.tcp_addrs`, :mod:`.yamux_patch` (go-yamux's
  window credit, coalesced frame writes), :mod:`.task_index` (O(1) parent lookup in its service manager),
  :mod:`.prompt_locks` (per-frame locks that do not yield when free);
- :mod:`.ratelimit`: the per-peer rate limit of the protocols a node serves to anyone.
"""

from cocoon_node.mesh.announce import (
    MAX_CLOCK_SKEW,
    TOKENIZER_VERSION,
    Announcement,
    AnnouncementError,
    AnnouncementValidator,
    decode_announcement,
    model_topic,
)
from cocoon_node.mesh.announce import (
    TOPIC as WORKERS_TOPIC,
)
from cocoon_node.mesh.connectivity import Connectivity, ConnectivitySettings
from cocoon_node.mesh.host import Mesh, MeshSettings, TransportFactory
from cocoon_node.mesh.identity import (
    IdentityError,
    generate_identity,
    identity_path,
    load_identity,
    load_or_create_identity,
    peer_id_of,
)
from cocoon_node.mesh.paths import stream_path
from cocoon_node.mesh.ratelimit import PeerRateLimit
from cocoon_node.mesh.records import RecordNamespace, RecordRejected
from cocoon_node.mesh.relay_hop import RelayLimits
from cocoon_node.mesh.workers import WorkerTable

__all__ = [
    "MAX_CLOCK_SKEW",
    "TOKENIZER_VERSION",
    "WORKERS_TOPIC",
    "Announcement",
    "AnnouncementError",
    "AnnouncementValidator",
    "Connectivity",
    "ConnectivitySettings",
    "IdentityError",
    "Mesh",
    "MeshSettings",
    "PeerRateLimit",
    "RecordNamespace",
    "RecordRejected",
    "RelayLimits",
    "TransportFactory",
    "WorkerTable",
    "decode_announcement",
    "generate_identity",
    "identity_path",
    "load_identity",
    "load_or_create_identity",
    "model_topic",
    "peer_id_of",
    "stream_path",
]
