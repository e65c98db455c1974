"""DHT reads through RecordLookup, on real py-libp2p hosts over loopback TCP.

The lookup answers from the first peer holding a valid record (the peer a key names first), never returns or
caches a record its namespace rejects, resets the streams of RPCs it abandons, and falls back to KadDHT's
own lookup only when it has nobody to ask. Every wait is bounded; no assertion depends on how long anything took.
"""

from __future__ import annotations

import hashlib
from contextlib import AsyncExitStack

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from cocoon_node.mesh import Mesh, MeshSettings, RecordRejected
from cocoon_node.mesh.kad_protocol import COCOON_KAD_PROTOCOL as KAD_PROTOCOL_ID
from cocoon_node.mesh.kad_walk import xor_distance as _distance
from tests.waiting import wait_until


class SwitchNamespace:
    """Values must start with the key's last path segment; ``reject_all`` turns every record invalid
    (standing in for a record that has since expired)."""

    namespace = "cocoon-test"

    def __init__(self) -> None:
        self.reject_all = False

    def validate(self, key: str, value: bytes) -> None:
        if self.reject_all:
            raise RecordRejected("rejected by the test")
        if not value.startswith(key.rsplit("/", 1)[-1].encode()):
            raise RecordRejected("value does not match key")

    def select(self, key: str, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: values[i])


async def start_meshes(stack: AsyncExitStack, n: int, **settings) -> tuple[list[Mesh], list[SwitchNamespace]]:
    """``n`` meshes, each bootstrapped to every earlier one (so all are connected to each other)."""
    meshes: list[Mesh] = []
    namespaces: list[SwitchNamespace] = []
    for _ in range(n):
        ns = SwitchNamespace()
        boots = tuple(m.listen_addrs()[0] for m in meshes)
        mesh = Mesh(create_new_key_pair(), MeshSettings(bootstrap=boots, local_cluster=True, **settings),
                    namespaces=[ns])
        await stack.enter_async_context(mesh.start())
        meshes.append(mesh)
        namespaces.append(ns)
    return meshes, namespaces


def plant(mesh: Mesh, key: str, value: bytes) -> None:
    """Put a record straight into a host's DHT store, skipping validation (a buggy or hostile peer)."""
    assert mesh.dht is not None
    mesh.dht.value_store.put(key.encode(), value)


def holds(mesh: Mesh, key: str) -> bool:
    assert mesh.dht is not None
    return key.encode() in mesh.dht.value_store.store


async def test_get_answers_from_a_peer_and_then_from_the_cache() -> None:
    async with AsyncExitStack() as stack:
        (asker, a, b, c), _ = await start_meshes(stack, 4)
        key = "/cocoon-test/hello"
        for holder in (a, b, c):
            plant(holder, key, b"hello-1")
        assert not holds(asker, key)
        with trio.fail_after(20):
            assert await asker.get_record(key) == b"hello-1"
        assert asker.lookup is not None
        stats = asker.lookup.stats
        assert (stats.network_hits, stats.fallbacks, stats.misses) == (1, 0, 0)
        assert 1 <= stats.rpcs <= 3
        assert not holds(asker, key)  # fetched records are cached by the lookup, not stored in the DHT
        # The network copies vanish: the cached copy still answers, until it is forgotten.
        for holder in (a, b, c):
            assert holder.dht is not None
            holder.dht.value_store.remove(key.encode())
        with trio.fail_after(20):
            assert await asker.get_record(key) == b"hello-1"
        assert stats.cache_hits == 1
        asker.lookup.forget(key)
        with trio.fail_after(20):
            assert await asker.get_record(key) is None
        assert stats.misses == 1 and stats.fallbacks == 0  # peers answered "not here": no library walk


async def test_a_record_failing_the_validator_is_never_returned_or_cached() -> None:
    async with AsyncExitStack() as stack:
        (asker, bad, good), _ = await start_meshes(stack, 3)
        key = "/cocoon-test/k1"
        plant(bad, key, b"forged")  # does not start with "k1": the namespace rejects it
        with trio.fail_after(20):
            assert await asker.get_record(key) is None
        assert asker.lookup is not None
        assert asker.lookup.stats.rejected_records >= 1
        assert not holds(asker, key)
        # With a valid copy elsewhere, that one is returned whichever peer is asked first.
        plant(good, key, b"k1-valid")
        with trio.fail_after(20):
            assert await asker.get_record(key) == b"k1-valid"


async def test_local_and_cached_records_are_revalidated_on_every_read() -> None:
    async with AsyncExitStack() as stack:
        (asker, holder), (asker_ns, _) = await start_meshes(stack, 2)
        local_key, remote_key = "/cocoon-test/mine", "/cocoon-test/theirs"
        await asker.put_record(local_key, b"mine-1")
        plant(holder, remote_key, b"theirs-1")
        with trio.fail_after(20):
            assert await asker.get_record(local_key) == b"mine-1"
            assert await asker.get_record(remote_key) == b"theirs-1"
        assert asker.lookup is not None and asker.lookup.stats.local_hits == 1
        # Both records turn invalid for the asker (as an attestation report does when it expires).
        asker_ns.reject_all = True
        with trio.fail_after(20):
            assert await asker.get_record(local_key) is None
            assert await asker.get_record(remote_key) is None
        assert not holds(asker, local_key)  # an invalid local record is dropped from the store
        assert asker.lookup.stats.cache_hits == 0


async def test_an_abandoned_rpc_resets_its_stream_so_the_responder_is_not_left_waiting() -> None:
    async with AsyncExitStack() as stack:
        (asker, fast, slow), _ = await start_meshes(stack, 3)
        # A key closer to the slow peer, so the lookup asks it first and hedges to the fast one.
        key = next(
            k for k in (f"/cocoon-test/x{i}" for i in range(10_000))
            if _distance(hashlib.sha256(k.encode()).digest(), slow.peer_id)
            < _distance(hashlib.sha256(k.encode()).digest(), fast.peer_id)
        )
        value = key.rsplit("/", 1)[-1].encode() + b"-v"
        plant(fast, key, value)
        plant(slow, key, value)
        release, slow_entered = trio.Event(), trio.Event()
        active = 0
        assert slow.dht is not None and slow.host is not None and fast.dht is not None and fast.host is not None
        slow_kad, fast_kad = slow.dht.handle_stream, fast.dht.handle_stream

        async def stalled(stream) -> None:
            nonlocal active
            active += 1
            slow_entered.set()
            try:
                await release.wait()
                await slow_kad(stream)
            finally:
                active -= 1

        async def after_slow(stream) -> None:  # the fast peer answers only once the slow one holds a request
            await slow_entered.wait()
            await fast_kad(stream)

        slow.host.set_stream_handler(KAD_PROTOCOL_ID, stalled)
        fast.host.set_stream_handler(KAD_PROTOCOL_ID, after_slow)
        with trio.fail_after(20):
            assert await asker.get_record(key) == value
        assert asker.lookup is not None and asker.lookup.stats.rpcs == 2
        assert slow_entered.is_set()
        release.set()
        # KadDHT's handler serves a stream until the client closes it: without the reset it would wait forever.
        await wait_until(lambda: active == 0, timeout=10)


async def test_a_key_naming_a_peer_is_asked_of_that_peer_first() -> None:
    async with AsyncExitStack() as stack:
        (asker, other), _ = await start_meshes(stack, 2)
        # A named peer farther from its key than `other`, so distance alone would ask `other` first.
        while True:
            key_pair = create_new_key_pair()
            named_id = ID.from_pubkey(key_pair.public_key)
            key = f"/cocoon-test/{named_id.to_base58()}"
            target = hashlib.sha256(key.encode()).digest()
            if _distance(target, named_id) > _distance(target, other.peer_id):
                break
        named = Mesh(key_pair, MeshSettings(bootstrap=(asker.listen_addrs()[0], other.listen_addrs()[0]),
                                            local_cluster=True), namespaces=[SwitchNamespace()])
        await stack.enter_async_context(named.start())
        await wait_until(lambda: named.peer_id in asker.connected_peers(), timeout=10)
        # Only the named peer holds its record (its put never reached anyone else).
        plant(named, key, named_id.to_base58().encode() + b"-v1")
        with trio.fail_after(20):
            assert await asker.get_record(key) == named_id.to_base58().encode() + b"-v1"
        assert asker.lookup is not None and asker.lookup.stats.rpcs == 1


async def test_lookup_with_nobody_to_ask_falls_back_to_kaddht_and_finds_nothing() -> None:
    async with AsyncExitStack() as stack:
        (alone,), _ = await start_meshes(stack, 1)
        with trio.fail_after(30):
            assert await alone.get_record("/cocoon-test/nothing") is None
        assert alone.lookup is not None
        assert alone.lookup.stats.fallbacks == 1 and alone.lookup.stats.misses == 1


async def test_startup_refreshes_are_skipped_once_well_connected() -> None:
    async with AsyncExitStack() as stack:
        meshes, _ = await start_meshes(stack, 3, target_peers=1)
        refreshes = 0
        for mesh in meshes:
            assert mesh.dht is not None

            async def counted() -> None:
                nonlocal refreshes
                refreshes += 1

            mesh.dht.refresh_routing_table = counted  # type: ignore[method-assign]
        # Every mesh has at least one connection (target_peers=1), so its first scheduled refresh is skipped.
        await wait_until(lambda: all(m.refreshes_skipped >= 1 for m in meshes), timeout=10)
        assert refreshes == 0


async def test_a_newest_lookup_is_not_fooled_by_a_stale_copy() -> None:
    """Issue 21: a plain lookup stops at the first valid record, so an older copy in our store (or at a fast
    peer) wins; ``newest`` compares our copies with the network's and waits for the peer the key names."""
    async with AsyncExitStack() as stack:
        (asker, other), _ = await start_meshes(stack, 2)
        key_pair = create_new_key_pair()
        named_id = ID.from_pubkey(key_pair.public_key)
        key = f"/cocoon-test/{named_id.to_base58()}"
        named = Mesh(key_pair, MeshSettings(bootstrap=(asker.listen_addrs()[0], other.listen_addrs()[0]),
                                            local_cluster=True), namespaces=[SwitchNamespace()])
        await stack.enter_async_context(named.start())
        await wait_until(lambda: named.peer_id in asker.connected_peers(), timeout=10)
        prefix = named_id.to_base58().encode()
        plant(asker, key, prefix + b"-v1")   # the asker still holds the old record
        plant(other, key, prefix + b"-v1")
        plant(named, key, prefix + b"-v2")   # the worker itself holds its newest
        with trio.fail_after(20):
            assert await asker.get_record(key) == prefix + b"-v1"  # the stale local copy wins a plain read
            assert await asker.get_record(key, newest=True) == prefix + b"-v2"
            assert await asker.get_record(key) == prefix + b"-v2"  # the stale local copy was replaced
