"""The shared EMULATED chain outlives a client that resets its connection (a node killed or stopping while a
chain call is in flight): the sidecar used to die on the unhandled ECONNRESET, taking every node's chain."""

from __future__ import annotations

import socket
import struct

import trio

from cocoon_node.payments.chain.local import LocalChain, serve_shared_chain


async def test_a_client_resetting_its_connection_leaves_the_shared_chain_up() -> None:
    with trio.fail_after(60):
        async with serve_shared_chain() as url:
            host, port = url.removeprefix("tcp://").rsplit(":", 1)
            for _ in range(3):
                sock = socket.create_connection((host, int(port)))
                sock.sendall(b'{"id": 1, "method": "now", "params": {}}\n')  # a reply it never reads
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # RST, not FIN
            async with LocalChain.connect(url, "after-reset") as chain:
                assert await chain.now() > 0
