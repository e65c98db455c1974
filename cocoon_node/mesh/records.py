"""A namespaced record-validator framework for the Kademlia DHT.

KadDHT accepts anything by default; we run it with ``strict_validation`` on, so a key is stored only when a
namespace we registered vouches for it. Each concern (attestation reports, for one) plugs in a
:class:`RecordNamespace` that knows how to validate a record and which of two records is newer.
"""

from __future__ import annotations

from typing import Protocol

from libp2p.records.validator import Validator


class RecordRejected(ValueError):
    """A DHT record failed its namespace's validation."""


class RecordNamespace(Protocol):
    """What a concern supplies to store records under ``/NAMESPACE/...`` keys."""

    namespace: str

    def validate(self, key: str, value: bytes) -> None:
        """Raise :class:`RecordRejected` (or any ``ValueError``) when the record must not be stored."""

    def select(self, key: str, values: list[bytes]) -> int:
        """Index of the best (newest) of several valid records for the same key."""


class _LibP2PValidatorAdapter(Validator):
    """Presents a :class:`RecordNamespace` through py-libp2p's validator interface."""

    def __init__(self, namespace: RecordNamespace) -> None:
        self._namespace = namespace
        self.rejected = 0

    def validate(self, key: str, value: bytes) -> None:
        try:
            self._namespace.validate(key, value)
        except Exception:
            self.rejected += 1
            raise

    def select(self, key: str, values: list[bytes]) -> int:
        return self._namespace.select(key, values)


def as_libp2p_validator(namespace: RecordNamespace) -> Validator:
    return _LibP2PValidatorAdapter(namespace)
