"""One iterative Kademlia value walk: the candidates by XOR distance to the key, who was asked, who failed.

The keyspace is py-libp2p's routing table's: SHA-256 of the peer id bytes against SHA-256 of the key bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from libp2p.peer.id import ID


@dataclass
class Walk:
    """State of one iterative value walk."""

    target: bytes
    candidates: dict[ID, int] = field(default_factory=dict)  # peer -> XOR distance to the key
    asked: set[ID] = field(default_factory=set)
    failed: set[ID] = field(default_factory=set)
    answered: int = 0

    def add(self, peer: ID) -> None:
        if peer not in self.candidates:
            self.candidates[peer] = xor_distance(self.target, peer)

    def next_peer(self, k: int, prefer: Callable[[ID], bool] | None = None) -> ID | None:
        """The closest peer not yet asked among the ``k`` closest live candidates (None: walk complete).

        With ``prefer``, the closest preferred peer in that window goes first (connected peers: no dial).
        """
        live = sorted((d, p) for p, d in self.candidates.items() if p not in self.failed)
        window = [p for _, p in live[:k] if p not in self.asked]
        if not window:
            return None
        if prefer is not None:
            for peer in window:
                if prefer(peer):
                    return peer
        return window[0]


def xor_distance(target: bytes, peer: ID) -> int:
    """XOR distance of ``peer`` to ``target`` (a SHA-256 key hash), as py-libp2p's routing table measures it."""
    return int.from_bytes(target, "big") ^ int.from_bytes(hashlib.sha256(peer.to_bytes()).digest(), "big")
