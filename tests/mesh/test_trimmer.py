"""The connection trimmer (cocoon_node/mesh/trimmer.py): a hub that too many peers dialled closes the idle
surplus, keeps busy and protected peers, and leaves young connections alone."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from cocoon_node.mesh import Mesh, MeshSettings
from tests.waiting import wait_until

BUSY = "/cocoon-test/busy/1.0.0"


async def _hub_and_leaves(stack: AsyncExitStack, leaves: int, trim_above: int) -> tuple[Mesh, list[Mesh]]:
    hub = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True, target_peers=1, trim_above=trim_above))
    await stack.enter_async_context(hub.start())
    others = []
    for _ in range(leaves):
        # leaves neither trim nor re-dial (target 0): what the hub closes stays closed
        leaf = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True, target_peers=0, trim_above=0))
        await stack.enter_async_context(leaf.start())
        await leaf.connect(hub.listen_addrs()[0])
        others.append(leaf)
    await wait_until(lambda: len(_peers(hub)) >= leaves, timeout=10)
    return hub, others


def _peers(mesh: Mesh) -> set[ID]:
    assert mesh.host is not None
    return set(mesh.host.get_network().get_connections_map())


async def test_idle_surplus_is_closed_down_to_the_mark() -> None:
    async with AsyncExitStack() as stack:
        hub, leaves = await _hub_and_leaves(stack, 6, trim_above=3)
        assert hub.trimmer is not None
        hub.trimmer.grace = 0.0
        closed = await hub.trimmer.trim_once()
        assert closed == 3, hub.trimmer.stats
        assert len(_peers(hub)) == 3
        assert hub.trimmer.surplus() == []  # nothing more to do at the mark
        assert await hub.trimmer.trim_once() == 0
        # the closed leaves see the hub go: their side of the connection closed too
        gone = [leaf for leaf in leaves if leaf.peer_id not in _peers(hub)]
        await wait_until(lambda: not any(hub.peer_id in _peers(leaf) for leaf in gone), timeout=10)


async def test_busy_protected_and_young_peers_are_kept() -> None:
    async with AsyncExitStack() as stack:
        hub, leaves = await _hub_and_leaves(stack, 5, trim_above=1)
        assert hub.trimmer is not None and hub.host is not None
        release = trio.Event()

        async def hold(stream: Any) -> None:
            await release.wait()
            await stream.close()

        for leaf in leaves:
            leaf.set_stream_handler(BUSY, hold)
        # leaf 0 has a stream of its own protocol open to the hub right now; leaf 1 is protected by name
        busy_stream = await hub.host.new_stream(leaves[0].peer_id, [BUSY])
        hub.protect(lambda: [leaves[1].peer_id])

        # everything is younger than the default grace period: nothing is closed
        assert await hub.trimmer.trim_once() == 0
        assert len(_peers(hub)) == 5

        hub.trimmer.grace = 0.0
        closed = await hub.trimmer.trim_once()
        left = _peers(hub)
        assert leaves[0].peer_id in left and leaves[1].peer_id in left, "busy and protected peers stay"
        assert closed == 3 and len(left) == 2, (closed, hub.trimmer.stats)
        assert hub.trimmer.stats.kept_busy == 1  # one over the mark, kept because it is protected or busy

        release.set()  # the stream ends: leaf 0 is idle now and goes in the next round
        await busy_stream.close()
        await wait_until(lambda: hub.trimmer.surplus() == [leaves[0].peer_id], timeout=10)  # type: ignore[union-attr]
        assert await hub.trimmer.trim_once() == 1
        assert _peers(hub) == {leaves[1].peer_id}


async def test_zero_turns_trimming_off() -> None:
    async with AsyncExitStack() as stack:
        hub, _ = await _hub_and_leaves(stack, 3, trim_above=0)
        assert hub.trimmer is not None
        hub.trimmer.grace = 0.0
        assert hub.trimmer.surplus() == []  # high 0: the node never starts the trimmer (and nothing is surplus)
