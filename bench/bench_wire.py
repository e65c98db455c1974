"""Wire benchmark: inference delta frames over one Noise-encrypted yamux stream between two in-process hosts.

Measures (1) frame encode and decode rates in-process (schema validation + msgpack), and (2) frames/s and
MB/s through a real libp2p stream on loopback, one ``write`` per frame as the worker does, the receiver
parsing with ``FrameStream`` like the requester. Text sizes: a one-token delta (~6 chars) and a 1 KiB one.

Prints one JSON line, then one human line per case.
    .venv/bin/python bench/bench_wire.py [--frames 20000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.inference.stream import MAX_FRAME
from cocoon_node.mesh import Mesh, MeshSettings
from cocoon_node.wire import FrameStream, decode_frame, encode_frame

PROTOCOL = "/cocoon-bench/wire/1.0.0"


def delta(text: str) -> dict[str, Any]:
    return {"t": "delta", "id": "req-0123456789abcdef", "text": text, "tokens": 1}


def codec_rates(text: str, seconds: float) -> dict[str, float]:
    frame = delta(text)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            encode_frame("inference", frame, max_frame=MAX_FRAME)
        n += 1000
    enc = n / (time.perf_counter() - t0)
    body = encode_frame("inference", frame, max_frame=MAX_FRAME)[4:]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            decode_frame("inference", body)
        n += 1000
    dec = n / (time.perf_counter() - t0)
    return {"encode_per_s": round(enc), "decode_per_s": round(dec), "frame_bytes": len(body) + 4}


class _Reader:
    """Adapts a libp2p stream to FrameStream's read/write (EOF raises in py-libp2p)."""

    def __init__(self, stream: Any) -> None:
        self._s = stream

    async def read(self, n: int | None = None) -> bytes:
        try:
            data: bytes = await self._s.read(n)
            return data
        except Exception:
            return b""

    async def write(self, data: bytes) -> None:
        await self._s.write(data)


async def stream_rate(text: str, frames: int) -> dict[str, float]:
    done = trio.Event()
    received = {"frames": 0, "bytes": 0, "end": 0.0}

    async def handler(stream: Any) -> None:
        fs = FrameStream(_Reader(stream), "inference", max_frame=MAX_FRAME)
        while received["frames"] < frames:
            frame = await fs.receive()
            if frame is None:
                break
            received["frames"] += 1
            received["bytes"] += len(frame["text"])
        received["end"] = time.perf_counter()
        done.set()

    async with AsyncExitStack() as stack:
        server = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(server.start())
        server.set_stream_handler(PROTOCOL, handler)
        client = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(client.start())
        with trio.fail_after(30):
            stream = await client.new_stream(server.peer_id, PROTOCOL, server.listen_addrs())
        payload = encode_frame("inference", delta(text), max_frame=MAX_FRAME)
        t0 = time.perf_counter()
        with trio.fail_after(300):
            for _ in range(frames):
                await stream.write(payload)
            await done.wait()
        elapsed = received["end"] - t0
        await stream.close()
    return {"frames": frames, "frames_per_s": round(frames / elapsed),
            "mb_per_s_wire": round(frames * len(payload) / elapsed / 1e6, 2),
            "mb_per_s_text": round(received["bytes"] / elapsed / 1e6, 2), "frame_bytes": len(payload)}


async def main_async(frames: int, seconds: float) -> dict[str, Any]:
    cases = {"token_delta": "hello ", "1KiB_delta": "x" * 1024}
    out: dict[str, Any] = {"bench": "wire", "cpus": os.cpu_count(), "codec": {}, "stream": {}}
    for name, text in cases.items():
        out["codec"][name] = codec_rates(text, seconds)
        out["stream"][name] = await stream_rate(text, frames)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    out = trio.run(main_async, args.frames, args.seconds)
    print(json.dumps(out))
    for name in out["codec"]:
        c, s = out["codec"][name], out["stream"][name]
        print(f"{name} ({c['frame_bytes']} B): encode {c['encode_per_s']}/s, decode {c['decode_per_s']}/s; "
              f"stream {s['frames_per_s']} frames/s = {s['mb_per_s_wire']} MB/s on the wire", file=sys.stdout)


if __name__ == "__main__":
    main()
