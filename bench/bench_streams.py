"""CPU per token frame on one libp2p connection carrying many streams (Noise + yamux, both ends in-process).

Two meshes in this process (real TCP on loopback), ``--streams`` streams from one to the other. The writers
tick together, as a worker's streams do on one decode step: at each step every stream writes one
``--size``-byte frame and its reader reads it (one read per frame, as the requester reads token frames).
Reported: process CPU (user + system, both ends) per frame, and the socket writes per frame seen by the
writer's secured connection. CPU per frame is much steadier than latency on a shared machine, and both
ends share one Trio thread, so it is the mesh's whole per-frame cost.

Runs against whatever ``cocoon_node`` is importable, so the same script measures two trees (``PYTHONPATH``).
    .venv/bin/python bench/bench_streams.py [--streams 128] [--steps 60] [--size 60]
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import AsyncExitStack
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.mesh import Mesh, MeshSettings

PROTOCOL = "/cocoon-bench/streams/1.0.0"


async def run(streams: int, steps: int, size: int) -> dict[str, Any]:
    got = trio.Semaphore(0)

    async def handler(stream: Any) -> None:
        pending = 0
        while True:
            pending += len(await stream.read(4096))
            while pending >= size:
                pending -= size
                got.release()

    async with AsyncExitStack() as stack:
        writer = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(writer.start())
        reader = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(reader.start())
        reader.set_stream_handler(PROTOCOL, handler)
        with trio.fail_after(120):
            opened = [await writer.new_stream(reader.peer_id, PROTOCOL, reader.listen_addrs())
                      for _ in range(streams)]
            secured = opened[0].muxed_conn.secured_conn
            inner = secured.write
            writes = 0

            async def counted(data: bytes) -> None:
                nonlocal writes
                writes += 1
                await inner(data)

            secured.write = counted
            frame = b"t" * size
            cpu0, wall0, writes0 = time.process_time(), time.perf_counter(), writes
            for _ in range(steps):
                async with trio.open_nursery() as nursery:
                    for s in opened:
                        nursery.start_soon(s.write, frame)
                for _ in range(streams):
                    await got.acquire()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            frames = streams * steps
            result = {"streams": streams, "steps": steps, "frames": frames,
                      "cpu_us_per_frame": round(cpu / frames * 1e6, 1),
                      "wall_us_per_frame": round(wall / frames * 1e6, 1),
                      "secured_writes_per_frame": round((writes - writes0) / frames, 3)}
            for s in opened:
                await s.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--size", type=int, default=60)
    args = p.parse_args()
    result = trio.run(run, args.streams, args.steps, args.size)
    print(json.dumps({"bench": "streams", **result}))


if __name__ == "__main__":
    main()
