"""In-process pieces for attestation-gate tests: a worker's identity, its reports and announcements, and a
DHT stand-in that serves (or withholds, or serves stale) attestation records the way the mesh would."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from cocoon_node.attestation import TEE_DEV
from cocoon_node.config import load_config
from cocoon_node.inference.stream import PROTOCOL_ID
from cocoon_node.mesh import Announcement
from cocoon_node.node.attest import AttestationGate, ReportPublisher, policy_from_config, report_key

T0 = 1_800_000_000
WEIGHTS = hashlib.sha256(b"tiny weights").digest()


class FakeDht:
    """``get_record`` answers from ``records``; ``stale`` is what a node with an older copy would answer first
    (only a ``newest`` lookup gets past it); with ``blocked`` set a lookup hangs until cancelled."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.stale: dict[str, bytes] = {}
        self.blocked = False
        self.waiting = trio.Event()
        self.lookups: list[tuple[str, bool]] = []

    async def get_record(self, key: str, *, newest: bool = False) -> bytes | None:
        self.lookups.append((key, newest))
        if self.blocked:
            self.waiting.set()
            await trio.sleep_forever()
        if not newest and key in self.stale:
            return self.stale[key]
        return self.records.get(key)


class Worker:
    """One worker identity: makes reports (dev TEE) and announcements that may or may not agree."""

    def __init__(self, tmp_path: Path, *, model_name: str = "tiny-model", weights: bytes = WEIGHTS,
                 tee: str = TEE_DEV, backend: str = "synthetic") -> None:
        self.key_pair = create_new_key_pair()
        self.peer = ID.from_pubkey(self.key_pair.public_key)
        self.tmp_path = tmp_path
        self.model_name, self.weights, self.tee, self.backend = model_name, weights, tee, backend

    @property
    def peer_id(self) -> bytes:
        return self.peer.to_bytes()

    @property
    def key(self) -> str:
        return report_key(self.peer)

    def report(self, now: int = T0, lifetime: int = 3600, **kw: Any) -> bytes:
        args: dict[str, Any] = {"tee": self.tee, "model_name": self.model_name, "model_hash": self.weights, **kw}
        pub = ReportPublisher(SimpleNamespace(peer_id=self.peer), self.key_pair,  # type: ignore[arg-type]
                              data_dir=self.tmp_path, lifetime=lifetime, **args)
        return pub.make_report(now=now)

    def announcement(self, now: int = T0, **changes: Any) -> Announcement:
        a = Announcement(
            peer_id=self.peer_id, addrs=(), model=self.model_name, model_hash=self.weights, backend=self.backend,
            synthetic=True, price_prompt=1, price_completion=1, max_concurrent=4, load=0, protocols=(PROTOCOL_ID,),
            tee_kind=self.tee, seqno=1, issued_at=now, expires_at=now + 15, payout="", v=1,
        )
        return msgspec.structs.replace(a, **changes)


class Clock:
    """The gate's wall clock, moved by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def local_dev_policy(**policy: Any) -> Any:
    """What a local requester with --allow-dev-tee builds (plus ``policy`` settings)."""
    cfg = load_config(env={}, overrides={"node": {"network": "local"}, "policy": {"allow_dev_tee": True, **policy}})
    return policy_from_config(cfg)


def gate_over(dht: FakeDht, policy: Any = None, clock: Clock | None = None, **kw: Any) -> AttestationGate:
    return AttestationGate(dht, policy or local_dev_policy(), clock=clock or Clock(), **kw)  # type: ignore[arg-type]
