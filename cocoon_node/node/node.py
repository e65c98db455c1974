"""The node: one Trio process wiring mesh, attestation, inference and the HTTP surfaces together.

Roles are flags: a worker sells inference, a requester buys it for local clients, a node may be both.
Every node relays gossip and serves the DHT whatever its roles, which is what keeps the mesh symmetric.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from cocoon_node import __version__
from cocoon_node.api import admin_app, openai_app, serve_http
from cocoon_node.config import Config
from cocoon_node.inference.requester import Requester
from cocoon_node.inference.stream import PROTOCOL_ID
from cocoon_node.inference.warm import WarmStreams
from cocoon_node.mesh import (
    WORKERS_TOPIC,
    Announcement,
    AnnouncementValidator,
    Connectivity,
    ConnectivitySettings,
    Mesh,
    MeshSettings,
    TransportFactory,
    WorkerTable,
    load_or_create_identity,
)
from cocoon_node.node.attest import AttestationGate, AttestationNamespace, policy_from_config
from cocoon_node.node.datadir import secure_data_dir
from cocoon_node.node.payments import CHANNEL_PROTOCOL_ID, PaymentsRole
from cocoon_node.node.worker import WorkerRole, build_backend

log = logging.getLogger(__name__)
# trio's own TaskStatus is shadowed by the old trio-typing stubs py-libp2p pulls in.
TaskStatus = Any

NODE_INFO_FILE = "node.json"


class AttestedPeerMismatch(Exception):
    """The stream's authenticated remote key is not the key the attestation report binds."""


@dataclass
class NodeInfo:
    peer_id: str
    addrs: list[str]
    admin_url: str
    admin_token: str
    api_url: str | None
    pid: int
    roles: list[str] = field(default_factory=list)


class _PolicySink:
    """Where a node without a gate (a worker) keeps the registry-merged policy it reads for the channel rules."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def set_policy(self, policy: Any) -> None:
        self.policy = policy


class Node:
    def __init__(self, config: Config, key_pair: KeyPair | None = None, *,
                 transport_factory: TransportFactory | None = None) -> None:
        self.config = config
        self._transport_factory = transport_factory  # None in production; netsim injects its shaped TCP
        secure_data_dir(config.data_dir)  # 0700, everything in it 0600: refused otherwise, like the identity key
        self.key_pair = key_pair or load_or_create_identity(config.data_dir)
        self.validator = AnnouncementValidator()
        self.table = WorkerTable()
        self.validator.on_accept = self._on_announcement
        self.mesh = Mesh(self.key_pair, self._mesh_settings(), namespaces=[AttestationNamespace()],
                         topic_validators={WORKERS_TOPIC: self.validator})
        self.connectivity = Connectivity(self.mesh, self._connectivity_settings())  # NAT traversal (issue 14)
        self.connectivity.install()
        self.worker: WorkerRole | None = None
        self.requester: Requester | None = None
        self.gate: AttestationGate | None = None
        self.payments: PaymentsRole | None = None
        self.info: NodeInfo | None = None
        self.started_at = time.time()
        self.ready = trio.Event()

    def _mesh_settings(self) -> MeshSettings:
        n = self.config.node
        return MeshSettings(listen_addrs=n.listen, bootstrap=n.bootstrap, max_connections=n.max_connections,
                            target_peers=n.target_peers, local_cluster=n.local_cluster, topics=(WORKERS_TOPIC,),
                            heartbeat_interval=n.gossip_heartbeat, gossip_degree=n.gossip_degree,
                            gossip_degree_low=max(1, n.gossip_degree * 2 // 3), gossip_degree_high=2 * n.gossip_degree,
                            peer_cache=self.config.data_dir / "peers.json",
                            transport_factory=self._transport_factory)

    def _connectivity_settings(self) -> ConnectivitySettings:
        from cocoon_node.mesh.relay_hop import RelayLimits

        n = self.config.node
        limits = RelayLimits(max_reservations=n.relay_max_reservations, max_circuits=n.relay_max_circuits,
                             circuit_bytes=n.relay_circuit_bytes, circuit_duration=n.relay_circuit_duration)
        return ConnectivitySettings(reachability=n.reachability, relay=n.relay, hole_punching=n.hole_punching,
                                    relay_reservations=n.relay_reservations if self.config.worker.enabled else 0,
                                    relay_limits=limits)

    def _on_announcement(self, announcement: Announcement) -> None:
        if self.table.update(announcement) and self.gate is not None:
            self.gate.prefetch(announcement)  # verify in the background, before any request needs it

    @property
    def peer_id(self) -> ID:
        return self.mesh.peer_id

    async def run(self, *, task_status: TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        secure_data_dir(cfg.data_dir)  # again: the files may have changed since the node was built
        paid = cfg.payments.enabled and (cfg.worker.enabled or cfg.requester.enabled)
        async with AsyncExitStack() as stack:
            if paid:
                self.payments = await stack.enter_async_context(PaymentsRole.open(cfg, self.key_pair))
            await stack.enter_async_context(self.mesh.start())
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(self.connectivity.run)
            await self._run_roles(nursery, task_status)

    async def _run_roles(self, nursery: trio.Nursery, task_status: TaskStatus) -> None:
        cfg = self.config
        pay = self.payments
        roles = ["relay"] if cfg.node.relay else []
        if cfg.worker.enabled:
            roles.append("worker")
            self.worker = WorkerRole(cfg, self.mesh, self.key_pair, build_backend(cfg),
                                     meter=pay.worker_meter if pay else None,
                                     payout=pay.payout_address if pay else "")
            self.connectivity.on_change(self.worker.addresses_changed)
            if cfg.policy.registry_address and pay is not None and pay.worker_meter is not None:
                # The registry's channel rules: a worker serves no channel breaking them.
                from cocoon_node.node.registry_policy import RegistryPolicyRefresher
                rules = RegistryPolicyRefresher(_PolicySink(policy_from_config(cfg)), pay.chain,
                                                cfg.policy.registry_address, policy_from_config(cfg),
                                                cfg.policy.registry_refresh)
                pay.worker_meter.rules = rules.channel_rules
                nursery.start_soon(rules.run)
            await nursery.start(self.worker.run)
            if pay is not None and pay.settlement is not None:
                nursery.start_soon(pay.settlement.run)
                self.mesh.set_stream_handler(CHANNEL_PROTOCOL_ID, pay.handle_close_stream)
        api_url = None
        if cfg.requester.enabled:
            roles.append("requester")
            self.gate = AttestationGate(self.mesh, policy_from_config(cfg))
            nursery.start_soon(self.gate.run_prefetcher)
            for announcement in self.table.live():
                self.gate.prefetch(announcement)
            if cfg.policy.registry_address and pay is not None:
                from cocoon_node.node.registry_policy import RegistryPolicyRefresher
                refresher = RegistryPolicyRefresher(self.gate, pay.chain, cfg.policy.registry_address,
                                                    self.gate.policy, cfg.policy.registry_refresh)
                if pay.channels is not None:
                    pay.channels.rules = refresher.channel_rules  # no deploy the network's workers would refuse
                nursery.start_soon(refresher.run)
            if pay is not None and pay.channels is not None:
                nursery.start_soon(partial(pay.channels.watch, poll_interval=cfg.payments.watch_interval))
            warm = None
            if cfg.requester.warm_streams > 0:
                warm = WarmStreams(self._open_attested_stream, max_spares=cfg.requester.warm_streams)
                nursery.start_soon(warm.run)
                # Spares opened over a relay would keep requests there after a hole punch: drop them then.
                spares = warm
                self.connectivity.on_upgrade(lambda peer: spares.forget(peer.to_bytes()))
            self.requester = Requester(
                self._reachable_workers, self._open_attested_stream, self.gate, warm=warm,
                max_price_prompt=cfg.requester.max_price_prompt,
                max_price_completion=cfg.requester.max_price_completion,
                first_token_timeout=cfg.requester.first_token_timeout,
                meter_factory=pay.meter_for if pay else None,
            )
            app = openai_app(self.requester, api_key=cfg.requester.api_key, models=self.models,
                             channels=self.payments_status, attestation=self.fresh_attestation)
            api_url = await nursery.start(serve_http, app, cfg.requester.api_host, cfg.requester.api_port)
        nursery.start_soon(self._expire_workers)
        token = secrets.token_hex(16)
        admin_url = await nursery.start(serve_http, admin_app(self.status, token), cfg.node.admin_host,
                                        cfg.node.admin_port)
        self.info = NodeInfo(self.peer_id.to_base58(), self.mesh.listen_addrs(), admin_url, token, api_url,
                             os.getpid(), roles)
        self._write_info(self.info)
        self.ready.set()
        log.info("node %s up: %s roles=%s api=%s", self.peer_id, self.mesh.listen_addrs(), roles, api_url)
        task_status.started(self.info)
        try:
            await trio.sleep_forever()
        finally:
            (cfg.data_dir / NODE_INFO_FILE).unlink(missing_ok=True)

    def _reachable_workers(self) -> list[Announcement]:
        """Live workers we have a way to: an announced address (direct or relay circuit) or a connection.
        A worker behind a NAT announces nothing dialable until it holds a relay reservation."""
        connected = set(self.mesh.connected_peers()) if self.mesh.host else set()
        return [a for a in self.table.live() if a.addrs or a.peer in connected]

    async def shutdown_gracefully(self) -> None:
        """Before cancelling everything: close our payment channels while the mesh is still up, so workers
        can co-sign cooperative closes (bounded; whatever is left is closed unilaterally afterwards)."""
        if self.payments is not None:
            with trio.move_on_after(30):
                await self.payments.close_channels(self._open_peer_stream)

    async def _open_peer_stream(self, peer: str, protocol: str) -> Any:
        worker = next((a for a in self.table.live() if a.peer.to_base58() == peer), None)
        addrs = worker.addrs if worker else ()
        return await self.mesh.new_stream(ID.from_base58(peer), protocol, addrs)

    async def fresh_attestation(self, worker: str, nonce: bytes) -> dict[str, Any]:
        """A worker's report and fresh evidence over ``nonce``, with our verdict (``/v1/cocoon/attestation``)."""
        from cocoon_node.node.fresh_attest import PROTOCOL_ID as ATTEST_ID
        from cocoon_node.node.fresh_attest import describe_fresh, fetch_fresh_attestation

        known = {a.peer.to_base58(): a for a in self.table.live()}
        announcement = known.get(worker)
        if announcement is None or self.gate is None:
            raise LookupError(f"no live worker {worker}")
        answer = await fetch_fresh_attestation(
            lambda: self.mesh.new_stream(announcement.peer, ATTEST_ID, announcement.addrs), nonce)
        return describe_fresh(worker, nonce, answer, self.gate.policy)

    async def _open_attested_stream(self, worker: Announcement) -> Any:
        """Open the inference stream to exactly the peer whose key the attestation report binds."""
        stream = await self.mesh.new_stream(worker.peer, PROTOCOL_ID, worker.addrs)
        remote = stream.muxed_conn.peer_id
        if remote != worker.peer:
            await stream.reset()
            raise AttestedPeerMismatch(f"stream reached {remote}, not the attested worker {worker.peer}")
        return stream

    async def _expire_workers(self) -> None:
        while True:
            await trio.sleep(1.0)
            for pid in self.table.expire():
                log.info("worker %s expired (no announcement)", ID(pid))

    def models(self) -> list[dict[str, Any]]:
        """Entries for ``GET /v1/models``: worker count, price range and, per worker, the verdict the gate
        would apply now (binding to the announcement included), never what the announcement claims."""
        by_model: dict[str, list[Announcement]] = {}
        for a in self.table.live():
            by_model.setdefault(a.model, []).append(a)
        out = []
        for model, workers in sorted(by_model.items()):
            verdicts = [self.gate.describe(w) if self.gate else {"worker": w.peer.to_base58(), "verified": False,
                                                                 "reasons": ["this node is not a requester"]}
                        for w in workers]
            out.append({
                "id": model, "object": "model", "created": 0, "owned_by": "cocoon-mesh",
                "cocoon": {
                    "workers": len(workers),
                    "verified_workers": sum(1 for v in verdicts if v["verified"]),
                    "synthetic": any(w.synthetic for w in workers),
                    "price_prompt": [min(w.price_prompt for w in workers), max(w.price_prompt for w in workers)],
                    "price_completion": [min(w.price_completion for w in workers),
                                         max(w.price_completion for w in workers)],
                    "attestation": verdicts,
                },
            })
        return out

    async def payments_status(self) -> dict[str, Any]:
        if self.payments is None:
            return {"enabled": False}
        return {"enabled": True, **await self.payments.status()}

    async def status(self) -> dict[str, Any]:
        return {
            "payments": await self.payments_status(),
            "version": __version__,
            "peer_id": self.peer_id.to_base58(),
            "addrs": self.mesh.listen_addrs() if self.mesh.host else [],
            "network": self.config.node.network,
            "uptime_s": round(time.time() - self.started_at, 1),
            "connected_peers": len(self.mesh.connected_peers()) if self.mesh.host else 0,
            "topic_peers": self.mesh.topic_peers(WORKERS_TOPIC) if self.mesh.pubsub else 0,
            "announcements": self.validator.stats(),
            "workers": [
                {"peer_id": a.peer.to_base58(), "model": a.model, "load": a.load, "max_concurrent": a.max_concurrent,
                 "price_prompt": a.price_prompt, "price_completion": a.price_completion,
                 "announced_tee_kind": a.tee_kind, "synthetic": a.synthetic, "seqno": a.seqno,
                 "expires_at": a.expires_at, "gate": self.gate.describe(a) if self.gate else None,
                 "addrs": list(a.addrs), "path": self.connectivity.path_to(a.peer)}  # how it is reached now
                for a in self.table.live()
            ],
            "connectivity": self.connectivity.summary(),
            "attestation": self.gate.summary() if self.gate else {},
            "worker": self.worker.status() if self.worker else None,
            "requester": {"completed": self.requester.completed, "failed": self.requester.failed,
                          "api_url": self.info.api_url if self.info else None} if self.requester else None,
        }

    def _write_info(self, info: NodeInfo) -> None:
        path = self.config.data_dir / NODE_INFO_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info.__dict__, fh)
        os.replace(tmp, path)


def read_node_info(data_dir: Any) -> dict[str, Any]:
    from pathlib import Path

    with open(Path(data_dir) / NODE_INFO_FILE) as fh:
        data: dict[str, Any] = json.load(fh)
    return data
