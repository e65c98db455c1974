"""The worker role: load a backend, attest, announce on gossip, serve inference streams."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio
from libp2p.crypto.keys import KeyPair

from cocoon_node.attestation import TEE_DEV, TEE_SNP, TEE_TDX, model_hash, upstream_origin
from cocoon_node.attestation.measure import measurements_of_report
from cocoon_node.config import Config
from cocoon_node.inference.backend import Backend
from cocoon_node.inference.factory import make_backend
from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer, WorkerMeter, WorkerTerms
from cocoon_node.mesh import WORKERS_TOPIC, Announcement, Mesh
from cocoon_node.mesh.announce import TOKENIZER_VERSION
from cocoon_node.node.attest import ReportPublisher
from cocoon_node.node.fresh_attest import PROTOCOL_ID as ATTEST_PROTOCOL_ID
from cocoon_node.node.fresh_attest import FreshAttestServer

log = logging.getLogger(__name__)
# trio's own TaskStatus is shadowed by the old trio-typing stubs py-libp2p pulls in.
TaskStatus = Any


def build_backend(config: Config) -> Backend:
    w = config.worker
    options: dict[str, Any]
    if w.backend == "torch":
        options = {"model_name": w.model, "max_batch": w.max_concurrent, "max_tokens_cap": w.max_tokens_cap}
        if w.model_path:
            options["model_path"] = w.model_path
    elif w.backend == "synthetic":
        options = {"tokens_per_second": w.synthetic_tokens_per_second, "model_name": w.model,
                   "max_batch": w.max_concurrent}
    elif w.backend == "openai-upstream":
        options = {"base_url": w.upstream_url, "model": w.model, "max_batch": w.max_concurrent}
    else:
        options = {"model_dir": w.model_path, "model_name": w.model, "max_batch": w.max_concurrent}
    return make_backend(w.backend, **options)


def upstream_of(backend: Backend) -> str:
    """Where the backend sends prompts: its upstream's origin, or "" when the model runs in this process."""
    base_url = getattr(backend, "base_url", None)
    return upstream_origin(base_url) if backend.kind == "openai-upstream" and base_url else ""


def compute_model_hash(backend: Backend, cache_dir: Path, stand_in: str = "") -> bytes:
    """SHA-256 naming the served weights (blocking: reads every weight file once, then a size/mtime cache).

    A synthetic backend has no weights; ``stand_in`` (its ``worker.model_path``) names a file hashed in their
    place, so test clusters can run workers that differ in "weights" without loading a real model. An
    upstream backend's hash also names where prompts go, so approving it approves that upstream only.
    """
    files = backend.model_files() or ([Path(stand_in)] if stand_in and backend.synthetic else [])
    if files:
        root = Path(files[0]).parent
        if all(Path(f).parent == root for f in files):
            return model_hash(root, files=[Path(f).name for f in files], cache_path=cache_dir / "model-hash-cache.json")
        return model_hash(Path("/"), files=[str(Path(f).resolve()).lstrip("/") for f in files],
                          cache_path=cache_dir / "model-hash-cache.json")
    # Upstream and synthetic backends: the node cannot see weights, so it names its configuration.
    named: dict[str, str] = {"kind": backend.kind, "model": backend.model_name}
    if upstream_of(backend):
        named["upstream"] = upstream_of(backend)
    config = json.dumps(named, sort_keys=True)
    return hashlib.sha256(config.encode()).digest()


def _tokenizer_fields(backend: Backend) -> dict[str, Any]:
    """Announce the backend's tokenizer (v2) when it names one, so requesters can count our tokens."""
    tokenizer = getattr(backend, "tokenizer_hash", b"")
    return {"tokenizer": tokenizer, "v": TOKENIZER_VERSION} if tokenizer else {}


class WorkerRole:
    """Everything a serving node does beyond the mesh itself."""

    def __init__(self, config: Config, mesh: Mesh, key_pair: KeyPair, backend: Backend,
                 meter: WorkerMeter | None = None, payout: str = "") -> None:
        self.payout = payout
        self.config = config
        self.mesh = mesh
        self.key_pair = key_pair
        self.backend = backend
        self.meter = meter
        self.server: InferenceServer | None = None
        self.announcement: Announcement | None = None
        self.publisher: ReportPublisher | None = None
        self.ready = trio.Event()
        self._load_changed = trio.Event()

    async def run(self, *, task_status: TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        w = self.config.worker
        log.info("loading %s backend for %s", w.backend, w.model)
        await self.backend.load()
        weights = await trio.to_thread.run_sync(compute_model_hash, self.backend, self.config.data_dir, w.model_path)
        log.info("model %s weight hash %s", w.model, weights.hex())
        terms = WorkerTerms(model=w.model, price_prompt=w.price_prompt, price_completion=w.price_completion,
                            max_concurrent=w.max_concurrent, max_tokens_cap=w.max_tokens_cap)
        self.server = InferenceServer(self.backend, terms, meter=self.meter,
                                      on_load_change=lambda _load: self._load_changed.set())
        tee_kind = {"dev": TEE_DEV, "tdx": TEE_TDX, "snp": TEE_SNP}[w.tee]
        upstream = upstream_of(self.backend)
        if upstream:
            log.warning("prompts are forwarded to the upstream %s; the attestation report says so", upstream)
        self.publisher = ReportPublisher(self.mesh, self.key_pair, tee=tee_kind, model_name=w.model,
                                         model_hash=weights, data_dir=self.config.data_dir,
                                         backend=self.backend.kind, upstream=upstream,
                                         snp_vcek_file=w.snp_vcek_file or None)
        self.mesh.set_stream_handler(PROTOCOL_ID, self.server.handle)
        # fresh evidence over a client's nonce (protocols/attest.toml)
        self.mesh.set_stream_handler(ATTEST_PROTOCOL_ID, FreshAttestServer(self.publisher).handle)
        now = int(time.time())
        self.announcement = Announcement(
            peer_id=self.mesh.peer_id.to_bytes(), addrs=tuple(self.mesh.advertised_addrs()[:8]), model=w.model,
            model_hash=weights, backend=self.backend.kind, synthetic=self.backend.synthetic,
            price_prompt=w.price_prompt, price_completion=w.price_completion, max_concurrent=w.max_concurrent,
            load=0, protocols=(PROTOCOL_ID,), tee_kind=tee_kind, seqno=time.time_ns() // 1_000_000,
            issued_at=now, expires_at=now + w.announce_ttl, payout=self.payout,
            **_tokenizer_fields(self.backend),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.publisher.run)
            with trio.move_on_after(30):  # the report is stored locally at once; propagation may lag
                await self.publisher.published.wait()
            nursery.start_soon(self._announce_loop)
            self.ready.set()
            task_status.started()

    async def _announce_loop(self) -> None:
        """Announce on a heartbeat, and at once when the load changes (at most 5 times a second)."""
        w = self.config.worker
        assert self.announcement is not None and self.server is not None
        while True:
            now = int(time.time())
            self.announcement = self.announcement.bump(load=self.server.load, now=now, ttl=w.announce_ttl)
            # Only addresses that work right now (reachability and relay reservations change them).
            self.announcement = replace(self.announcement, addrs=tuple(self.mesh.advertised_addrs()[:8]))
            try:
                await self.mesh.publish(WORKERS_TOPIC, self.announcement.seal(self.key_pair.private_key))
            except Exception as exc:
                log.warning("announcement not published: %s", exc)
            self._load_changed = trio.Event()
            # +-10 % jitter: workers started together (a restarted host, a netsim pool) would otherwise keep
            # announcing in lockstep, and every node would verify a whole round of announcements at once.
            with trio.move_on_after(w.announce_interval * random.uniform(0.9, 1.1)):
                await self._load_changed.wait()
                await trio.sleep(0.2)

    def addresses_changed(self) -> None:
        """Our advertised addresses changed (reachability, relays): announce again now."""
        self._load_changed.set()

    def status(self) -> dict[str, Any]:
        a = self.announcement
        s = self.server.stats if self.server else None
        return {
            "model": self.config.worker.model,
            "backend": self.backend.kind,
            "synthetic": self.backend.synthetic,
            "tee": self.config.worker.tee + (" (dev-INSECURE: proves nothing about hardware)"
                                             if self.config.worker.tee == "dev" else ""),
            "model_hash": a.model_hash.hex() if a else None,
            "upstream": upstream_of(self.backend) or None,
            # what an operator lists to approve this image (TDX only): see `python -m cocoon_node.attestation.measure`
            "measurements": (measurements_of_report(self.publisher.current)
                             if self.publisher is not None and self.publisher.current else None),
            "price_prompt": self.config.worker.price_prompt,
            "price_completion": self.config.worker.price_completion,
            "max_concurrent": self.config.worker.max_concurrent,
            "load": self.server.load if self.server else 0,
            "seqno": a.seqno if a else None,
            "served": s.served if s else 0,
            "rejected": s.rejected if s else 0,
            "cancelled": s.cancelled if s else 0,
            "failed": s.failed if s else 0,
        }
