"""The mesh's yamux setting: fewer WINDOW_UPDATE frames than reads (py-libp2p sends one per read by default,
one encrypted frame back for every token frame a requester reads)."""

from __future__ import annotations

from typing import Any

import trio
from libp2p.stream_muxer.yamux import yamux

from tests.conftest import started_hosts

PROTOCOL = "/cocoon-test/window/1.0.0"
FRAMES = 100


async def test_a_reader_sends_fewer_window_updates_than_it_reads(monkeypatch: Any) -> None:
    updates = 0
    original = yamux.YamuxStream.send_window_update

    async def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal updates
        updates += 1
        await original(self, *args, **kwargs)

    monkeypatch.setattr(yamux.YamuxStream, "send_window_update", counting)
    async with started_hosts(2) as (writer, reader):
        read_one = trio.Semaphore(0)

        async def handler(stream: Any) -> None:
            for _ in range(FRAMES):
                await stream.read(4096)  # one small frame per read, as a requester reads token frames
                read_one.release()

        reader.set_stream_handler(PROTOCOL, handler)
        with trio.fail_after(30):
            stream = await writer.new_stream(reader.peer_id, PROTOCOL, reader.listen_addrs())
            before = updates
            for _ in range(FRAMES):
                await stream.write(b"x" * 60)
                await read_one.acquire()  # the next frame only after this one was read on its own
        assert updates - before <= FRAMES * 0.6, f"{updates - before} window updates for {FRAMES} reads"
