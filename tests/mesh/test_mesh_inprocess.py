"""Ten real py-libp2p hosts on loopback sockets in one process: gossip reaches all, the DHT finds records."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.mesh import (
    WORKERS_TOPIC,
    Announcement,
    AnnouncementValidator,
    Mesh,
    MeshSettings,
    RecordRejected,
)
from tests.waiting import wait_until

N_HOSTS = 10


class PrefixNamespace:
    """A test namespace: values must start with the key's last path segment."""

    namespace = "cocoon-test"

    def validate(self, key: str, value: bytes) -> None:
        if not value.startswith(key.rsplit("/", 1)[-1].encode()):
            raise RecordRejected("value does not match key")

    def select(self, key: str, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: values[i])


def make_announcement(mesh: Mesh, seqno: int) -> Announcement:
    now = int(time.time())
    return Announcement(
        peer_id=mesh.peer_id.to_bytes(), addrs=tuple(mesh.listen_addrs()), model="m", model_hash=b"\x01" * 32,
        backend="synthetic", synthetic=True, price_prompt=1, price_completion=2, max_concurrent=4, load=0,
        protocols=("/cocoon/inference/1.0.0",), tee_kind="dev-INSECURE", seqno=seqno,
        issued_at=now, expires_at=now + 60, payout="", v=1,
    )


async def test_gossip_and_dht_across_ten_hosts() -> None:
    validators = [AnnouncementValidator() for _ in range(N_HOSTS)]
    received: list[list[Announcement]] = [[] for _ in range(N_HOSTS)]
    everyone = trio.Event()  # set once every host but the publisher has accepted an announcement

    def on_accept(i: int, announcement: Announcement) -> None:
        received[i].append(announcement)
        if all(received[j] for j in range(N_HOSTS - 1)):
            everyone.set()

    for i, v in enumerate(validators):
        v.on_accept = lambda a, i=i: on_accept(i, a)
    async with AsyncExitStack() as stack:
        meshes: list[Mesh] = []
        bootstrap: list[str] = []
        for i in range(N_HOSTS):
            settings = MeshSettings(bootstrap=tuple(bootstrap), local_cluster=True, topics=(WORKERS_TOPIC,))
            mesh = Mesh(create_new_key_pair(), settings, namespaces=[PrefixNamespace()],
                        topic_validators={WORKERS_TOPIC: validators[i]})
            await stack.enter_async_context(mesh.start())
            meshes.append(mesh)
            if i == 0:
                bootstrap = [mesh.listen_addrs()[0]]
        # Wait until the publisher's mesh for the topic has formed (subscriptions exchanged).
        publisher = meshes[-1]
        await wait_until(lambda: publisher.topic_peers(WORKERS_TOPIC) > 0, timeout=20)
        # Re-announce (as workers do on their heartbeat) until every host has it: the GossipSub mesh may
        # still be grafting when the first one goes out.
        seqno = 1
        with trio.fail_after(30):
            while not everyone.is_set():
                await publisher.publish(WORKERS_TOPIC, make_announcement(publisher, seqno).seal(
                    publisher._key_pair.private_key))
                seqno += 1
                with trio.move_on_after(1.0):
                    await everyone.wait()
        for i in range(N_HOSTS - 1):
            assert received[i][0].peer_id == publisher.peer_id.to_bytes()

        key = "/cocoon-test/hello"
        await meshes[2].put_record(key, b"hello-world")
        with trio.fail_after(20):
            value = await meshes[7].get_record(key)
        assert value == b"hello-world"
        # A record that fails its namespace validator is refused at the source.
        try:
            await meshes[3].put_record("/cocoon-test/abc", b"xyz")
        except Exception as exc:
            assert "match" in str(exc) or exc.__class__.__name__
        else:
            raise AssertionError("invalid record was accepted")


def test_only_the_known_shutdown_race_is_swallowed() -> None:
    from cocoon_node.mesh.host import _only_shutdown_races

    race = RuntimeError("Nursery is closed to new arrivals")
    assert _only_shutdown_races(race)
    assert _only_shutdown_races(ExceptionGroup("g", [race, ExceptionGroup("h", [race])]))
    assert not _only_shutdown_races(RuntimeError("something else"))
    assert not _only_shutdown_races(ExceptionGroup("g", [race, ValueError("real")]))
    assert not _only_shutdown_races(KeyError("x"))
