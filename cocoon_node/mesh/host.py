"""The libp2p host every node runs: Noise + yamux over TCP, identify and ping, GossipSub and Kademlia.

This is the one place that knows py-libp2p's construction details. The rest of the node sees a small
surface: publish/subscribe on topics, put/get of validated DHT records, and direct streams by protocol id.

Two py-libp2p defaults are unsafe for us and are overridden here: it offers plaintext and secio next to
Noise (we offer Noise only) and mplex next to yamux (we offer yamux only), and its DHT accepts records in
any namespace (we run it strict, with our own validators). GossipSub scoring weights default to zero; we
set real ones, and make their thresholds act (see :mod:`cocoon_node.mesh.scoring`).

Why gossip "did not arrive" in early trials: GossipSub only forwards a topic's messages through peers that
are subscribed to that topic. In a star whose hub (the bootstrap node) is not subscribed, nothing ever
crosses the hub, whatever the heartbeat. Every cocoon node therefore subscribes to the workers topic,
requester or not, so that every node relays; and each node dials a handful of peers beyond its bootstrap
(py-libp2p's auto-connector, fed by DHT routing-table refreshes), so the mesh does not hang on one hub.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream, ISubscriptionAPI, ITransport
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.records.validator import NamespacedValidator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from cocoon_node.mesh import kad_protocol
from cocoon_node.mesh._settings import MeshSettings as MeshSettings  # re-exported: the mesh's face for it
from cocoon_node.mesh._settings import TransportFactory as TransportFactory
from cocoon_node.mesh._shutdown import _only_shutdown_races, quiesce
from cocoon_node.mesh.dht_lookup import RecordLookup
from cocoon_node.mesh.dht_put import PutResult, RecordKeeper, RecordPutter
from cocoon_node.mesh.joining import dial_bootstrap, refresh_while_sparse, stay_joined
from cocoon_node.mesh.peer_cache import PeerCache
from cocoon_node.mesh.prompt_locks import install as install_prompt_locks
from cocoon_node.mesh.records import RecordNamespace, as_libp2p_validator
from cocoon_node.mesh.scoring import (
    ScoredGossipSub,
    ScoredPubsub,
    ScoredValidator,
    as_pubsub_validator,
    score_params,
)
from cocoon_node.mesh.task_index import install as install_task_index
from cocoon_node.mesh.tcp_addrs import install as install_tcp_addrs_fix
from cocoon_node.mesh.trimmer import ConnectionTrimmer
from cocoon_node.mesh.yamux_patch import install as install_yamux_patch

# Before any KadDHT exists: py-libp2p would otherwise serve and dial IPFS's /ipfs/kad/1.0.0 (kad_protocol.py).
kad_protocol.install()

# py-libp2p's yamux sends a WINDOW_UPDATE per read by default; its documented knob turns that off (an operator's
# own setting wins). yamux_patch.py credits like go-yamux and coalesces frame writes (pinned to py-libp2p 0.8.1).
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
install_yamux_patch()
# py-libp2p's service manager walks every task to find a new task's parent (task_index.py, pinned to 0.8.1).
install_task_index()
# trio.Lock yields even when free; on a loaded loop each of py-libp2p's per-frame locks then waits a whole run-queue
# pass with the lock held (prompt_locks.py, pinned to 0.8.1).
install_prompt_locks()

log = logging.getLogger(__name__)
install_tcp_addrs_fix()  # py-libp2p 0.8.1 lists closed listener sockets (tcp_addrs.py)

GOSSIPSUB_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]
DHT_PROTOCOL_PREFIX = TProtocol("/cocoon")

TopicValidator = ScoredValidator  # True/False, or IGNORE: dropped without counting against the forwarder
class Mesh:
    """One running libp2p host with pubsub and DHT; use :meth:`start` as an async context manager."""

    def __init__(
        self,
        key_pair: KeyPair,
        settings: MeshSettings,
        *,
        namespaces: Sequence[RecordNamespace] = (),
        topic_validators: dict[str, TopicValidator] | None = None,
        prefix_validators: dict[str, TopicValidator] | None = None,
    ) -> None:
        self.settings = settings
        self._key_pair = key_pair
        self._namespaces = list(namespaces)
        self._topic_validators = dict(topic_validators or {})
        # Topics joined later (a model's) take the validator of the longest prefix they start with.
        self._prefix_validators = dict(prefix_validators or {})
        self.host: IHost | None = None
        self.pubsub: ScoredPubsub | None = None
        self.gossipsub: ScoredGossipSub | None = None
        self.dht: KadDHT | None = None
        self.lookup: RecordLookup | None = None
        self.keeper: RecordKeeper | None = None
        self.trimmer: ConnectionTrimmer | None = None
        self._protectors: list[Callable[[], Iterable[ID]]] = []  # peers the trimmer never disconnects
        self._peer_cache: PeerCache | None = None
        self._nursery: trio.Nursery | None = None
        self.subscribed: set[str] = set()
        self.refreshes_skipped = 0  # start-up routing-table refreshes skipped for being well connected
        # Hooks for NAT traversal (issue 14, cocoon_node/mesh/connectivity.py); None: plain behaviour.
        self.address_filter: Callable[[list[multiaddr.Multiaddr]], list[multiaddr.Multiaddr]] | None = None
        self.dialer: Callable[[ID, Sequence[str]], Awaitable[None]] | None = None
        self.circuit_addrs: Callable[[], list[str]] | None = None  # py-libp2p's get_addrs() mangles these

    # ----- lifecycle -----------------------------------------------------------------------------------
    @asynccontextmanager
    async def start(self) -> AsyncIterator[Mesh]:
        """Bring the host up, join topics, dial bootstrap peers; tear everything down on exit."""
        settings = self.settings
        noise_key = create_x25519_key_pair()
        transport, transport_running = self._injected_transport()
        host = new_host(
            key_pair=self._key_pair,
            sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(self._key_pair, noise_privkey=noise_key.private_key)},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            connection_config=ConnectionConfig(
                max_connections=settings.max_connections,
                # py-libp2p's auto-connector dials from the peerstore towards the midpoint of the watermarks.
                high_watermark=min(2 * settings.target_peers, settings.max_connections),
                low_watermark=min(settings.target_peers, settings.max_connections),
                min_connections=min(settings.target_peers, settings.max_connections),
                dial_timeout=settings.dial_timeout,
            ),
            listen_addrs=[multiaddr.Multiaddr(a) for a in settings.listen_addrs],
            # QUIC (libp2p TLS 1.3 + native streams) next to TCP when a /quic-v1 listen address is given.
            enable_quic=any("/quic" in a for a in settings.listen_addrs),
            transports=[transport] if transport is not None else None,  # None: py-libp2p's own choice
            addrs_factory=self._advertise,  # issue 14: only addresses that work (identify, announcements)
        )
        gossipsub = ScoredGossipSub(
            protocols=GOSSIPSUB_PROTOCOLS,
            degree=settings.gossip_degree,
            degree_low=settings.gossip_degree_low,
            degree_high=settings.gossip_degree_high,
            # py-libp2p annotates it int, but only ever passes it to trio.sleep (fractions are fine).
            heartbeat_interval=settings.heartbeat_interval,  # type: ignore[arg-type]
            heartbeat_initial_delay=0.1,
            do_px=True,
            score_params=score_params(local_cluster=settings.local_cluster),
            eclipse_protection_enabled=not settings.local_cluster,
            max_messages_per_topic_per_second=50.0,
            # py-libp2p's "adaptive gossip" rescales the heartbeat as if its base were its own 120 s default:
            # once its health score drops below 0.7 (0.57-0.65 in a healthy 16-node loopback cluster) it sets
            # max(60, 0.75 * base) = 60 s, so the mesh was repaired and IHAVE gossip sent once a minute. We keep
            # the heartbeat we configure (and the standard D_lazy gossip fan-out).
            adaptive_gossip_enabled=False,
        )
        pubsub = ScoredPubsub(host, gossipsub, strict_signing=True, max_inbound_rpc_size=settings.max_inbound_rpc_size)
        validator = NamespacedValidator(
            {ns.namespace: as_libp2p_validator(ns) for ns in self._namespaces}, strict_validation=True
        )
        dht = KadDHT(
            host,
            DHTMode.SERVER,
            enable_random_walk=False,
            validator=validator,
            validator_changed=True,
            protocol_prefix=DHT_PROTOCOL_PREFIX,
            enable_providers=False,
            strict_validation=True,
        )
        self.host, self.pubsub, self.gossipsub, self.dht = host, pubsub, gossipsub, dht
        self.lookup = RecordLookup(host, dht, validator, alpha=settings.dht_alpha, k=settings.dht_k,
                                   rpc_timeout=settings.dht_rpc_timeout, cache_ttl=settings.dht_cache_ttl)
        putter = RecordPutter(host, dht, validator, self.lookup, rpc_timeout=settings.dht_rpc_timeout)
        self.keeper = RecordKeeper(putter, check_interval=settings.dht_check_interval,
                                   republish_interval=settings.dht_republish_interval)
        high = 2 * settings.target_peers if settings.trim_above is None else settings.trim_above
        self.trimmer = ConnectionTrimmer(host, gossipsub, pubsub, high=high, protectors=self._protectors)
        listen = [multiaddr.Multiaddr(a) for a in settings.listen_addrs]
        try:
            async with transport_running, self._run_services(host, pubsub, gossipsub, dht, listen):
                yield self
        except BaseException as exc:
            # py-libp2p's service manager can raise "Nursery is closed to new arrivals" when a connection
            # event lands while one of its services is halfway through stopping. It only ever happens on
            # the way out; anything else (or anything mixed with it) is re-raised untouched.
            if not _only_shutdown_races(exc):
                raise
            log.debug("ignored py-libp2p shutdown race: %r", exc)

    def _injected_transport(self) -> tuple[ITransport | None, AbstractAsyncContextManager[object]]:
        """The settings' injected transport and its context; (None, no-op) for py-libp2p's own transports."""
        if self.settings.transport_factory is None:
            return None, nullcontext()
        if any("/quic" in a for a in self.settings.listen_addrs):
            raise ValueError("an injected transport replaces py-libp2p's own, QUIC included: it cannot be combined "
                             "with a QUIC listen address")
        return self.settings.transport_factory(self.peer_id)

    @asynccontextmanager
    async def _run_services(
        self, host: IHost, pubsub: ScoredPubsub, gossipsub: ScoredGossipSub, dht: KadDHT,
        listen: list[multiaddr.Multiaddr],
    ) -> AsyncIterator[None]:
        settings = self.settings
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(host.run(listen_addrs=listen))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(gossipsub))
            await stack.enter_async_context(background_trio_service(dht))
            await pubsub.wait_until_ready()
            for topic, topic_validator in self._topic_validators.items():
                pubsub.set_topic_validator(topic, as_pubsub_validator(topic_validator, gossipsub), False)
            nursery = self._nursery = await stack.enter_async_context(trio.open_nursery())
            for topic in settings.topics:
                await self.subscribe(topic)
            if self.settings.peer_cache is not None:
                self._peer_cache = PeerCache(self.settings.peer_cache, host, self._dial_and_add,
                                             dial_timeout=self.settings.dial_timeout)
                nursery.start_soon(self._peer_cache.watch)
            await self._dial_bootstrap()
            nursery.start_soon(self._dial_cached_peers)
            nursery.start_soon(self._keep_connected)
            nursery.start_soon(self._stay_joined)
            if self.trimmer is not None and self.trimmer.high > 0:
                nursery.start_soon(self.trimmer.run)
            assert self.keeper is not None
            nursery.start_soon(self.keeper.run)
            try:
                yield
            finally:
                if self._peer_cache is not None:
                    self._peer_cache.save()
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await quiesce(host)

    # ----- identity and addresses -------------------------------------------------------------------------
    @property
    def peer_id(self) -> ID:
        return ID.from_pubkey(self._key_pair.public_key)

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (with /p2p/ID) we listen on (local tooling and bootstrap lists use these)."""
        assert self.host is not None
        suffix = f"/p2p/{self.peer_id.to_base58()}"
        return [str(a) if "/p2p/" in str(a) else f"{a}{suffix}" for a in self.host.get_transport_addrs()]

    def advertised_addrs(self) -> list[str]:
        """Full multiaddrs others can dial: what worker announcements carry (identify: the direct ones)."""
        assert self.host is not None
        return [str(a) for a in self.host.get_addrs()] + (self.circuit_addrs() if self.circuit_addrs else [])

    def _advertise(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        return list(candidates) if self.address_filter is None else self.address_filter(candidates)

    def connected_peers(self) -> list[ID]:
        assert self.host is not None
        return list(self.host.get_connected_peers())

    # ----- pubsub ------------------------------------------------------------------------------------------
    @staticmethod
    async def _drain(subscription: ISubscriptionAPI) -> None:
        """Read and drop a topic's delivered messages: their content is consumed by the topic validator (which
        sees every message once, before it is forwarded). Unread, py-libp2p's bounded delivery queue fills and
        every later message costs a "fail to deliver message to subscription" warning (formatted and written
        to stderr: measurable CPU in a netsim host pool)."""
        while True:
            await subscription.get()

    async def subscribe(self, topic: str, validator: TopicValidator | None = None) -> None:
        """Join ``topic`` now (a model's, once we serve or buy it); idempotent. ``validator`` replaces the one
        given at construction for this topic, if any."""
        assert self.pubsub is not None and self.gossipsub is not None and self._nursery is not None
        if validator is None and topic not in self._topic_validators:
            prefixes = sorted((p for p in self._prefix_validators if topic.startswith(p)), key=len)
            validator = self._prefix_validators[prefixes[-1]] if prefixes else None
        if validator is not None:
            self.pubsub.set_topic_validator(topic, as_pubsub_validator(validator, self.gossipsub), False)
        if topic in self.subscribed:
            return
        self.subscribed.add(topic)
        self._nursery.start_soon(self._drain, await self.pubsub.subscribe(topic))

    async def publish(self, topic: str | list[str], data: bytes) -> None:
        """Publish on one topic, or on several as one message (delivered once to a peer in more than one)."""
        assert self.pubsub is not None
        await self.pubsub.publish(topic, data)

    def gossip_stats(self) -> dict[str, int]:
        """Scoring at work: mesh peers pruned for a negative score, RPCs ignored from graylisted peers, stale
        relayed messages forgiven."""
        gs = self.gossipsub
        assert gs is not None
        return {"score_pruned": gs.score_pruned, "graylist_dropped": gs.graylist_dropped,
                "stale_forgiven": getattr(gs.scorer, "forgiven", 0)}

    def topic_peers(self, topic: str) -> int:
        assert self.pubsub is not None
        return len(self.pubsub.peer_topics.get(topic, ()))

    def protect(self, source: Callable[[], Iterable[ID]]) -> None:
        """Never close the connections of the peers ``source()`` names to trim the peer count (asked at each
        trim round): relays we hold a reservation on, peers reserved on us."""
        self._protectors.append(source)

    def topic_peer_ids(self, topic: str) -> set[ID]:
        """Connected peers subscribed to ``topic``."""
        assert self.pubsub is not None
        return set(self.pubsub.peer_topics.get(topic, ()))

    # ----- DHT ------------------------------------------------------------------------------------------
    async def put_record(self, key: str, value: bytes) -> PutResult:
        """Store a record here and at the k peers closest to its key, and keep it there (re-puts).

        See :mod:`cocoon_node.mesh.dht_put` for why this is not py-libp2p's ``KadDHT.put_value``.
        """
        assert self.keeper is not None
        return await self.keeper.put(key, value)

    async def get_record(self, key: str, *, avoid: Sequence[ID] = (), newest: bool = False) -> bytes | None:
        """A valid record for ``key`` (local store, recent lookups, then the network), or None.

        Only records that pass the key's namespace validator are ever returned; see :class:`RecordLookup`
        for why this is not py-libp2p's ``KadDHT.get_value``. ``avoid``: peers the walk must not ask.
        ``newest`` compares our copies with the network's and waits for the peer the key names, for when a
        stale copy must not win.
        """
        assert self.lookup is not None
        return await self.lookup.get(key, avoid=avoid, newest=newest)

    # ----- direct streams ------------------------------------------------------------------------------
    def set_stream_handler(self, protocol: str, handler: Callable[[INetStream], Awaitable[None]]) -> None:
        assert self.host is not None
        self.host.set_stream_handler(TProtocol(protocol), handler)

    async def new_stream(self, peer: ID, protocol: str, addrs: Sequence[str] = ()) -> INetStream:
        """Open a stream to ``peer``; dials ``addrs`` first if not yet connected."""
        assert self.host is not None
        if addrs and peer not in self.host.get_connected_peers():
            if self.dialer is not None:  # issue 14: direct addresses first, then through relays
                await self.dialer(peer, addrs)
            else:
                await self.host.connect(PeerInfo(peer, [multiaddr.Multiaddr(a) for a in addrs]))
        return await self.host.new_stream(peer, [TProtocol(protocol)])

    def remember_addrs(self, peer: ID, addrs: Sequence[str], *, ttl: int) -> None:
        """Add a peer's announced direct addresses to the peerstore until ``ttl`` (unix seconds); bad ones and
        relay circuits skipped (cut at its first ``/p2p/``, a circuit would read as the relay's own address;
        :meth:`new_stream` dials circuits through the connectivity dialer)."""
        if self.host is None or peer == self.peer_id:
            return
        maddrs = []
        for addr in addrs:
            if "/p2p-circuit" in addr:
                continue
            try:
                maddrs.append(multiaddr.Multiaddr(addr.split("/p2p/")[0]))
            except Exception:
                continue
        if maddrs:
            self.host.get_peerstore().add_addrs(peer, maddrs, max(1, ttl - int(time.time())))

    async def connect(self, addr: str) -> ID:
        assert self.host is not None
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        return info.peer_id

    # ----- internals ------------------------------------------------------------------------------------
    async def _dial_bootstrap(self) -> None:
        assert self.host is not None and self.dht is not None
        await dial_bootstrap(self.host, self.settings.bootstrap, self.connect, self.dht.add_peer,
                             self.settings.dial_timeout)

    async def _stay_joined(self) -> None:
        assert self.host is not None

        async def rejoin() -> None:
            await self._dial_bootstrap()
            await self._dial_cached_peers()

        await stay_joined(self.host, rejoin)

    async def _dial_cached_peers(self) -> None:
        if self._peer_cache is not None:
            await self._peer_cache.dial_all()

    async def _dial_and_add(self, addr: str) -> None:
        peer = await self.connect(addr)
        assert self.dht is not None
        await self.dht.add_peer(peer)

    async def _keep_connected(self) -> None:
        assert self.dht is not None and self.host is not None

        def skipped() -> None:
            self.refreshes_skipped += 1

        await refresh_while_sparse(self.dht, self.host, self.settings.target_peers, skipped)
