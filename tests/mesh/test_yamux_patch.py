"""The pinned yamux patch (cocoon_node/mesh/yamux_patch.py): go-yamux's credit rule, coalesced frame writes,
buffered frame bodies read without a timer."""

from __future__ import annotations

import importlib
import logging
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.network.connection.exceptions import RawConnError
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux import yamux

from cocoon_node.mesh import Mesh, MeshSettings, yamux_patch

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
    """The part of a secured connection ``_write_frame`` uses: records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)
        await trio.lowlevel.checkpoint()


def _conn() -> Any:
    conn: Any = type("Conn", (), {})()
    conn._write_lock = trio.Lock()
    conn.is_initiator_value = True
    conn.secured_conn = _Recorder()
    return conn


def _frame(stream_id: int, payload: bytes) -> bytes:
    return yamux.struct.pack(yamux.YAMUX_HEADER_FORMAT, 0, yamux.TYPE_DATA, 0, stream_id, len(payload)) + payload


async def test_frames_waiting_for_the_lock_go_out_in_one_write_in_call_order() -> None:
    conn = _conn()
    frames = [_frame(i, bytes([i]) * 3) for i in range(1, 6)]
    await yamux_patch._write_frame_coalescing(conn, frames[0])
    assert conn.secured_conn.writes == [frames[0]]  # alone: the frame as it is
    async with trio.open_nursery() as nursery:
        await conn._write_lock.acquire()  # a write in flight: the next four queue behind it
        for f in frames[1:]:
            nursery.start_soon(yamux_patch._write_frame_coalescing, conn, f)
            await trio.testing.wait_all_tasks_blocked()
        conn._write_lock.release()
    assert conn.secured_conn.writes == [frames[0], b"".join(frames[1:])]


async def test_a_writer_cancelled_while_waiting_sends_nothing_and_the_rest_still_go() -> None:
    conn = _conn()
    a, b, c = _frame(1, b"a"), _frame(2, b"b"), _frame(3, b"c")
    async with trio.open_nursery() as nursery:
        await conn._write_lock.acquire()
        cancelled = trio.CancelScope()

        async def write_b() -> None:
            with cancelled:
                await yamux_patch._write_frame_coalescing(conn, b)

        nursery.start_soon(yamux_patch._write_frame_coalescing, conn, a)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(write_b)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(yamux_patch._write_frame_coalescing, conn, c)
        await trio.testing.wait_all_tasks_blocked()
        cancelled.cancel()
        await trio.testing.wait_all_tasks_blocked()
        conn._write_lock.release()
    assert conn.secured_conn.writes == [a + c]


async def test_a_failed_write_fails_every_writer_of_its_batch() -> None:
    conn = _conn()

    async def broken(data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        raise RawConnError("connection reset")

    conn.secured_conn.write = broken
    failures: list[BaseException] = []

    async def write(f: bytes) -> None:
        try:
            await yamux_patch._write_frame_coalescing(conn, f)
        except RawConnError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        await conn._write_lock.acquire()
        for i in range(3):
            nursery.start_soon(write, _frame(i + 1, b"x"))
            await trio.testing.wait_all_tasks_blocked()
        conn._write_lock.release()
    assert len(failures) == 3


async def test_with_debug_logging_each_frame_is_written_and_logged_as_before(caplog: Any) -> None:
    conn = _conn()
    frame = _frame(7, b"abc")
    with caplog.at_level(logging.DEBUG, logger=yamux.logger.name):
        await yamux_patch._write_frame_coalescing(conn, frame)
    assert conn.secured_conn.writes == [frame]
    assert any("YAMUX TX: type=DATA" in r.getMessage() for r in caplog.records)


async def test_many_streams_at_once_arrive_intact_in_fewer_writes_than_frames(monkeypatch: Any) -> None:
    """64 streams each writing 20 token-sized frames at the same moments, as a worker's streams do on one
    decode step: every reader gets exactly its own bytes, in order, and the connection wrote fewer times."""
    streams, frames = 64, 20
    secure_writes: list[int] = []
    got: dict[int, bytearray] = {}
    done = trio.Semaphore(0)

    async def handler(stream: Any) -> None:
        first = await stream.read(1)
        buf = got.setdefault(first[0], bytearray(first))
        while len(buf) < 1 + frames * 60:
            buf.extend(await stream.read(4096))
        done.release()

    async with AsyncExitStack() as stack:
        writer, reader = await _pair(stack, handler)
        with trio.fail_after(60):
            opened = [await writer.new_stream(reader.peer_id, PROTOCOL, reader.listen_addrs())
                      for _ in range(streams)]
            conn = opened[0].muxed_conn
            inner = conn.secured_conn.write

            async def counted(data: bytes) -> None:
                secure_writes.append(len(data))
                await inner(data)

            monkeypatch.setattr(conn.secured_conn, "write", counted)
            tick = trio.Event()

            async def write_all(i: int, stream: Any) -> None:
                await stream.write(bytes([i]))
                await tick.wait()
                for n in range(frames):
                    await stream.write(bytes([i, n]) * 30)

            async with trio.open_nursery() as nursery:
                for i, stream in enumerate(opened):
                    nursery.start_soon(write_all, i, stream)
                await trio.testing.wait_all_tasks_blocked()
                before = len(secure_writes)
                tick.set()
            for _ in range(streams):
                await done.acquire()
            writes = len(secure_writes) - before
    for i in range(streams):
        assert bytes(got[i]) == bytes([i]) + b"".join(bytes([i, n]) * 30 for n in range(frames))
    assert writes < streams * frames / 2, f"{writes} writes for {streams * frames} frames"


async def test_a_body_already_buffered_is_read_without_a_timer(monkeypatch: Any) -> None:
    session = SecureSession.__new__(SecureSession)  # only its read buffer is used
    session._reset_internal_buffer()
    session._fill(b"first-body|rest")
    conn: Any = type("Conn", (), {})()
    conn.secured_conn = session
    waited: list[int] = []

    async def slow_path(self: Any, length: int) -> bytes:
        waited.append(length)
        return b"?" * length

    monkeypatch.setattr(yamux_patch, "_original_read_data_body", slow_path)
    assert await yamux_patch._read_data_body_buffered(conn, 11) == b"first-body|"
    assert waited == []
    assert await yamux_patch._read_data_body_buffered(conn, 10) == b"?" * 10  # 4 buffered: py-libp2p's read
    assert waited == [10]


def test_install_refuses_another_libp2p_version(monkeypatch: Any) -> None:
    monkeypatch.setattr(importlib.import_module("cocoon_node.mesh._pinned"), "version", lambda _name: "0.9.0")
    with pytest.raises(RuntimeError, match=r"pinned to libp2p 0\.8\.1"):
        yamux_patch.install()


def test_installed_by_the_mesh() -> None:
    assert yamux.YamuxStream._auto_tune_and_send_window_update is yamux_patch._credit_like_go_yamux
    assert yamux.Yamux._write_frame is yamux_patch._write_frame_coalescing
    assert yamux.Yamux._read_data_body is yamux_patch._read_data_body_buffered
