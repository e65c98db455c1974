"""DHT writes that land where lookups end: at the ``k`` peers closest to the key, and kept there.

Why not ``KadDHT.put_value`` (py-libp2p 0.8.1)? It finds the closest peers with a FIND_NODE walk, and
py-libp2p servers refuse FIND_NODE for a key that is not a peer id ("FIND_NODE key is not a valid PeerId":
longer than 50 bytes and not a multihash). Every ``/cocoon-att/<peer id>`` key is such a key, so the walk
never got past the putter's own routing table and the record was stored at whichever neighbours it had: a
lookup found it only by asking the worker the key names. Here the walk is the GET_VALUE walk of
:meth:`RecordLookup.closest_peers` (servers answer GET_VALUE for any key up to 128 bytes, with their closest
peers), and the record goes to each of the ``k`` closest peers that answered with one PUT_VALUE.

:class:`RecordKeeper` re-puts our own records on a schedule, because the k closest peers change: at start a
node's routing table holds little more than its bootstrap peers (the first put lands near them), and later
peers join closer to the key or the holders leave. It checks every ``check_interval`` whether the k closest
peers it now knows of are the ones it stored at, re-puts when not (at most once per ``check_interval``),
and re-puts regardless every ``republish_interval`` (Kademlia's periodic republish, shortened for a network
whose records live an hour).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import trio
import varint
from libp2p.abc import IHost, INetStream
from libp2p.kad_dht.common import MAX_DHT_MESSAGE_SIZE
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID
from libp2p.records.record import make_signed_put_record
from libp2p.records.validator import NamespacedValidator
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from cocoon_node.mesh.dht_lookup import RecordLookup
from cocoon_node.mesh.kad_protocol import COCOON_KAD_PROTOCOL

log = logging.getLogger(__name__)


@dataclass
class PutStats:
    puts: int = 0
    stored: int = 0  # PUT_VALUE RPCs a peer acknowledged
    refused: int = 0  # PUT_VALUE RPCs that failed or were refused
    reputs: int = 0  # puts the keeper made again


@dataclass(frozen=True)
class PutResult:
    """Where a put went: the closest peers the walk found, and those of them that acknowledged it."""

    closest: tuple[ID, ...] = ()
    stored: frozenset[ID] = frozenset()


@dataclass
class _Kept:
    value: bytes
    last: PutResult = field(default_factory=PutResult)
    last_put: float = -1e9


@dataclass
class RecordPutter:
    """Store a record locally and at the ``k`` closest peers the GET_VALUE walk finds."""

    host: IHost
    dht: KadDHT
    validator: NamespacedValidator
    lookup: RecordLookup
    rpc_timeout: float = 5.0
    stats: PutStats = field(default_factory=PutStats)

    async def put(self, key: str, value: bytes) -> PutResult:
        """Validate, store locally, then at the closest peers; says where it went.

        Raises the namespace's error (a ``ValueError``) when the record is invalid, or when it would replace
        a newer record we hold; a peer that cannot be reached or refuses it is only counted.
        """
        self.validator.validate(key, value)
        key_bytes = key.encode()
        old = self.dht.value_store.get(key_bytes)
        if old is not None and old.value != value and self.validator.select(key, [value, old.value]) != 0:
            raise ValueError(f"refusing to replace the newer record held for {key}")
        self.dht.value_store.put(key_bytes, value)
        self.stats.puts += 1
        closest = await self.lookup.closest_peers(key)
        stored: set[ID] = set()
        limiter = trio.CapacityLimiter(max(1, self.lookup.alpha))

        async def store(peer: ID) -> None:
            async with limiter:
                if await self._store_at(peer, key_bytes, value):
                    stored.add(peer)

        async with trio.open_nursery() as nursery:
            for peer in closest:
                nursery.start_soon(store, peer)
        log.debug("put %s: stored at %d of the %d closest peers", key, len(stored), len(closest))
        return PutResult(tuple(closest), frozenset(stored))

    async def _store_at(self, peer: ID, key_bytes: bytes, value: bytes) -> bool:
        """One PUT_VALUE RPC, written in one frame; True when the peer echoed the key (it stored it)."""
        stream: INetStream | None = None
        ok = False
        try:
            with trio.fail_after(self.rpc_timeout):
                stream = await self.host.new_stream(peer, [COCOON_KAD_PROTOCOL])
                request = Message()
                request.type = Message.MessageType.PUT_VALUE
                request.key = key_bytes
                request.record.CopyFrom(make_signed_put_record(key_bytes, value, self.host.get_private_key()))
                payload = request.SerializeToString()
                await stream.write(varint.encode(len(payload)) + payload)
                reply = Message()
                reply.ParseFromString(await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE))
                ok = reply.type == Message.MessageType.PUT_VALUE and reply.key == key_bytes
        except Exception as exc:  # unreachable, refused (the server resets), too slow: counted, not raised
            log.debug("PUT_VALUE to %s failed: %r", peer, exc)
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    try:
                        await (stream.close() if ok else stream.reset())
                    except Exception as exc:
                        log.debug("closing a DHT stream: %r", exc)
        if ok:
            self.stats.stored += 1
        else:
            self.stats.refused += 1
        return ok


class RecordKeeper:
    """Our own records, re-put when the closest peers change and on a periodic schedule."""

    def __init__(self, putter: RecordPutter, *, check_interval: float = 30.0,
                 republish_interval: float = 600.0) -> None:
        self._putter = putter
        self.check_interval = check_interval
        self.republish_interval = republish_interval
        self._records: dict[str, _Kept] = {}
        self._wake = trio.Event()

    async def put(self, key: str, value: bytes) -> PutResult:
        """Put now and keep the record (a newer value for the key replaces the kept one)."""
        result = await self._putter.put(key, value)
        self._records[key] = _Kept(value, result, trio.current_time())
        return result

    @property
    def stats(self) -> PutStats:
        return self._putter.stats

    def forget(self, key: str) -> None:
        self._records.pop(key, None)

    def last_put(self, key: str) -> PutResult | None:
        kept = self._records.get(key)
        return kept.last if kept else None

    def nudge(self) -> None:
        """Check now instead of at the next interval (e.g. after our connections changed)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.check_interval * random.uniform(0.8, 1.2)):
                await self._wake.wait()
            self._wake = trio.Event()
            for key in list(self._records):
                kept = self._records.get(key)
                if kept is None or not self._due(key, kept):
                    continue
                try:
                    self._putter.validator.validate(key, kept.value)
                except Exception:  # it expired: whoever owns it puts a fresh one (or it is gone for good)
                    self.forget(key)
                    continue
                try:
                    result = await self._putter.put(key, kept.value)
                except Exception as exc:
                    log.debug("re-put of %s failed: %r", key, exc)
                    continue
                self._putter.stats.reputs += 1
                if self._records.get(key) is kept:  # not replaced by a newer put meanwhile
                    kept.last, kept.last_put = result, trio.current_time()

    def _due(self, key: str, kept: _Kept) -> bool:
        now = trio.current_time()
        if now - kept.last_put >= self.republish_interval:
            return True
        if now - kept.last_put < self.check_interval:
            return False
        lookup = self._putter.lookup
        me = self._putter.host.get_id()
        known = [p for p in self._putter.dht.routing_table.find_local_closest_peers(key.encode(), lookup.k)
                 if p != me]
        # A peer now among the closest we know of that the last put did not try: the record belongs there
        # too (a peer that was tried and refused is not retried until the periodic republish).
        return any(p not in kept.last.closest for p in known[: lookup.k])
