"""Record lookups for the strict Kademlia DHT: answer from the first peer that holds a valid record.

Why not ``KadDHT.get_value`` (py-libp2p 0.8.1)? Profiling a lookup at 25-50 nodes showed its shape costs far
more than the answer needs:

* it first runs a complete FIND_NODE walk (``find_closest_peers_network``: at least one round of ALPHA=10
  queries, often several), each response carrying ~20 signed peer records that are verified one by one;
* only then does it send GET_VALUE to every peer of the resulting ~20 closest, and with its default
  ``quorum=0`` it waits for all of them (10 s per peer that does not answer), even though the first valid
  record already settles a lookup for our namespaces;
* before returning it stores the record at every close peer that lacked it ("entry correction"), so the
  caller also waits for those PUT_VALUE round trips.

A lookup here is the Kademlia value walk itself, done with GET_VALUE (whose replies carry closer peers too):
it asks the peer the key names first when there is one (``/cocoon-att/<peer id>``: the worker holds its own
report), then the closest peers we are already connected to (no dial, no handshake), one RPC at first and
up to ``alpha`` in flight when replies are slow, fail or come without the record (hedging, see
:meth:`RecordLookup._walk`), and returns as soon as ``quorum`` records have passed the namespace validator.
It stops, as Kademlia does, when the ``k`` closest peers it knows of have all been asked. Every record is
validated against the key we asked for before it is returned or cached; a record that fails is dropped.
Only when no peer answered at all (empty routing table, every RPC failing) does it fall back to
py-libp2p's own ``get_value``, whose answer is validated again.

Our RPC also leaves out the optional signed sender record (the responder would verify it per request) and
writes the request in one frame; a cancelled or failed RPC resets its stream (the responder's handler
would otherwise keep one of its 12 inbound slots until the connection closed).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

import multiaddr
import trio
import varint
from libp2p.abc import IHost, INetStream
from libp2p.kad_dht.common import MAX_DHT_MESSAGE_SIZE
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID
from libp2p.records.validator import NamespacedValidator
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from cocoon_node.mesh.kad_protocol import COCOON_KAD_PROTOCOL
from cocoon_node.mesh.kad_walk import Walk as _Walk

log = logging.getLogger(__name__)

# How long addresses learned from a lookup reply stay in the peerstore (py-libp2p uses 600 s for the same).
CLOSER_PEER_ADDR_TTL = 600
# Hedging: the running mean of RPC times starts here and moves by this weight per reply; the wait before
# asking one more peer is three of those, kept between HEDGE_MIN and HEDGE_MAX (when every peer is slow, as
# across busy processes, the walk must not turn sequential: at most HEDGE_MAX passes without a new RPC).
RPC_TIME_START = 0.05
RPC_TIME_WEIGHT = 0.2
HEDGE_MIN = 0.02
HEDGE_MAX = 0.5
# Records a ``newest`` lookup collects when no peer named by the key can be asked.
NEWEST_QUORUM = 3
# Network lookups slower than this (seconds) are logged at INFO, as are misses and cancelled ones.
SLOW_LOOKUP = 1.0

# What one GET_VALUE RPC reports: the peer, the record value it returned (or None), the closer peers it
# named (None when the RPC failed).
_Reply = tuple[ID, bytes | None, list[ID] | None]


@dataclass
class LookupStats:
    """Counters since start: where lookups were answered, and what they cost on the network."""

    lookups: int = 0
    local_hits: int = 0
    cache_hits: int = 0
    network_hits: int = 0
    fallbacks: int = 0
    misses: int = 0
    rpcs: int = 0
    rpc_failures: int = 0
    rejected_records: int = 0


class RecordLookup:
    """Validated DHT reads for one host: local store, a short-lived cache, then a fast network walk."""

    def __init__(self, host: IHost, dht: KadDHT, validator: NamespacedValidator, *, alpha: int = 3, k: int = 20,
                 quorum: int = 1, rpc_timeout: float = 5.0, cache_ttl: float = 30.0,
                 cache_size: int = 1024) -> None:
        self._host = host
        self._dht = dht
        self._validator = validator
        self.alpha = alpha
        self.k = k
        self.quorum = quorum
        self.rpc_timeout = rpc_timeout
        self.cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._rpc_time = RPC_TIME_START
        self.stats = LookupStats()
        self.on_lookup: Callable[[float], None] | None = None

    # ----- public --------------------------------------------------------------------------------------
    async def get(self, key: str, *, avoid: Collection[ID] = (), newest: bool = False) -> bytes | None:
        """The best valid record for ``key``, or None. Never returns a record its namespace rejects.

        ``avoid``: peers the walk must not ask (the sparse-topology test forbids asking a record's owner, so
        the record has to be found where the put stored it).
        Its duration goes to ``on_lookup`` when set (the node's metrics; cancelled lookups included).
        """
        started = time.monotonic()
        try:
            return await self._get(key, avoid=avoid, newest=newest)
        finally:
            if self.on_lookup is not None:
                self.on_lookup(time.monotonic() - started)

    async def _get(self, key: str, *, avoid: Collection[ID] = (), newest: bool = False) -> bytes | None:
        """:meth:`get` without the timing.

        ``newest``: skip the shortcuts (local store, cache, first valid reply) and pick the newest among our
        copies and the network's, waiting for the peer the key names when it is reachable (it holds its own
        newest record): a valid but older record some node still serves would otherwise win.
        """
        self.stats.lookups += 1
        if newest:
            return await self._newest(key, frozenset(avoid))
        local = self._from_local_store(key)
        if local is not None:
            self.stats.local_hits += 1
            return local
        cached = self._from_cache(key)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        found, answered = await self._walk(key, avoid=frozenset(avoid))
        if found is None and not answered and not avoid:
            self.stats.fallbacks += 1
            found = await self._fallback(key)
        if found is None:
            self.stats.misses += 1
            return None
        self.stats.network_hits += 1
        self._remember(key, found)
        return found

    async def _newest(self, key: str, avoid: frozenset[ID]) -> bytes | None:
        local = self._from_local_store(key)
        found = [v for v in (local, self._from_cache(key)) if v is not None]
        walked, _ = await self._walk(key, avoid=avoid, newest=True)
        if walked is not None:
            found.append(walked)
        if not found:
            self.stats.misses += 1
            return None
        best = found[self._validator.select(key, found)] if len(found) > 1 else found[0]
        if local is not None and best != local:  # our store held an older copy: keep the newest instead
            self._dht.value_store.put(key.encode(), best)
        self._remember(key, best)
        return best

    def forget(self, key: str) -> None:
        """Drop ``key`` from the lookup cache (the DHT's own store is left alone)."""
        self._cache.pop(key, None)

    # ----- local answers ---------------------------------------------------------------------------------
    def _valid(self, key: str, value: bytes) -> bool:
        try:
            self._validator.validate(key, value)
        except Exception as exc:
            self.stats.rejected_records += 1
            log.debug("record for %s rejected: %s", key, exc)
            return False
        return True

    def _from_local_store(self, key: str) -> bytes | None:
        """Records put by us or stored at us by peers; re-validated, since they may have expired since."""
        key_bytes = key.encode()
        record = self._dht.value_store.get(key_bytes)
        if record is None or not record.value:
            return None
        if not self._valid(key, record.value):
            self._dht.value_store.remove(key_bytes)
            return None
        return bytes(record.value)

    def _from_cache(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        value, stored_at = entry
        if trio.current_time() - stored_at > self.cache_ttl or not self._valid(key, value):
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return value

    def _remember(self, key: str, value: bytes) -> None:
        if self.cache_ttl <= 0:
            return
        self._cache[key] = (value, trio.current_time())
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # ----- the network walk ------------------------------------------------------------------------------
    async def closest_peers(self, key: str) -> list[ID]:
        """The ``k`` peers closest to ``key`` that answered a complete walk (what a put stores at).

        The same GET_VALUE walk as a lookup (py-libp2p servers refuse FIND_NODE for keys that are not peer
        ids, and every ``/cocoon-att/<peer id>`` key is such a key; GET_VALUE replies carry the closer peers
        just the same), but it never stops early on a record: it ends, as Kademlia's does, once the ``k``
        closest peers it knows of have all been asked, and it asks ``alpha`` at a time from the start.
        """
        key_bytes = key.encode()
        walk = _Walk(target=hashlib.sha256(key_bytes).digest())
        me = self._host.get_id()
        connected = set(self._host.get_connected_peers())
        for peer in [*self._dht.routing_table.find_local_closest_peers(key_bytes, self.k), *connected]:
            if peer != me:
                walk.add(peer)
        if walk.candidates:
            await self._run_walk(key, walk, None, connected, [], complete=True)
        answered = sorted((d, p) for p, d in walk.candidates.items() if p in walk.asked and p not in walk.failed)
        return [p for _, p in answered[: self.k]]

    async def _walk(self, key: str, *, avoid: frozenset[ID] = frozenset(),
                    newest: bool = False) -> tuple[bytes | None, bool]:
        """Iterative GET_VALUE walk; returns (best valid record or None, whether any peer answered).

        Hedged fan-out: one RPC goes out first (to the peer the key names, else to the closest connected
        peer, which usually holds the record: a put stores it at the k closest peers). Another one joins,
        up to ``alpha`` in flight, whenever no reply has come within a few typical RPC times, an RPC fails,
        or a peer answers without the record. Starting all ``alpha`` at once tripled every lookup's work on
        the peers it touched for no gain in the common case (measured at 25 nodes in one process: p50 22 ms
        with three at once, 8 ms with one).
        """
        key_bytes = key.encode()
        walk = _Walk(target=hashlib.sha256(key_bytes).digest())
        me = self._host.get_id()
        connected = set(self._host.get_connected_peers())
        walk.failed.update(avoid)  # never asked: to the walk they are peers that are down
        for peer in [*self._dht.routing_table.find_local_closest_peers(key_bytes, self.k), *connected]:
            if peer != me:
                walk.add(peer)
        first = self._named_peer(key, connected)
        if first in avoid:
            first = None
        if first is not None:
            walk.add(first)
        if not walk.candidates:
            return None, False
        found: list[bytes] = []
        started, outcome = trio.current_time(), "cancelled"
        try:
            outcome = await self._run_walk(key, walk, first, connected, found, newest=newest)
        finally:
            elapsed = trio.current_time() - started
            if outcome != "found" or elapsed > SLOW_LOOKUP:
                # Visible at the default INFO level: misses and slow walks are what a busy network shows.
                log.info("DHT lookup %s: %s after %.2f s, asked %d peers (%d answered, %d failed)", key, outcome,
                         elapsed, len(walk.asked), walk.answered, len(walk.failed))
        if not found:
            return None, walk.answered > 0
        best = found[self._validator.select(key, found)] if len(found) > 1 else found[0]
        return best, True

    async def _run_walk(self, key: str, walk: _Walk, first: ID | None, connected: set[ID],
                        found: list[bytes], *, complete: bool = False, newest: bool = False) -> str:
        """The walk's RPC loop (see :meth:`_walk`); fills ``found`` and says "found" or "not found".

        ``complete``: walk until the k closest known peers have all been asked, whatever they hold.
        ``newest``: do not stop before the named peer ``first`` has replied (or, without one, before
        ``NEWEST_QUORUM`` records are in), so the newest record is among those found.
        """
        first_replied = first is None
        key_bytes, me = key.encode(), self._host.get_id()
        send, recv = trio.open_memory_channel[_Reply](math.inf)
        async with trio.open_nursery() as nursery:
            inflight = 0
            width = self.alpha if complete else 1  # RPCs allowed in flight; widens up to alpha (see the docstring)

            def launch() -> None:
                nonlocal inflight
                while inflight < width:
                    if first is not None and first not in walk.asked:
                        peer: ID | None = first
                    else:
                        peer = walk.next_peer(self.k, prefer=connected.__contains__)
                    if peer is None:
                        return
                    walk.asked.add(peer)
                    inflight += 1
                    nursery.start_soon(self._ask, peer, key_bytes, send)

            launch()
            while inflight:
                reply: _Reply | None = None
                with trio.move_on_after(self._hedge_delay()):
                    reply = await recv.receive()
                if reply is None:  # nothing back yet: ask one more peer alongside
                    width = min(self.alpha, width + 1)
                    launch()
                    continue
                peer, value, closer = reply
                inflight -= 1
                first_replied = first_replied or peer == first
                if closer is None:  # the RPC failed: the peer no longer counts among the closest
                    walk.failed.add(peer)
                else:
                    walk.answered += 1
                    for other in closer:
                        if other != me:
                            walk.add(other)
                if complete:  # a put's walk: values are not wanted (nor validated: that may be costly)
                    pass
                elif value is not None and self._valid(key, value):
                    found.append(value)
                    if not newest:
                        enough = len(found) >= self.quorum
                    else:
                        enough = first_replied if first is not None else len(found) >= NEWEST_QUORUM
                    if enough:
                        nursery.cancel_scope.cancel()  # the in-flight RPCs reset their streams
                        break
                else:
                    width = min(self.alpha, width + 1)
                launch()
        return "found" if found else "not found"

    def _named_peer(self, key: str, connected: set[ID]) -> ID | None:
        """The peer a key names in its last segment (``/cocoon-att/<peer id>``), when we can reach it.

        That peer stored its own record before putting it anywhere else, so it holds it even while its put
        is still under way or never reached the k closest peers (netsim scale: puts from busy pool processes
        time out, and a requester's walk then found nobody holding the report). Asking it first costs one
        RPC; whatever it answers is validated like any other reply, and the walk goes on without it.
        """
        try:
            peer = ID.from_base58(key.rsplit("/", 1)[-1])
        except Exception:
            return None
        if peer == self._host.get_id():
            return None
        if peer in connected:
            return peer
        try:
            return peer if self._host.get_peerstore().addrs(peer) else None
        except Exception:  # PeerStoreError: a peer we know nothing about (or the segment is not a peer id)
            return None

    def _hedge_delay(self) -> float:
        """How long to wait for a reply before asking one more peer: three typical RPC times, bounded."""
        return min(HEDGE_MAX, max(HEDGE_MIN, 3 * self._rpc_time))

    async def _ask(self, peer: ID, key_bytes: bytes, send: trio.MemorySendChannel[_Reply]) -> None:
        """One GET_VALUE RPC; reports (peer, record value or None, closer peers or None on failure)."""
        self.stats.rpcs += 1
        value: bytes | None = None
        closer: list[ID] | None = None
        try:
            started = trio.current_time()
            with trio.fail_after(self.rpc_timeout):
                reply = await self._get_value_rpc(peer, key_bytes)
            self._rpc_time += RPC_TIME_WEIGHT * (trio.current_time() - started - self._rpc_time)
            closer = self._closer_peers(reply)
            if reply.type == Message.MessageType.GET_VALUE and reply.HasField("record") and reply.record.value:
                value = bytes(reply.record.value)
        except Exception as exc:  # any transport failure (or py-libp2p ExceptionGroup): the peer failed
            self.stats.rpc_failures += 1
            log.debug("GET_VALUE to %s failed: %r", peer, exc)
        send.send_nowait((peer, value, closer))

    async def _get_value_rpc(self, peer: ID, key_bytes: bytes) -> Message:
        stream: INetStream = await self._host.new_stream(peer, [COCOON_KAD_PROTOCOL])
        ok = False
        try:
            request = Message()
            request.type = Message.MessageType.GET_VALUE
            request.key = key_bytes
            payload = request.SerializeToString()
            await stream.write(varint.encode(len(payload)) + payload)
            reply = Message()
            reply.ParseFromString(await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE))
            ok = True
            return reply
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await (stream.close() if ok else stream.reset())
                except Exception as exc:
                    log.debug("closing a DHT stream: %r", exc)

    def _closer_peers(self, reply: Message) -> list[ID]:
        """Peers the reply names as closer, remembering their addresses so they can be dialled."""
        peers: list[ID] = []
        store = self._host.get_peerstore()
        connected = set(self._host.get_connected_peers())
        for entry in reply.closerPeers[: self.k]:
            try:
                peer = ID(entry.id)
            except Exception:
                continue
            peers.append(peer)
            if entry.addrs and peer not in connected:
                addrs = []
                for raw in entry.addrs:
                    try:
                        addrs.append(multiaddr.Multiaddr(raw))
                    except Exception:
                        continue
                if addrs:
                    store.add_addrs(peer, addrs, CLOSER_PEER_ADDR_TTL)
        return peers

    async def _fallback(self, key: str) -> bytes | None:
        """py-libp2p's own lookup (FIND_NODE walk + GET_VALUE), validated once more on the way out."""
        try:
            value = await self._dht.get_value(key, quorum=self.quorum)
        except Exception as exc:
            log.debug("KadDHT get_value for %s failed: %r", key, exc)
            return None
        if value is None or not self._valid(key, value):
            return None
        return bytes(value)
