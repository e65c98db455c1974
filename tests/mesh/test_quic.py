"""QUIC next to TCP: two hosts listening on both; gossip and a direct inference stream work over QUIC."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer, WorkerTerms, call_worker
from cocoon_node.inference.synthetic import SyntheticBackend
from cocoon_node.mesh import Mesh, MeshSettings
from tests.conftest import chat_request

LISTEN = ("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1")


async def test_inference_stream_over_quic() -> None:
    # Not tests/conftest.py's started_hosts: both listen on QUIC too, and the client bootstraps over QUIC.
    async with AsyncExitStack() as stack:
        worker = Mesh(create_new_key_pair(), MeshSettings(listen_addrs=LISTEN, local_cluster=True))
        await stack.enter_async_context(worker.start())
        quic_addrs = [a for a in worker.listen_addrs() if "/quic-v1/" in a]
        assert quic_addrs, worker.listen_addrs()
        client = Mesh(create_new_key_pair(), MeshSettings(listen_addrs=LISTEN, local_cluster=True,
                                                          bootstrap=(quic_addrs[0],)))
        await stack.enter_async_context(client.start())
        server = InferenceServer(SyntheticBackend(tokens_per_second=0), WorkerTerms(
            model="synthetic-echo", price_prompt=1, price_completion=1, max_concurrent=2, max_tokens_cap=64))
        worker.set_stream_handler(PROTOCOL_ID, server.handle)
        chat = chat_request("over quic")
        with trio.fail_after(30):
            assert worker.peer_id in client.connected_peers()
            conns = client.host.get_network().connections[worker.peer_id]  # type: ignore[union-attr]
            assert [type(c.muxed_conn).__name__ for c in conns] == ["QUICConnection"]
            stream = await client.new_stream(worker.peer_id, PROTOCOL_ID)
            async with call_worker(stream, chat, price_prompt=1, price_completion=1) as call:
                text = "".join([d.text async for d in call.deltas()])
        assert text.strip() == "over quic" and call.final is not None
