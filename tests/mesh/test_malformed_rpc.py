"""A peer that writes bytes that are not a pubsub RPC loses its stream, not our node (py-libp2p 0.8.1 let the
protobuf DecodeError escape and cancel the whole host: a netsim pool of 25 nodes died of one)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.utils.varint import encode_uvarint

from cocoon_node.mesh import WORKERS_TOPIC, Mesh, MeshSettings
from cocoon_node.mesh.scoring import ScoredPubsub
from tests.waiting import wait_until

# field 1 (subscriptions), length-delimited, says 127 bytes follow, and one does: a truncated message
NOT_AN_RPC = b"\x0a\x7fx"


async def test_bytes_that_are_not_an_rpc_end_that_stream_and_the_node_keeps_gossiping() -> None:
    async with AsyncExitStack() as stack:
        meshes = []
        for _ in range(3):
            mesh = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True, topics=(WORKERS_TOPIC,)))
            await stack.enter_async_context(mesh.start())
            meshes.append(mesh)
        victim, attacker, honest = meshes
        assert victim.host is not None and attacker.host is not None and isinstance(victim.pubsub, ScoredPubsub)
        await attacker.connect(victim.listen_addrs()[0])
        stream = await attacker.host.new_stream(victim.peer_id, [TProtocol("/meshsub/1.1.0")])
        await stream.write(encode_uvarint(len(NOT_AN_RPC)) + NOT_AN_RPC)
        await wait_until(lambda: victim.pubsub.malformed_rpcs == 1, timeout=10)  # type: ignore[union-attr]

        # the victim still runs its pubsub: a peer that connects now is met and hears from it
        await honest.connect(victim.listen_addrs()[0])
        await wait_until(lambda: WORKERS_TOPIC in victim.pubsub.peer_topics  # type: ignore[union-attr]
                         and honest.peer_id in victim.pubsub.peer_topics[WORKERS_TOPIC], timeout=20)
        assert victim.host.get_network().get_connections_map()  # and its host is still up
