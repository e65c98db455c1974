"""A worker re-announces when a requester or relay joins its topic, not when another worker does: workers'
connections churn in a large network, and each re-announcement goes to the whole topic (issue 15)."""

from __future__ import annotations

from typing import Any

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from cocoon_node.node.worker import WorkerRole

TOPIC = "/cocoon/models/test"


class _TopicPeers:
    def __init__(self) -> None:
        self.peers: set[ID] = set()

    def topic_peer_ids(self, topic: str) -> set[ID]:
        return set(self.peers)


def _peer() -> ID:
    return ID.from_pubkey(create_new_key_pair().public_key)


def _role(mesh: Any, workers: set[ID]) -> WorkerRole:
    return WorkerRole(None, mesh, create_new_key_pair(), None, is_worker=lambda p: p in workers)  # type: ignore[arg-type]


def test_only_peers_that_are_not_known_workers_call_for_a_greeting() -> None:
    mesh = _TopicPeers()
    other_worker, requester = _peer(), _peer()
    role = _role(mesh, {other_worker})
    told: set[ID] = set()
    assert not role._new_peers(TOPIC, told)  # nobody there

    mesh.peers = {other_worker}
    assert not role._new_peers(TOPIC, told), "a worker we know of connected: no announcement to the topic"

    mesh.peers = {other_worker, requester}
    assert role._new_peers(TOPIC, told), "a requester connected: it must hear of us now"
    told = set(mesh.peers)  # what the announce loop records after announcing
    assert not role._new_peers(TOPIC, told)

    mesh.peers = {other_worker}  # the requester left ...
    assert not role._new_peers(TOPIC, told)
    mesh.peers = {other_worker, requester}  # ... and came back (a restart): greeted again
    assert role._new_peers(TOPIC, told)


def test_without_a_worker_table_every_new_peer_counts() -> None:
    mesh = _TopicPeers()
    role = WorkerRole(None, mesh, create_new_key_pair(), None)  # type: ignore[arg-type]
    mesh.peers = {_peer()}
    assert role._new_peers(TOPIC, set())
