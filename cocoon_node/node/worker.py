"""The worker role: load a backend, attest, announce on gossip, serve inference streams."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, cast

import msgspec
import trio
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from msgspec.structs import replace  # announcements are msgspec Structs

from cocoon_node.attestation import TEE_DEV, TEE_SNP, TEE_TDX, measurements_of_report, model_hash, upstream_origin
from cocoon_node.config import Config
from cocoon_node.inference import PROTOCOL_ID, Backend, InferenceServer, WorkerMeter, WorkerTerms, make_backend
from cocoon_node.mesh import WORKERS_TOPIC, Announcement, Mesh, model_topic
from cocoon_node.mesh.announce import Hardware, payload_version
from cocoon_node.mesh.topics import TopicRendezvous
from cocoon_node.node.attest import ReportPublisher
from cocoon_node.node.collateral import collateral_source
from cocoon_node.node.fresh_attest import PROTOCOL_ID as ATTEST_PROTOCOL_ID
from cocoon_node.node.fresh_attest import FreshAttestServer
from cocoon_node.node.hardware import describe_hardware
from cocoon_node.node.receipt_signer import WorkerReceipts
from cocoon_node.observe.progress import LoadProgress
from cocoon_node.wire.messages.announce import BackendKind, Capability, TeeKind

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
        options = {"base_url": w.upstream_url, "model": w.model, "max_batch": w.max_concurrent,
                   "capabilities": w.upstream_capabilities}
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


def announced_capabilities(backend: Backend) -> tuple[str, ...]:
    """The optional OpenAI features the backend serves, as announced (v3): requesters route by them."""
    return tuple(sorted(getattr(backend, "capabilities", ())))


def load_bucket(load: int, max_concurrent: int) -> int:
    """Coarse load for announcements: 0 idle, 1-4 by quarter of capacity, 5 full. Only a change of bucket is
    worth an announcement; requesters re-check capacity when the worker answers anyway."""
    if load <= 0:
        return 0
    if load >= max_concurrent:
        return 5
    return 1 + (4 * load) // max_concurrent


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
        self._addrs_changed = False
        self.announcements_sent = 0
        self.hardware: Hardware | None = None

    async def run(self, *, task_status: TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        w = self.config.worker
        progress = LoadProgress(f"worker {w.model}", log)  # phases as log lines: the long wait of a start
        progress.phase(f"loading the {w.backend} backend")
        if hasattr(self.backend, "on_phase"):  # backends that report their own phases (torch)
            self.backend.on_phase = progress.phase
        await self.backend.load()
        progress.phase("hashing the weights")
        weights = await trio.to_thread.run_sync(compute_model_hash, self.backend, self.config.data_dir, w.model_path)
        log.info("model %s weight hash %s", w.model, weights.hex())
        progress.phase("publishing the attestation report")
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
                                         snp_vcek_file=w.snp_vcek_file or None,
                                         collateral=collateral_source(tee_kind, w, self.config.data_dir))
        publisher = self.publisher
        self.server.receipts = WorkerReceipts(self.key_pair, self.mesh.peer_id.to_bytes(), model_name=w.model,
                                              model_hash=weights, report=lambda: publisher.current)
        self.mesh.set_stream_handler(PROTOCOL_ID, self.server.handle)
        self.hardware = await describe_hardware(self.backend, w)
        log.info("serving on %s", self.hardware)
        # fresh evidence over a client's nonce (protocols/attest.toml)
        self.mesh.set_stream_handler(ATTEST_PROTOCOL_ID, FreshAttestServer(self.publisher).handle)
        now = int(time.time())
        tokenizer: bytes = getattr(self.backend, "tokenizer_hash", b"")
        capabilities = announced_capabilities(self.backend)
        self.announcement = Announcement(
            peer_id=self.mesh.peer_id.to_bytes(), addrs=tuple(self.mesh.advertised_addrs()[:8]), model=w.model,
            # backend, tee_kind and capabilities are checked against the announcement's type when it is sealed
            model_hash=weights, backend=cast(BackendKind, self.backend.kind), synthetic=self.backend.synthetic,
            price_prompt=w.price_prompt, price_completion=w.price_completion, max_concurrent=w.max_concurrent,
            load=0, protocols=(PROTOCOL_ID,), tee_kind=cast(TeeKind, tee_kind), seqno=time.time_ns() // 1_000_000,
            issued_at=now, expires_at=now + w.announce_ttl, payout=self.payout,
            # optional fields: the backend's tokenizer when it names one (requesters can count our tokens), the
            # hardware (v2), and the optional OpenAI features it serves (v3: requesters route by them)
            tokenizer=tokenizer, hardware=self.hardware or msgspec.UNSET,
            capabilities=cast(tuple[Capability, ...], capabilities),
            v=payload_version(tokenizer=tokenizer, hardware=self.hardware, capabilities=capabilities),
        )
        await self.mesh.subscribe(model_topic(w.model))  # the topic's mesh: workers and buyers of the model
        async with trio.open_nursery() as nursery:
            nursery.start_soon(TopicRendezvous(self.mesh).provide, model_topic(w.model))
            nursery.start_soon(self.publisher.run)
            with trio.move_on_after(30):  # the report is stored locally at once; propagation may lag
                await self.publisher.published.wait()
            progress.finish()
            nursery.start_soon(self._announce_loop)
            self.ready.set()
            task_status.started()

    async def _announce_loop(self) -> None:
        """Announce on the model's topic: a liveness beat every ``announce_interval``, and when the load bucket
        moves (idle, each quarter of ``max_concurrent``, full), at most once per ``announce_min_interval``.
        A peer newly connected on the model's topic gets one at once too (rate-limited the same way), so a
        requester that just started, or a mesh formed after our first announcement, does not wait a whole
        beat; so does an address change (reachability, relays). The first announcement, one per
        ``directory_interval``, and one whenever a peer following the directory connects also go to the
        directory topic: one message on both topics."""
        w = self.config.worker
        assert self.announcement is not None and self.server is not None
        topic = ""
        last_directory = -float("inf")
        told: set[ID] = set()  # directory followers among our peers when we last announced there
        met: set[ID] = set()  # our model topic's peers when we last announced (a new one hears from us soon)
        min_gap = min(w.announce_min_interval, w.announce_interval)
        while True:
            now = int(time.time())
            self.announcement = self.announcement.bump(load=self.server.load, now=now, ttl=w.announce_ttl)
            if model_topic(self.announcement.model) != topic:
                # The announced model's topic (a message there must announce that model): the configured
                # model's, unless the announcement was changed from outside (netsim's misnamed worker).
                topic = model_topic(self.announcement.model)
                await self.mesh.subscribe(topic)
            # Only addresses that work right now (reachability and relay reservations change them).
            self.announcement = replace(self.announcement, addrs=tuple(self.mesh.advertised_addrs()[:8]))
            self._addrs_changed = False
            sent_bucket = load_bucket(self.server.load, w.max_concurrent)
            sent_at = trio.current_time()
            topics = [topic]
            followers = self.mesh.topic_peer_ids(WORKERS_TOPIC)
            if sent_at - last_directory >= w.directory_interval or self._new_peers(WORKERS_TOPIC, told):
                topics.append(WORKERS_TOPIC)
                last_directory, told = sent_at, followers
            met = self.mesh.topic_peer_ids(topic)
            try:
                await self.mesh.publish(topics, self.announcement.seal(self.key_pair.private_key))
                self.announcements_sent += 1
            except Exception as exc:
                log.warning("announcement not published: %s", exc)
            # +-10 % jitter: workers started together (a restarted host, a netsim pool) would otherwise keep
            # announcing in lockstep, and every node would verify a whole round of announcements at once.
            beat_at = sent_at + w.announce_interval * random.uniform(0.9, 1.1)
            with trio.move_on_at(beat_at):
                while (load_bucket(self.server.load, w.max_concurrent) == sent_bucket and not self._addrs_changed
                       and not self._new_peers(WORKERS_TOPIC, told) and not self._new_peers(topic, met)):
                    self._load_changed = trio.Event()  # no checkpoint since the check: no change is missed
                    with trio.move_on_after(1.0):  # and new topic peers are noticed within a second
                        await self._load_changed.wait()
                await trio.sleep_until(sent_at + min_gap)

    def _new_peers(self, topic: str, told: set[ID]) -> bool:
        """Whether a peer joined ``topic`` among our connections since we last announced there (a requester
        that just started must not wait a whole beat to hear of us; at start, our first announcement may have
        gone out before the topic's mesh formed). ``told`` forgets peers that left, so one that restarts
        with the same identity hears from us again."""
        now = self.mesh.topic_peer_ids(topic)
        told &= now
        return bool(now - told)

    def addresses_changed(self) -> None:
        """Our advertised addresses changed (reachability, relays): announce again now (rate-limited)."""
        self._addrs_changed = True
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
            "hardware": self.hardware.to_dict() if self.hardware else None,
            "seqno": a.seqno if a else None,
            "served": s.served if s else 0,
            "rejected": s.rejected if s else 0,
            "cancelled": s.cancelled if s else 0,
            "failed": s.failed if s else 0,
        }
