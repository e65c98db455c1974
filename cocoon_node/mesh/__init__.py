"""The mesh: libp2p host, gossip discovery of workers, and the validated Kademlia DHT."""

from cocoon_node.mesh.announce import (
    TOPIC as WORKERS_TOPIC,
)
from cocoon_node.mesh.announce import (
    Announcement,
    AnnouncementError,
    AnnouncementValidator,
    decode_announcement,
    model_topic,
)
from cocoon_node.mesh.connectivity import Connectivity, ConnectivitySettings
from cocoon_node.mesh.host import Mesh, MeshSettings, TransportFactory
from cocoon_node.mesh.identity import IdentityError, generate_identity, load_identity, load_or_create_identity
from cocoon_node.mesh.records import RecordNamespace, RecordRejected
from cocoon_node.mesh.workers import WorkerTable

__all__ = [
    "WORKERS_TOPIC",
    "Announcement",
    "AnnouncementError",
    "AnnouncementValidator",
    "Connectivity",
    "ConnectivitySettings",
    "IdentityError",
    "Mesh",
    "MeshSettings",
    "RecordNamespace",
    "RecordRejected",
    "TransportFactory",
    "WorkerTable",
    "decode_announcement",
    "generate_identity",
    "load_identity",
    "load_or_create_identity",
    "model_topic",
]
