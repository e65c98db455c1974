"""NETSIM-ONLY link shaping (netsim/shaping/): link timing, the link table, partitions that hold data until
they heal, and two real hosts whose connection stalls and resumes (the shaped TCP injected into the mesh)."""

from __future__ import annotations

import json
import random
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.io.abc import ReadWriteCloser

from cocoon_node.mesh import Mesh, MeshSettings
from netsim.shaping import (
    RTO_S,
    LinkClock,
    LinkParams,
    LinkTable,
    LinkTableError,
    LinkView,
    ShapedStream,
    ShapedTCP,
    shaped_transport_factory,
    watch_table_file,
    write_table_file,
)
from tests.waiting import wait_until


class MemoryRWC(ReadWriteCloser):
    """One end of an in-memory stream pair, with libp2p's ReadWriteCloser interface."""

    def __init__(self, stream: trio.testing.MemorySendStream | trio.abc.Stream) -> None:
        self.s = stream
        self.closed = False

    async def read(self, n: int | None = None) -> bytes:
        try:
            return await self.s.receive_some(n)  # type: ignore[union-attr]
        except trio.ClosedResourceError:
            return b""

    async def write(self, data: bytes) -> None:
        await self.s.send_all(data)  # type: ignore[union-attr]

    async def close(self) -> None:
        self.closed = True
        await self.s.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 1)


class FixedRandom(random.Random):
    """uniform() returns the low end and random() a fixed value, so jitter and loss are predictable."""

    def __init__(self, draw: float) -> None:
        super().__init__(0)
        self.draw = draw

    def random(self) -> float:
        return self.draw

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.draw


# ----- timing ------------------------------------------------------------------------------------------
def test_delivery_time_adds_serialisation_latency_and_keeps_order() -> None:
    clock = LinkClock()
    p = LinkParams(latency_ms=100, bandwidth_bytes_s=1000)
    rng = random.Random(1)
    # 500 bytes at 1000 B/s take 0.5 s on the wire, then 0.1 s of latency.
    assert clock.delivery_time(p, sent_at=0.0, size=500, rng=rng) == pytest.approx(0.6)
    # Handed over at the same time, the second chunk waits for the first to be serialised.
    assert clock.delivery_time(p, sent_at=0.0, size=500, rng=rng) == pytest.approx(1.1)
    # After an idle gap the link is free again.
    assert clock.delivery_time(p, sent_at=5.0, size=0, rng=rng) == pytest.approx(5.1)


def test_jitter_never_reorders_and_loss_costs_one_rto() -> None:
    clock = LinkClock()
    jittery = LinkParams(latency_ms=10, jitter_ms=50)
    rng = random.Random(7)
    times = [clock.delivery_time(jittery, sent_at=i * 0.001, size=10, rng=rng) for i in range(200)]
    assert times == sorted(times)
    assert all(t >= i * 0.001 for i, t in enumerate(times))  # latency minus jitter is clamped at zero
    lossy = LinkParams(latency_ms=10, loss=0.5)
    assert LinkClock().delivery_time(lossy, sent_at=0, size=1, rng=FixedRandom(0.4)) == pytest.approx(0.01 + RTO_S)
    assert LinkClock().delivery_time(lossy, sent_at=0, size=1, rng=FixedRandom(0.6)) == pytest.approx(0.01)


# ----- the link table ----------------------------------------------------------------------------------
TABLE = {
    "default": {"latency_ms": 20},
    "nodes": {"w1": {"peer_id": "PEER-W1", "ports": [4001]}, "w2": {"ports": [4002]}, "r1": {"peer_id": "PEER-R1"}},
    "rules": [{"a": ["w1", "w2"], "b": ["r1"], "latency_ms": 80, "loss": 0.1},
              {"a": ["w2"], "b": ["r1"], "blocked": True, "why": "partition"}],
}


def test_link_table_overlays_rules_symmetrically() -> None:
    table = LinkTable(TABLE)
    assert table.link("w1", "r1") == LinkParams(latency_ms=80, loss=0.1)
    assert table.link("r1", "w1") == table.link("w1", "r1")
    assert table.link("w2", "r1") == LinkParams(latency_ms=80, loss=0.1, blocked=True)
    assert table.link("w1", "w2") == LinkParams(latency_ms=20)
    assert table.link(None, "w1") == LinkParams(latency_ms=20)  # unknown ends get the default
    assert table.name_of(peer_id="PEER-W1") == "w1"
    assert table.name_of(peer_id="unknown", port=4002) == "w2"
    assert table.name_of(port=9999) is None


@pytest.mark.parametrize("bad", [
    {"default": {"latency": 5}},                                   # misspelt key
    {"default": {"loss": 1.0}},                                    # certain loss is a partition, say so
    {"default": {"latency_ms": -1}},
    {"default": {"blocked": "yes"}},
    {"nodes": {"w1": {"peer": "x"}}},
    {"nodes": {"w1": {"ports": [70000]}}},
    {"rules": [{"a": "w1", "b": ["r1"]}]},
    {"rules": [{"a": ["w1"], "b": ["r1"], "colour": "red"}]},
    {"version": 2},
    {"links": []},
])
def test_link_table_rejects_malformed_tables(bad: dict) -> None:
    with pytest.raises(LinkTableError):
        LinkTable(bad)


def test_a_bad_replacement_keeps_the_old_table() -> None:
    table = LinkTable(TABLE)
    with pytest.raises(LinkTableError):
        table.replace({"default": {"latency_ms": "fast"}})
    assert table.link("w1", "w2") == LinkParams(latency_ms=20)


async def test_watcher_reloads_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    write_table_file(path, {"default": {"latency_ms": 5}})
    table = LinkTable.from_file(path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_table_file, table, path, 0.01)
        write_table_file(path, {"default": {"latency_ms": 50}})
        await wait_until(lambda: table.link(None, None).latency_ms == 50, timeout=10)
        generation = table.generation
        path.write_text("{ not json")  # a broken file is ignored, the last good table stays
        await wait_until(lambda: table.refused >= 1, timeout=10)  # the watcher did read it, and refused it
        assert table.link(None, None).latency_ms == 50 and table.generation == generation
        nursery.cancel_scope.cancel()


# ----- ShapedStream on virtual time (trio's autojump clock: no assertion depends on wall time) --------------
async def shaped_pair(table: LinkTable, nursery: trio.Nursery) -> tuple[ShapedStream, trio.StapledStream, MemoryRWC]:
    near, far = trio.testing.memory_stream_pair()
    inner = MemoryRWC(near)
    shaped = ShapedStream(inner, LinkView(table, "a", "b"), rng=random.Random(1))
    nursery.start_soon(shaped.run)
    return shaped, far, inner


async def test_latency_applies_to_both_directions(autojump_clock: trio.testing.MockClock) -> None:
    table = LinkTable({"default": {"latency_ms": 100}})
    async with trio.open_nursery() as nursery:
        shaped, far, _ = await shaped_pair(table, nursery)
        t0 = trio.current_time()
        await shaped.write(b"hello")
        assert trio.current_time() == t0  # a write returns at once, like a socket with buffer space
        assert await far.receive_some() == b"hello"
        assert trio.current_time() - t0 == pytest.approx(0.1)
        t1 = trio.current_time()
        await far.send_all(b"back")
        assert await shaped.read() == b"back"
        assert trio.current_time() - t1 == pytest.approx(0.1)
        nursery.cancel_scope.cancel()


async def test_bandwidth_serialises_and_order_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    table = LinkTable({"default": {"latency_ms": 10, "jitter_ms": 9, "bandwidth_bytes_s": 10_000}})
    async with trio.open_nursery() as nursery:
        shaped, far, _ = await shaped_pair(table, nursery)
        t0 = trio.current_time()
        chunks = [bytes([i]) * 100 for i in range(50)]
        for c in chunks:
            await shaped.write(c)
        got = b""
        while len(got) < 5000:
            got += await far.receive_some()
        assert got == b"".join(chunks)
        assert trio.current_time() - t0 >= 5000 / 10_000  # 5000 bytes at 10 kB/s
        nursery.cancel_scope.cancel()


async def test_a_blocked_link_holds_data_until_it_heals(autojump_clock: trio.testing.MockClock) -> None:
    table = LinkTable({"default": {"latency_ms": 5}})
    async with trio.open_nursery() as nursery:
        shaped, far, _ = await shaped_pair(table, nursery)
        await shaped.write(b"before ")
        assert await far.receive_some() == b"before "
        table.replace({"default": {"latency_ms": 5, "blocked": True}})
        await shaped.write(b"held ")
        await shaped.write(b"in order")
        await far.send_all(b"reply")
        received: list[bytes] = []
        read_back: list[bytes] = []

        async def far_reader() -> None:
            while len(b"".join(received)) < len(b"held in order"):
                received.append(await far.receive_some())

        async def near_reader() -> None:
            read_back.append(await shaped.read())

        nursery.start_soon(far_reader)
        nursery.start_soon(near_reader)
        await trio.sleep(600)  # ten virtual minutes of partition: nothing crosses in either direction
        assert received == [] and read_back == []
        healed_at = trio.current_time()
        table.replace({"default": {"latency_ms": 5}})
        await wait_until(lambda: len(b"".join(received)) >= len(b"held in order") and read_back,
                         timeout=1, interval=0.001)
        assert b"".join(received) == b"held in order" and read_back == [b"reply"]
        assert trio.current_time() - healed_at >= 0.005  # released after the heal, plus the latency
        nursery.cancel_scope.cancel()


async def test_end_of_stream_and_close(autojump_clock: trio.testing.MockClock) -> None:
    table = LinkTable({"default": {"latency_ms": 50}})
    async with trio.open_nursery() as nursery:
        shaped, far, inner = await shaped_pair(table, nursery)
        await far.send_all(b"last words")
        await far.send_stream.aclose()  # half-close: the far end still reads
        assert await shaped.read() == b"last words"
        assert await shaped.read() == b""  # the far end's close arrives after its data
        await shaped.write(b"queued before close")
        await shaped.close()
        with trio.fail_after(10):
            await shaped.finished.wait()  # drained, then the socket is closed
        assert inner.closed
        assert await far.receive_some() == b"queued before close"
        await shaped.write(b"ignored after close")  # like TrioTCPStream after a local close


async def test_close_on_a_blocked_link_lingers_then_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    table = LinkTable({"default": {"blocked": True}})
    async with trio.open_nursery() as nursery:
        shaped, _, inner = await shaped_pair(table, nursery)
        await shaped.write(b"never delivered")
        t0 = trio.current_time()
        await shaped.close()
        await shaped.finished.wait()
        assert inner.closed and trio.current_time() - t0 == pytest.approx(5.0)  # LINGER_S


async def test_full_buffer_makes_writers_wait(autojump_clock: trio.testing.MockClock) -> None:
    table = LinkTable({"default": {"blocked": True}})
    near, _ = trio.testing.memory_stream_pair()
    shaped = ShapedStream(MemoryRWC(near), LinkView(table, "a", "b"), buffer_bytes=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shaped.run)
        await shaped.write(b"x" * 600)
        with trio.move_on_after(60) as waited:
            await shaped.write(b"y" * 600)  # would exceed 1000 queued bytes on a link that is not draining
        assert waited.cancelled_caught
        # A writer still waiting for room when the connection goes away is released, not left hanging.
        async with trio.open_nursery() as writers:
            writers.start_soon(shaped.write, b"z" * 600)
            await trio.testing.wait_all_tasks_blocked()
            await shaped.close()  # linger (5 s) runs out on the blocked link, then the connection is torn down
        with trio.fail_after(1):
            await shaped.finished.wait()
        nursery.cancel_scope.cancel()


# ----- two real hosts on 127.0.0.1 -----------------------------------------------------------------------
ECHO = "/cocoon-test/echo/1.0.0"


def shaped_transport(mesh: Mesh) -> ShapedTCP:
    assert mesh.host is not None
    transports = mesh.host.get_network().transport_manager.get_transports()  # type: ignore[attr-defined]
    return next(t for t in transports if isinstance(t, ShapedTCP))


async def test_partition_stalls_a_live_connection_and_the_heal_releases_it(tmp_path: Path) -> None:
    table_path = tmp_path / "links.json"
    worker_key, client_key = create_new_key_pair(), create_new_key_pair()
    async with AsyncExitStack() as stack:
        worker = Mesh(worker_key, MeshSettings(local_cluster=True))
        shaped = shaped_transport_factory(table_path)
        client = Mesh(client_key, MeshSettings(local_cluster=True, transport_factory=shaped))
        nodes = {"worker": {"peer_id": worker.peer_id.to_base58()}, "client": {"peer_id": client.peer_id.to_base58()}}
        blocked = {"nodes": nodes, "default": {"latency_ms": 20},
                   "rules": [{"a": ["client"], "b": ["worker"], "blocked": True}]}
        healed = {"nodes": nodes, "default": {"latency_ms": 20}}
        write_table_file(table_path, blocked)

        async def echo(stream) -> None:  # type: ignore[no-untyped-def]
            data = await stream.read(4)
            await stream.write(data)
            await stream.close()

        await stack.enter_async_context(worker.start())
        worker.set_stream_handler(ECHO, echo)
        await stack.enter_async_context(client.start())
        transport = shaped_transport(client)
        nursery = await stack.enter_async_context(trio.open_nursery())

        # 1. A dial across the partition does not get through...
        connected = trio.Event()

        async def dial() -> None:
            await client.connect(worker.listen_addrs()[0])
            connected.set()

        nursery.start_soon(dial)
        await wait_until(lambda: transport.table.held >= 1, timeout=10)  # the dial waits at the cut
        assert not connected.is_set() and worker.peer_id not in client.connected_peers()
        # ...until the partition heals (well within the dial timeout).
        generation = transport.table.generation
        write_table_file(table_path, healed)
        await wait_until(lambda: transport.table.generation > generation, timeout=10)
        with trio.fail_after(10):
            await connected.wait()

        # 2. An open connection stalls in a partition: the request is held, not lost...
        generation = transport.table.generation
        write_table_file(table_path, blocked)
        await wait_until(lambda: transport.table.generation > generation, timeout=10)
        replies: list[bytes] = []

        async def ask() -> None:
            stream = await client.new_stream(worker.peer_id, ECHO)
            await stream.write(b"ping")
            replies.append(await stream.read(4))

        nursery.start_soon(ask)
        await wait_until(lambda: transport.table.held > 0, timeout=10)  # data is waiting at the cut
        # The one real-time absence check here: for a second (25 round trips of this link) no reply gets
        # through, and data is still held at the cut at the end of it (the partition was in force throughout).
        await trio.sleep(1.0)
        assert replies == [] and transport.table.held > 0
        # ...and completes after the heal, on the same connection.
        write_table_file(table_path, healed)
        await wait_until(lambda: replies, timeout=15)
        assert replies == [b"ping"]
        assert worker.peer_id in client.connected_peers()
        nursery.cancel_scope.cancel()


async def test_shaping_refuses_quic(tmp_path: Path) -> None:
    table_path = tmp_path / "links.json"
    write_table_file(table_path, {})
    mesh = Mesh(create_new_key_pair(), MeshSettings(listen_addrs=("/ip4/127.0.0.1/udp/0/quic-v1",),
                                                    transport_factory=shaped_transport_factory(table_path)))
    with pytest.raises(ValueError, match="QUIC"):
        async with mesh.start():
            pass


def test_written_table_is_labelled_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    write_table_file(path, TABLE)
    raw = json.loads(path.read_text())
    assert raw["note"].startswith("NETSIM-ONLY")
    assert LinkTable.from_file(path).link("w1", "r1") == LinkParams(latency_ms=80, loss=0.1)
    with pytest.raises(LinkTableError):
        write_table_file(path, {"default": {"latency": 1}})
