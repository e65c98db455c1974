"""py-libp2p 0.8.1's swarm can start one muxed connection twice (two concurrent ``add_conn`` for one muxer);
its ``Yamux.start`` then ran two read loops on one socket, which take alternate Noise messages. With
``cocoon_node.mesh.yamux_start`` installed (the mesh does it on import) a connection has one read loop however
often it is started, and still answers a stream."""

from __future__ import annotations

import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux.yamux import Yamux

import cocoon_node.mesh  # noqa: F401  (installs the fix, as every node does)


class Pipe:
    """The secured-connection face yamux reads and writes, over one end of an in-memory stream pair."""

    def __init__(self, stream: trio.abc.Stream, initiator: bool) -> None:
        self.stream, self.is_initiator = stream, initiator

    async def read(self, n: int | None = None) -> bytes:
        return await self.stream.receive_some(n or 65536)

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()

    def get_remote_address(self) -> None:
        return None


class CountingYamux(Yamux):
    """py-libp2p's Yamux, counting the read loops it runs."""

    loops = 0

    async def handle_incoming(self) -> None:
        self.loops += 1
        await super().handle_incoming()


async def test_a_muxer_started_twice_at_once_runs_one_read_loop_and_still_answers_streams() -> None:
    left, right = trio.testing.memory_stream_pair()
    peer = ID.from_pubkey(create_new_key_pair().public_key)
    a, b = CountingYamux(Pipe(left, True), peer), CountingYamux(Pipe(right, False), peer)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start)
            nursery.start_soon(a.start)  # the swarm's add_conn race: the same muxer started twice
            nursery.start_soon(b.start)
            await a.event_started.wait()
            await b.event_started.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert (a.loops, b.loops) == (1, 1), (
                f"read loops: {a.loops} on the muxer started twice, {b.loops} on the other")
            for _ in range(20):  # streams opened from either side are accepted and carry data both ways
                stream = await b.open_stream()
                await stream.write(b"ping")
                accepted = await a.accept_stream()
                assert await accepted.read(4) == b"ping"
                await accepted.write(b"pong")
                assert await stream.read(4) == b"pong"
            nursery.cancel_scope.cancel()
