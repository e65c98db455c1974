"""Issue 15: traffic that scales. A topic per model (a node follows only the models it serves or buys), a
rendezvous in the DHT to find a topic's peers, and a worker that announces on change at a bounded rate.

Real py-libp2p hosts over loopback TCP, except the announce-loop test, which runs on trio's virtual clock.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from cocoon_node.config import Config, WorkerSection
from cocoon_node.mesh import WORKERS_TOPIC, Announcement, AnnouncementValidator, Mesh, MeshSettings, model_topic
from cocoon_node.mesh.announce import MODEL_TOPIC_PREFIX, decode_announcement
from cocoon_node.mesh.topics import TopicRendezvous
from cocoon_node.node.worker import WorkerRole, load_bucket
from tests.waiting import wait_until


def announcement(mesh: Mesh, model: str, seqno: int) -> Announcement:
    now = int(time.time())
    return Announcement(
        peer_id=mesh.peer_id.to_bytes(), addrs=tuple(mesh.listen_addrs()), model=model, model_hash=b"\x01" * 32,
        backend="synthetic", synthetic=True, price_prompt=1, price_completion=2, max_concurrent=4, load=0,
        protocols=("/cocoon/inference/1.0.0",), tee_kind="dev-INSECURE", seqno=seqno,
        issued_at=now, expires_at=now + 60, payout="", v=1,
    )


def seal(mesh: Mesh, a: Announcement) -> bytes:
    return a.seal(mesh._key_pair.private_key)


def validated(topics: list[str]) -> dict[str, Any]:
    v = AnnouncementValidator()
    return {"topic_validators": {t: v for t in topics}, "prefix_validators": {MODEL_TOPIC_PREFIX: v}}


def test_a_model_topic_must_carry_its_own_model() -> None:
    kp = create_new_key_pair()
    origin = ID.from_pubkey(kp.public_key)
    mesh = SimpleNamespace(peer_id=origin, listen_addrs=lambda: [f"/ip4/127.0.0.1/tcp/1/p2p/{origin}"], _key_pair=kp)
    v = AnnouncementValidator()

    def msg(seqno: int, model: str, topics: list[str]) -> rpc_pb2.Message:
        data = seal(mesh, announcement(mesh, model, seqno))  # type: ignore[arg-type]
        return rpc_pb2.Message(data=data, from_id=origin.to_bytes(), seqno=seqno.to_bytes(8, "big"), topicIDs=topics)

    assert v(origin, msg(1, "a", [model_topic("a")]))
    assert not v(origin, msg(2, "b", [model_topic("a")]))
    assert v.rejected["wrong_topic"] == 1
    assert not v(origin, msg(3, "a", [model_topic("a"), model_topic("b")]))
    # One message on its model topic and the directory: py-libp2p validates it once per topic; same verdict.
    both = msg(4, "a", [model_topic("a"), WORKERS_TOPIC])
    assert v(origin, both) and v(origin, both)
    assert v.accepted == 2 and "replayed" not in v.rejected


async def test_a_node_following_one_model_never_receives_another_models_announcements() -> None:
    received: list[tuple[bytes, tuple[str, ...]]] = []
    async with AsyncExitStack() as stack:
        topic_a, topic_b = model_topic("a"), model_topic("b")
        requester = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True, topics=(topic_a,), target_peers=1),
                         **validated([topic_a]))
        await stack.enter_async_context(requester.start())
        assert requester.pubsub is not None
        push = requester.pubsub.push_msg

        async def recording(forwarder: ID, msg: rpc_pb2.Message) -> None:
            received.append((bytes(msg.from_id), tuple(msg.topicIDs)))
            await push(forwarder, msg)

        requester.pubsub.push_msg = recording  # type: ignore[method-assign]
        boot = (requester.listen_addrs()[0],)
        # Its only peer serves model b, and also relays model a (so it shares a topic with the requester).
        other = Mesh(create_new_key_pair(), MeshSettings(bootstrap=boot, local_cluster=True, target_peers=1,
                                                          topics=(topic_a, topic_b, WORKERS_TOPIC)),
                     **validated([topic_a, topic_b, WORKERS_TOPIC]))
        await stack.enter_async_context(other.start())
        await wait_until(lambda: requester.topic_peers(topic_a) > 0 and other.topic_peers(topic_a) > 0, timeout=20)
        await wait_until(lambda: requester.peer_id in (other.gossipsub.mesh.get(topic_a, set())
                                                      if other.gossipsub else set()), timeout=20)
        seqno = 0
        with trio.fail_after(30):
            while not any(topic_a in t for _, t in received):
                # Model b's announcements (on its topic and the directory), then one on model a: one connection
                # carries them in order, so once the last arrived, the others would have arrived before it.
                for topics, model in (([topic_b], "b"), ([topic_b, WORKERS_TOPIC], "b"), ([topic_a], "a")):
                    seqno += 1
                    await other.publish(topics, seal(other, announcement(other, model, seqno)))
                await trio.sleep(0.5)
        assert all(t == (topic_a,) for _, t in received), f"received other models' announcements: {received}"
        assert all(f == other.peer_id.to_bytes() for f, _ in received)


async def test_a_node_with_no_peer_on_its_model_topic_finds_one_through_the_dht() -> None:
    async with AsyncExitStack() as stack:
        topic = model_topic("m")
        settings: dict[str, Any] = {"local_cluster": True, "target_peers": 1}
        relay = Mesh(create_new_key_pair(), MeshSettings(topics=(WORKERS_TOPIC,), **settings),
                     **validated([WORKERS_TOPIC]))
        await stack.enter_async_context(relay.start())
        boot = (relay.listen_addrs()[0],)
        worker = Mesh(create_new_key_pair(), MeshSettings(bootstrap=boot, topics=(topic,), **settings),
                      **validated([topic]))
        await stack.enter_async_context(worker.start())
        nursery = await stack.enter_async_context(trio.open_nursery())
        advertiser = TopicRendezvous(worker)
        nursery.start_soon(advertiser.provide, topic)
        await wait_until(lambda: advertiser.provided >= 1, timeout=40)
        buyer = Mesh(create_new_key_pair(), MeshSettings(bootstrap=boot, topics=(topic,), **settings),
                     **validated([topic]))
        await stack.enter_async_context(buyer.start())
        assert worker.peer_id not in buyer.connected_peers() and buyer.topic_peers(topic) == 0
        seeker = TopicRendezvous(buyer, seek_backoff=(0.5, 2.0))
        nursery.start_soon(seeker.seek, topic)
        await wait_until(lambda: buyer.topic_peers(topic) > 0, timeout=60)
        assert worker.peer_id in buyer.connected_peers() and seeker.lookups >= 1
        nursery.cancel_scope.cancel()


def test_load_buckets() -> None:
    assert [load_bucket(n, 8) for n in range(10)] == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [load_bucket(n, 2) for n in range(3)] == [0, 3, 5]


class FakeServer:
    def __init__(self) -> None:
        self.load = 0


class FakeMesh:
    def __init__(self) -> None:
        self.published: list[tuple[float, list[str], int]] = []
        self.server: FakeServer | None = None
        self.followers: set[str] = set()
        self.addrs: list[str] = []  # what the connectivity layer says we can be dialled at (issue 14)
        self.sent_addrs: list[tuple[float, tuple[str, ...]]] = []
        self.subscribed: set[str] = set()

    async def subscribe(self, topic: str) -> None:
        self.subscribed.add(topic)

    def advertised_addrs(self) -> list[str]:
        return list(self.addrs)

    def topic_peer_ids(self, topic: str) -> set[str]:
        return set(self.followers) if topic == WORKERS_TOPIC else set()

    async def publish(self, topics: list[str], data: bytes) -> None:
        assert self.server is not None
        self.published.append((trio.current_time(), list(topics), self.server.load))
        self.sent_addrs.append((trio.current_time(), decode_announcement(data)[0].addrs))


async def test_announcements_are_rate_limited_and_only_bucket_changes_count(
        autojump_clock: trio.testing.MockClock) -> None:
    worker = WorkerSection(enabled=True, model="m", max_concurrent=8, announce_interval=30.0, announce_ttl=90,
                           announce_min_interval=5.0, directory_interval=60.0)
    kp = create_new_key_pair()
    mesh, server = FakeMesh(), FakeServer()
    mesh.server = server
    role = WorkerRole(Config(worker=worker), mesh, kp, backend=SimpleNamespace())  # type: ignore[arg-type]
    role.server = server  # type: ignore[assignment]
    role.announcement = announcement(SimpleNamespace(  # type: ignore[arg-type]
        peer_id=ID.from_pubkey(kp.public_key), listen_addrs=lambda: []), "m", 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(role._announce_loop)
        # 100 s of a load that changes every 0.1 s, between 2 and 3 of 8 (the same bucket): beats only.
        for i in range(1000):
            server.load = 2 + i % 2
            role._load_changed.set()
            await trio.sleep(0.1)
        calm = len(mesh.published)
        # 100 s of a load that moves between buckets every 0.1 s: at most one announcement per 5 s.
        for i in range(1000):
            server.load = 0 if i % 2 else 8
            role._load_changed.set()
            await trio.sleep(0.1)
        busy_end = len(mesh.published)
        # A peer following the directory connects: it hears from us within a second (or the rate limit), not 60 s.
        await trio.sleep(31)
        before, joined_at = len(mesh.published), trio.current_time()
        mesh.followers.add("late requester")
        await trio.sleep(7)
        # Our addresses change (a relay reservation, a dial-back verdict): announced within the rate limit.
        mesh.addrs, changed_at = ["/ip4/198.18.0.7/tcp/4001/p2p/x"], trio.current_time()
        role.addresses_changed()
        await trio.sleep(7)
        nursery.cancel_scope.cancel()
    moved = [t for t, addrs in mesh.sent_addrs if addrs == ("/ip4/198.18.0.7/tcp/4001/p2p/x",)]
    assert moved and moved[0] - changed_at <= 5.0 + 1e-9, (changed_at, mesh.sent_addrs[-3:])
    late = mesh.published[before:]
    assert late and WORKERS_TOPIC in late[0][1] and late[0][0] - joined_at <= 1.0 + 5.0 + 1e-9, (joined_at, late)
    mesh.published = mesh.published[:busy_end]
    busy = len(mesh.published) - calm
    assert calm <= 1 + 100 / (30 * 0.9) + 1, mesh.published[:calm]
    assert 100 / 5 - 2 <= busy <= 100 / 5 + 1, busy
    gaps = [b[0] - a[0] for a, b in zip(mesh.published, mesh.published[1:], strict=False)]
    assert min(gaps) >= 5.0 - 1e-9
    directory = [t for t, topics, _ in mesh.published if WORKERS_TOPIC in topics]
    assert directory[0] == mesh.published[0][0] and len(directory) <= 200 / 60 + 1
    assert all(topics[0] == model_topic("m") for _, topics, _ in mesh.published)
    assert mesh.subscribed == {model_topic("m")}
