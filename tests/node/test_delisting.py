"""Issue 15: a worker killed with SIGKILL is delisted within its announcement TTL (here: at once, because its
connection closed and its port refuses), and a live worker whose connection merely closed stays listed."""

from __future__ import annotations

import signal
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from msgspec.structs import replace  # announcements are msgspec Structs

from cocoon_node.cluster import Cluster, worker_args
from cocoon_node.mesh import Announcement, Mesh, MeshSettings, WorkerTable
from cocoon_node.mesh.liveness import WorkerLiveness

from .conftest import wait_until, worker_ids

TTL = 15  # the default announce_ttl, passed explicitly so the bound below follows it
EXPIRY_TICK = 1.0  # the node drops expired workers once a second
STATUS_POLL = 1.0  # slack for the admin-endpoint round trips of the wait below


async def test_a_sigkilled_worker_is_delisted_within_its_ttl(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, payments=False)
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0"])
        extra = ["--announce-interval", "3", "--announce-ttl", str(TTL)]
        async with trio.open_nursery() as nursery:
            for name in ("w0", "w1"):
                nursery.start_soon(cluster.start_node, name, worker_args(req.addr, "synthetic", extra=extra))
        ids = {cluster.nodes[n].peer_id for n in ("w0", "w1")}

        async def both() -> bool:
            return ids <= await worker_ids(cluster)

        await wait_until(both, timeout=60)
        victim = cluster.nodes["w1"].peer_id
        killed = time.monotonic()
        await cluster.kill("w1", signal.SIGKILL)

        async def gone() -> bool:
            return victim not in await worker_ids(cluster)

        # The bound is the TTL itself (plus the expiry tick and the polling): never later than that.
        await wait_until(gone, timeout=TTL + EXPIRY_TICK + STATUS_POLL, interval=0.2)
        print(f"SIGKILL -> delisted after {time.monotonic() - killed:.1f} s (TTL {TTL} s)")
        assert cluster.nodes["w0"].peer_id in await worker_ids(cluster)


def announcement_of(mesh: Mesh) -> Announcement:
    now = int(time.time())
    return Announcement(
        peer_id=mesh.peer_id.to_bytes(), addrs=tuple(mesh.listen_addrs()), model="m", model_hash=b"\x01" * 32,
        backend="synthetic", synthetic=True, price_prompt=1, price_completion=2, max_concurrent=4, load=0,
        protocols=("/cocoon/inference/1.0.0",), tee_kind="dev-INSECURE", seqno=1, issued_at=now,
        expires_at=now + 600, payout="", v=1,
    )


async def test_closed_connections_delist_only_workers_whose_port_refuses() -> None:
    async with AsyncExitStack() as stack:
        requester = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(requester.start())
        table = WorkerTable()
        assert requester.host is not None
        liveness = WorkerLiveness(requester.host.get_network(), requester.connected_peers, table, grace=0.05)
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(liveness.run)
        boot = (requester.listen_addrs()[0],)
        alive = Mesh(create_new_key_pair(), MeshSettings(bootstrap=boot, local_cluster=True))
        await stack.enter_async_context(alive.start())
        dying = Mesh(create_new_key_pair(), MeshSettings(bootstrap=boot, local_cluster=True))
        async with AsyncExitStack() as dying_stack:
            await dying_stack.enter_async_context(dying.start())
            for worker in (alive, dying):
                table.update(announcement_of(worker))
            await wait_until(lambda: {alive.peer_id, dying.peer_id} <= set(requester.connected_peers()), timeout=20)
            # A live worker's connection closes (a trim, a network blip): it stays listed.
            await requester.host.disconnect(alive.peer_id)
            await wait_until(lambda: liveness.checked >= 1, timeout=20)
        # The dying one stops (its listener closes, as a killed process's does): delisted without waiting on TTL.
        await wait_until(lambda: table.get(dying.peer_id.to_bytes()) is None, timeout=20)
        assert table.get(alive.peer_id.to_bytes()) is not None
        assert liveness.delisted == 1
        # A listed worker we were never connected to, whose stream could not be opened: probed and dropped too.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        ghost = create_new_key_pair()
        ghost_id = ID.from_pubkey(ghost.public_key)
        now = int(time.time())
        table.update(replace(announcement_of(alive), peer_id=ghost_id.to_bytes(), expires_at=now + 600,
                             addrs=(f"/ip4/127.0.0.1/tcp/{closed_port}/p2p/{ghost_id}",)))
        liveness.suspect(ghost_id)
        await wait_until(lambda: table.get(ghost_id.to_bytes()) is None, timeout=20)
        assert table.get(alive.peer_id.to_bytes()) is not None and liveness.delisted == 2
        nursery.cancel_scope.cancel()
