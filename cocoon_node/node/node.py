"""The node: one Trio process wiring mesh, attestation, inference and payments, and serving its HTTP surfaces.

Roles are flags: a worker sells inference, a requester buys it for local clients, a node may be both.
Every node relays gossip and serves the DHT whatever its roles, which is what keeps the mesh symmetric.
The HTTP surfaces (the OpenAI API, the admin endpoint) are handed in as :class:`HttpSurfaces`
(:class:`cocoon_node.api.NodeHttp` in every real process): the api package sits above this one, so the node
names no web framework and a test can drive the same apps without a node.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, cast

import trio
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from cocoon_node import __version__
from cocoon_node.config import Config
from cocoon_node.inference import PROTOCOL_ID, AdmissionQueue, Requester, WarmStreams
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
    model_topic,
)
from cocoon_node.mesh.announce import MODEL_TOPIC_PREFIX
from cocoon_node.mesh.liveness import WorkerLiveness
from cocoon_node.mesh.topics import TopicRendezvous
from cocoon_node.node.attest import AttestationGate, AttestationNamespace, policy_from_config
from cocoon_node.node.datadir import secure_data_dir
from cocoon_node.node.faces import (
    NODE_INFO_FILE,
    AttestedPeerMismatch,
    HttpSurfaces,
    NodeInfo,
    TaskStatus,
    write_node_info,
)
from cocoon_node.node.hardware import hardware_dict
from cocoon_node.node.models_view import model_entries
from cocoon_node.node.payments import CHANNEL_PROTOCOL_ID, PaymentsRole
from cocoon_node.node.worker import WorkerRole, build_backend
from cocoon_node.observe import DashboardAccess, NodeMetrics, ObservedRequester, observed_surface
from cocoon_node.observe.startup import StartupFailure, chain_unreachable, is_port_in_use, port_in_use
from cocoon_node.payments.receipt_store import ReceiptStore

log = logging.getLogger(__name__)

class _PolicySink:
    """Where a node without a gate (a worker) keeps the registry-merged policy it reads for the channel rules."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def set_policy(self, policy: Any) -> None:
        self.policy = policy


class Node:
    def __init__(self, config: Config, key_pair: KeyPair | None = None, *, http: HttpSurfaces,
                 transport_factory: TransportFactory | None = None) -> None:
        self.config = config
        self._http = http
        self._transport_factory = transport_factory  # None in production; netsim injects its shaped TCP
        secure_data_dir(config.data_dir)  # 0700, everything in it 0600: refused otherwise, like the identity key
        self.key_pair = key_pair or load_or_create_identity(config.data_dir)
        self.validator = AnnouncementValidator()
        self.table = WorkerTable()
        self.validator.on_accept = self._on_announcement
        self.mesh = Mesh(self.key_pair, self._mesh_settings(), namespaces=[AttestationNamespace()],
                         topic_validators={WORKERS_TOPIC: self.validator},
                         prefix_validators={MODEL_TOPIC_PREFIX: self.validator})
        self._follow: trio.MemorySendChannel[str] | None = None  # models seen on the directory, to join
        self.connectivity = Connectivity(self.mesh, self._connectivity_settings())  # NAT traversal (issue 14)
        self.connectivity.install()
        self.worker: WorkerRole | None = None
        self.requester: Requester | None = None
        self.gate: AttestationGate | None = None
        self.receipts: ReceiptStore | None = None  # the requester's checked receipts (issue 16)
        self.payments: PaymentsRole | None = None
        self.liveness: WorkerLiveness | None = None
        self.info: NodeInfo | None = None
        self.started_at = time.time()
        self.metrics = NodeMetrics(offered_models=lambda: {a.model for a in self.table.live()})
        self.ready = trio.Event()

    def _mesh_settings(self) -> MeshSettings:
        n = self.config.node
        return MeshSettings(listen_addrs=n.listen, bootstrap=n.bootstrap, max_connections=n.max_connections,
                            target_peers=n.target_peers, local_cluster=n.local_cluster, topics=self._topics(),
                            heartbeat_interval=n.gossip_heartbeat, gossip_degree=n.gossip_degree,
                            gossip_degree_low=max(1, n.gossip_degree * 2 // 3), gossip_degree_high=2 * n.gossip_degree,
                            peer_cache=self.config.data_dir / "peers.json",
                            transport_factory=self._transport_factory)

    def _connectivity_settings(self) -> ConnectivitySettings:
        from cocoon_node.mesh import RelayLimits

        n = self.config.node
        limits = RelayLimits(max_reservations=n.relay_max_reservations, max_circuits=n.relay_max_circuits,
                             circuit_bytes=n.relay_circuit_bytes, circuit_duration=n.relay_circuit_duration)
        return ConnectivitySettings(reachability=n.reachability, relay=n.relay, hole_punching=n.hole_punching,
                                    relay_reservations=n.relay_reservations if self.config.worker.enabled else 0,
                                    relay_limits=limits)

    def _topics(self) -> tuple[str, ...]:
        """Announcement topics joined at start (a worker joins its model's own; see WorkerRole).

        A requester that names the models it buys follows only their topics; one that does not, and a node
        with no role (a relay), follow the directory, and a requester then joins each model's topic it sees
        there (:meth:`_follow_models`)."""
        cfg = self.config
        if cfg.requester.enabled and cfg.requester.models:
            return tuple(model_topic(m) for m in cfg.requester.models)
        if cfg.requester.enabled or not cfg.worker.enabled:
            return (WORKERS_TOPIC,)
        return ()

    def _on_announcement(self, announcement: Announcement) -> None:
        if self.table.update(announcement):
            # Where to dial it: the attestation lookup asks the worker its key names first (it holds its own
            # report), which needs an address when we are not connected to it (most workers, at scale).
            self.mesh.remember_addrs(announcement.peer, announcement.addrs, ttl=announcement.expires_at)
            if self.gate is not None:
                self.gate.prefetch(announcement)  # verify in the background, before any request needs it
            if self.requester is not None:
                self.requester.workers_changed()  # a queued request may fit on it now
        topic = model_topic(announcement.model)
        if self._follow is not None and topic not in self.mesh.subscribed and self.mesh.pubsub is not None:
            try:
                self._follow.send_nowait(topic)
            except trio.WouldBlock:
                pass  # seen again on its next directory announcement

    async def _follow_models(self, recv: trio.MemoryReceiveChannel[str]) -> None:
        """Join each model topic we want, and keep looking for its peers while it has none."""
        rendezvous = TopicRendezvous(self.mesh)
        followed: set[str] = set()
        async with trio.open_nursery() as nursery:
            async for topic in recv:
                if topic in followed:
                    continue
                followed.add(topic)
                await self.mesh.subscribe(topic)
                nursery.start_soon(rendezvous.seek, topic)

    @property
    def peer_id(self) -> ID:
        return self.mesh.peer_id

    async def run(self, *, task_status: TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        secure_data_dir(cfg.data_dir)  # again: the files may have changed since the node was built
        paid = cfg.payments.enabled and (cfg.worker.enabled or cfg.requester.enabled)
        async with AsyncExitStack() as stack:
            if paid:
                try:
                    self.payments = await stack.enter_async_context(PaymentsRole.open(cfg, self.key_pair))
                except Exception as exc:  # the chain it cannot reach is a start-up failure with its fix
                    raise chain_unreachable(cfg.payments.chain_url, exc) or exc from exc
            await stack.enter_async_context(self.mesh.start())
            if self.mesh.lookup is not None:
                self.mesh.lookup.on_lookup = self.metrics.dht_lookup
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
                from cocoon_node.payments import RegistryPolicyRefresher
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
        # A requester joins the topics of the models it buys (looking for their peers through the DHT); a
        # directory follower (a requester that names no model, a node with no role: a relay, a bootstrap node)
        # joins every model's topic it sees there, so it also forwards them: behind NATs, or in a sparse mesh,
        # such a node may be the only path between a model's workers and its buyers.
        bought = cfg.requester.models if cfg.requester.enabled else ()
        if bought or WORKERS_TOPIC in self._topics():
            send, recv = trio.open_memory_channel[str](64)
            nursery.start_soon(self._follow_models, recv)
            for model in bought:
                send.send_nowait(model_topic(model))
            if not bought:
                self._follow = send
                for seen in {a.model for a in self.table.live()}:
                    send.send_nowait(model_topic(seen))
        if cfg.requester.enabled:
            roles.append("requester")
            self.gate = AttestationGate(self.mesh, policy_from_config(cfg), direct=self._report_from_worker)
            nursery.start_soon(self.gate.run_prefetcher)
            for announcement in self.table.live():
                self.gate.prefetch(announcement)
            if cfg.policy.registry_address and pay is not None:
                from cocoon_node.payments import RegistryPolicyRefresher
                refresher = RegistryPolicyRefresher(self.gate, pay.chain, cfg.policy.registry_address,
                                                    self.gate.policy, cfg.policy.registry_refresh)
                if pay.channels is not None:
                    pay.channels.rules = refresher.channel_rules  # no deploy the network's workers would refuse
                nursery.start_soon(refresher.run)
            if pay is not None and pay.channels is not None:
                nursery.start_soon(partial(pay.channels.watch, poll_interval=cfg.payments.watch_interval))
                if cfg.payments.payer_idle_close > 0:
                    nursery.start_soon(partial(pay.close_idle, self._open_peer_stream, cfg.payments.payer_idle_close,
                                               poll=cfg.payments.watch_interval))
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
                admission=AdmissionQueue(max_queue=cfg.requester.queue_length, max_wait=cfg.requester.queue_wait),
                token_counter=pay.tokenizers.counter if pay else None,
                reports=self.gate.attested_report if self.gate is not None else None,  # receipts (issue 16)
            )
            self.receipts = ReceiptStore(cfg.data_dir / "receipts.db")
            # The API sees the requester through a wrapper that times its events (cocoon_node/observe).
            app = self._http.requester_app(cast(Requester, ObservedRequester(self.requester, self.metrics)),
                                           api_key=cfg.requester.api_key, models=self.models,
                                           channels=self.payments_status, attestation=self.fresh_attestation,
                                           receipts=self.receipts)
            api_access = DashboardAccess(cfg.requester.api_key)
            surface = observed_surface(app, metrics=self.metrics, status=self.status, access=api_access,
                                       models=self.models, listener="requester API")
            api_url = await self._listen(nursery, surface, cfg.requester.api_host, cfg.requester.api_port,
                                         "--api-port")
        nursery.start_soon(self._expire_workers)
        if cfg.node.bootstrap and cfg.node.bootstrap_timeout > 0:
            nursery.start_soon(self._require_a_peer, cfg.node.bootstrap_timeout)
        assert self.mesh.host is not None
        self.liveness = WorkerLiveness(self.mesh.host.get_network(), self.mesh.connected_peers, self.table)
        nursery.start_soon(self.liveness.run)
        token = secrets.token_hex(16)
        admin_access = DashboardAccess(token)
        admin = observed_surface(self._http.admin_app(self.status, token, close_channels=self.close_channels),
                                 metrics=self.metrics, status=self.status, access=admin_access, models=self.models,
                                 listener="admin")
        admin_url = await self._listen(nursery, admin, cfg.node.admin_host, cfg.node.admin_port, "--admin-port")
        # The dashboard lives on the API port of a requester, on the admin listener otherwise.
        if api_url is not None:
            dashboard = api_url + ("/dashboard" if api_access.open else
                                   f"/dashboard/login?once={api_access.one_time_link()}")
        else:
            dashboard = f"{admin_url}/dashboard/login?once={admin_access.one_time_link()}"
        log.info("dashboard: %s (a one-time link: it works once, for 10 minutes)", dashboard)
        self.info = NodeInfo(self.peer_id.to_base58(), self.mesh.listen_addrs(), admin_url, token, api_url,
                             os.getpid(), roles, dashboard)
        self._write_info(self.info)
        self.ready.set()
        log.info("node %s up: %s roles=%s api=%s", self.peer_id, self.mesh.listen_addrs(), roles, api_url)
        task_status.started(self.info)
        try:
            await trio.sleep_forever()
        finally:
            (cfg.data_dir / NODE_INFO_FILE).unlink(missing_ok=True)

    async def _require_a_peer(self, timeout: float) -> None:
        """A node whose bootstrap peers all stay unreachable for ``timeout`` seconds after start stops with a
        cause (the mesh keeps re-dialling until then; once it has met a peer this check is over for good)."""
        with trio.move_on_after(timeout):
            while not self.mesh.connected_peers():
                await trio.sleep(0.5)
            return
        peers = ", ".join(self.config.node.bootstrap)
        raise StartupFailure(f"no bootstrap peer reachable after {timeout:.0f} s ({peers}): check --bootstrap "
                             "(a running node prints its address as `addrs` in its ready line)")

    def _reachable_workers(self) -> list[Announcement]:
        """Live workers we have a way to: an announced address (direct or relay circuit) or a connection.
        A worker behind a NAT announces nothing dialable until it holds a relay reservation."""
        connected = set(self.mesh.connected_peers()) if self.mesh.host else set()
        return [a for a in self.table.live() if a.addrs or a.peer in connected]

    async def shutdown_gracefully(self) -> None:
        """Before cancelling everything. Payment channels stay open (the next start resumes them) unless
        ``payments.close_on_shutdown``: then they are closed while the mesh is still up, so workers can co-sign
        cooperative closes (bounded; whatever is left is closed unilaterally afterwards)."""
        if self.payments is not None and self.config.payments.close_on_shutdown:
            with trio.move_on_after(30):
                await self.payments.close_channels(self._open_peer_stream)

    async def close_channels(self, peer: str | None = None) -> dict[str, Any]:
        """``POST /channels/close`` on the admin listener: close our channels to ``peer`` (None: all) now."""
        if self.payments is None or self.payments.channels is None:
            return {"closed": [], "error": "this node is not a paying requester"}
        if peer is not None and peer not in self.payments.channels.channels:
            return {"closed": [], "error": f"no open channel to {peer}"}
        with trio.move_on_after(120):
            return {"closed": await self.payments.close_peers(self._open_peer_stream,
                                                              None if peer is None else [peer])}
        return {"closed": [], "error": "closing took longer than 120 s; the watcher finishes what was begun"}

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

    async def _report_from_worker(self, peer_id: bytes) -> bytes | None:
        """A listed worker's report asked of the worker itself, fresh evidence checked (the gate's fallback)."""
        from cocoon_node.node.fresh_attest import PROTOCOL_ID as ATTEST_ID
        from cocoon_node.node.fresh_attest import report_from_worker

        a = self.table.get(peer_id)
        if a is None or self.gate is None:
            return None
        return await report_from_worker(lambda: self.mesh.new_stream(a.peer, ATTEST_ID, a.addrs), peer_id,
                                        self.gate.policy)

    async def _open_attested_stream(self, worker: Announcement) -> Any:
        """Open the inference stream to exactly the peer whose key the attestation report binds."""
        try:
            stream = await self.mesh.new_stream(worker.peer, PROTOCOL_ID, worker.addrs)
        except Exception:
            if self.liveness is not None:
                self.liveness.suspect(worker.peer)  # a dead worker is delisted now, not at its TTL
            raise
        remote = stream.muxed_conn.peer_id
        if remote != worker.peer:
            await stream.reset()
            raise AttestedPeerMismatch(f"stream reached {remote}, not the attested worker {worker.peer}")
        return stream

    async def _listen(self, nursery: trio.Nursery, app: Any, host: str, port: int, flag: str) -> str:
        """Serve ``app``; a port in use is a start-up failure naming ``flag``."""
        try:
            url: str = await nursery.start(self._http.serve, app, host, port)
        except BaseException as exc:
            if is_port_in_use(exc):
                raise port_in_use(host, port, flag) from exc
            raise
        return url

    async def _expire_workers(self) -> None:
        while True:
            await trio.sleep(1.0)
            for pid in self.table.expire():
                log.info("worker %s expired (no announcement)", ID(pid))

    def models(self, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Entries for ``GET /v1/models`` (see :func:`model_entries`)."""
        return model_entries(self.table.live(), self.gate, self.requester, filters)

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
            "topics": {t: self.mesh.topic_peers(t) for t in sorted(self.mesh.subscribed)} if self.mesh.pubsub else {},
            "gossip": self.mesh.gossip_stats() if self.mesh.gossipsub else {},
            "announcements": self.validator.stats(),
            "attestation_verdicts": dict(self.gate.verdicts) if self.gate else {},
            "attestation_fetches": self.gate.counters() if self.gate else {},
            "dht": dict(vars(self.mesh.lookup.stats)) if self.mesh.lookup is not None else {},
            "liveness": ({"probes": self.liveness.probes, "delisted": self.liveness.delisted}
                         if self.liveness else {}),
            "workers": [
                {"peer_id": a.peer.to_base58(), "model": a.model, "load": a.load, "max_concurrent": a.max_concurrent,
                 "price_prompt": a.price_prompt, "price_completion": a.price_completion,
                 "announced_tee_kind": a.tee_kind, "synthetic": a.synthetic, "seqno": a.seqno,
                 "expires_at": a.expires_at, "gate": self.gate.describe(a) if self.gate else None,
                 "hardware": hardware_dict(a),
                 "addrs": list(a.addrs), "path": self.connectivity.path_to(a.peer),  # how it is reached now
                 **self._latency(a)}
                for a in self.table.live()
            ],
            "connectivity": self.connectivity.summary(),
            "attestation": self.gate.summary() if self.gate else {},
            "worker": self.worker.status() if self.worker else None,
            "requester": {"completed": self.requester.completed, "failed": self.requester.failed,
                          "queue": self.requester.admission.stats(),
                          "api_url": self.info.api_url if self.info else None} if self.requester else None,
        }

    def _latency(self, a: Announcement) -> dict[str, float | None]:
        """What this requester measured of the worker (smoothed), None before it answered us."""
        rep = self.requester.selector.reputations.get(a.peer_id) if self.requester else None
        if rep is None or not rep.successes:
            return {"ttft_ms": None, "tokens_per_second": None}
        return {"ttft_ms": round(rep.ttft_ms, 1), "tokens_per_second": round(rep.tokens_per_second, 1)}

    def _write_info(self, info: NodeInfo) -> None:
        write_node_info(self.config.data_dir, info)
