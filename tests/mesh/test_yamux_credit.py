"""The pinned yamux patch (cocoon_node/mesh/yamux_credit.py): go-yamux's credit rule, lean frame writes."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.stream_muxer.yamux import yamux

from cocoon_node.mesh import Mesh, MeshSettings
from cocoon_node.mesh import yamux_credit

PROTOCOL = "/cocoon-test/credit/1.0.0"


async def _pair(stack: AsyncExitStack, handler: Any) -> tuple[Mesh, Mesh]:
    """A writer mesh and a reader mesh whose handler for :data:`PROTOCOL` is ``handler``."""
    writer = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
    await stack.enter_async_context(writer.start())
    reader = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
    await stack.enter_async_context(reader.start())
    reader.set_stream_handler(PROTOCOL, handler)
    return writer, reader


def _count_updates(monkeypatch: Any) -> list[int]:
    """Increments of every WINDOW_UPDATE a stream sends from now on."""
    sent: list[int] = []
    original = yamux.YamuxStream.send_window_update

    async def counting(self: Any, increment: int, skip_lock: bool = False) -> None:
        sent.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(yamux.YamuxStream, "send_window_update", counting)
    return sent


async def test_small_reads_send_no_window_update_before_half_the_window(monkeypatch: Any) -> None:
    """100 token-sized frames read one by one: py-libp2p's partial-slack rule answered every other one (~50
    WINDOW_UPDATE frames); go-yamux's rule sends none until half the window (128 KiB) is consumed."""
    sent = _count_updates(monkeypatch)
    frames = 100
    read_one = trio.Semaphore(0)

    async def handler(stream: Any) -> None:
        for _ in range(frames):
            await stream.read(4096)
            read_one.release()

    async with AsyncExitStack() as stack:
        writer, reader = await _pair(stack, handler)
        with trio.fail_after(30):
            stream = await writer.new_stream(reader.peer_id, PROTOCOL, reader.listen_addrs())
            before = len(sent)
            for _ in range(frames):
                await stream.write(b"x" * 60)
                await read_one.acquire()
            updates = len(sent) - before
    assert updates == 0, f"{updates} window updates for {frames} small reads"


async def test_a_reader_still_credits_the_sender_past_its_window(monkeypatch: Any) -> None:
    """Three windows' worth through small reads arrive whole: the sender is credited each half window, in
    updates that add up to what was read."""
    sent = _count_updates(monkeypatch)
    total = 3 * yamux.DEFAULT_WINDOW_SIZE + 1000
    received = bytearray()
    done = trio.Event()

    async def handler(stream: Any) -> None:
        while len(received) < total:
            received.extend(await stream.read(1500))
        done.set()

    async with AsyncExitStack() as stack:
        writer, reader = await _pair(stack, handler)
        with trio.fail_after(60):
            stream = await writer.new_stream(reader.peer_id, PROTOCOL, reader.listen_addrs())
            before = len(sent)
            payload = bytes(i % 251 for i in range(total))
            for i in range(0, total, 32 * 1024):
                await stream.write(payload[i:i + 32 * 1024])
            await done.wait()
            updates = sent[before:]
    assert bytes(received) == payload
    half = yamux.DEFAULT_WINDOW_SIZE // 2
    assert 1 <= len(updates) <= total // half + 1, updates
    assert all(u >= half for u in updates), updates


class _Recorder:
    """The part of a secured connection ``_write_frame`` uses."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


async def test_lean_frame_write_sends_the_same_bytes_and_logs_when_debugging(caplog: Any) -> None:
    frame = yamux.struct.pack(yamux.YAMUX_HEADER_FORMAT, 0, yamux.TYPE_DATA, 0, 7, 3) + b"abc"
    conn: Any = type("Conn", (), {})()
    conn._write_lock = trio.Lock()
    conn.is_initiator_value = True
    conn.secured_conn = _Recorder()
    await yamux_credit._write_frame_lean(conn, frame)
    await yamux_credit._original_write_frame(conn, frame)
    assert conn.secured_conn.writes == [frame, frame]
    with caplog.at_level(logging.DEBUG, logger=yamux.logger.name):
        await yamux_credit._write_frame_lean(conn, frame)
    assert conn.secured_conn.writes[-1] == frame
    assert any("YAMUX TX: type=DATA" in r.getMessage() for r in caplog.records)


def test_install_refuses_another_libp2p_version(monkeypatch: Any) -> None:
    monkeypatch.setattr(yamux_credit, "version", lambda _name: "0.9.0")
    with pytest.raises(RuntimeError, match="pinned to libp2p 0.8.1"):
        yamux_credit.install()


def test_installed_by_the_mesh() -> None:
    assert yamux.YamuxStream._auto_tune_and_send_window_update is yamux_credit._credit_like_go_yamux
    assert yamux.Yamux._write_frame is yamux_credit._write_frame_lean
