"""The pinned prompt-lock patch (cocoon_node/mesh/prompt_locks.py): a free lock is taken without yielding, a held
one still parks FIFO and cancellably, and py-libp2p's per-frame locks are PromptLocks, so a stream's reader
yields less per frame."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.io.trio import TrioTCPStream
from libp2p.network.stream.net_stream import NetStream
from libp2p.stream_muxer.yamux import yamux

from cocoon_node.mesh import Mesh, MeshSettings, prompt_locks
from cocoon_node.mesh.prompt_locks import PromptLock

PROTOCOL = "/cocoon-test/prompt-locks/1.0.0"


class _Steps(trio.abc.Instrument):
    """Counts the scheduler steps of one task."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def _steps_taking(lock: Any) -> int:
    """How many times the current task yielded to the scheduler while taking ``lock`` (free) and releasing it."""
    steps = _Steps()
    steps.task = trio.lowlevel.current_task()
    trio.lowlevel.add_instrument(steps)
    try:
        async with lock:
            pass
    finally:
        trio.lowlevel.remove_instrument(steps)
    return steps.steps


async def test_a_free_prompt_lock_is_taken_without_yielding() -> None:
    assert await _steps_taking(trio.Lock()) == 1, "trio.Lock yields once on a free acquire (what the patch avoids)"
    assert await _steps_taking(PromptLock()) == 0, "PromptLock yielded on a free acquire"


async def test_a_held_prompt_lock_hands_over_in_order_and_a_parked_waiter_can_be_cancelled() -> None:
    lock, order = PromptLock(), []

    async def take(name: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with lock:
            order.append(name)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await lock.acquire()
            await nursery.start(take, "a")
            cancelled_waiter = trio.CancelScope()

            async def cancellable() -> None:
                with cancelled_waiter:
                    await take("cancelled")

            nursery.start_soon(cancellable)
            await trio.testing.wait_all_tasks_blocked()
            await nursery.start(take, "b")
            assert lock.statistics().tasks_waiting == 3
            cancelled_waiter.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert lock.statistics().tasks_waiting == 2, "the cancelled waiter left the queue"
            lock.release()
    assert order == ["a", "b"]
    assert not lock.locked()


async def test_a_prompt_lock_keeps_trio_lock_errors() -> None:
    lock = PromptLock()
    await lock.acquire()
    with pytest.raises(RuntimeError, match="re-acquire"):
        await lock.acquire()
    other_error: list[BaseException] = []

    async def release_from_another_task() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            other_error.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_from_another_task)
    assert other_error and "don't own" in str(other_error[0])
    lock.release()
    await lock.acquire()
    blocked: list[BaseException] = []

    async def try_now() -> None:
        try:
            lock.acquire_nowait()
        except trio.WouldBlock as exc:
            blocked.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(try_now)
    assert blocked, "acquire_nowait on a held lock must raise WouldBlock"
    lock.release()


async def _reader_steps(frames: int) -> tuple[int, dict[str, str]]:
    """Scheduler steps the handler task takes to read ``frames`` small frames, and the lock types it met."""
    steps, got, kinds = _Steps(), trio.Event(), {}
    read = trio.Semaphore(0)

    async def handler(stream: Any) -> None:
        muxed = stream.muxed_stream
        kinds.update(streams=type(muxed.conn.streams_lock).__name__, window=type(muxed.window_lock).__name__,
                     state=type(stream._state_lock).__name__)
        steps.task = trio.lowlevel.current_task()
        for _ in range(frames):
            await stream.read(4096)
            read.release()
        steps.task = None
        got.set()

    async with AsyncExitStack() as stack:
        writer = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(writer.start())
        reader = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(reader.start())
        reader.set_stream_handler(PROTOCOL, handler)
        trio.lowlevel.add_instrument(steps)
        try:
            with trio.fail_after(30):
                stream = await writer.new_stream(reader.peer_id, PROTOCOL, reader.listen_addrs())
                for _ in range(frames):
                    await stream.write(b"x" * 60)
                    await read.acquire()
                await got.wait()
        finally:
            trio.lowlevel.remove_instrument(steps)
    return steps.steps, kinds


async def test_py_libp2p_locks_are_prompt_and_a_reader_yields_less_per_frame(monkeypatch: Any) -> None:
    """100 frames read one at a time: with py-libp2p's own trio.Locks the reading task takes more scheduler
    steps (each free lock it takes is one more: 5 a frame against 1 when measured) than with the patch's."""
    patched, kinds = await _reader_steps(100)
    assert kinds == {"streams": "PromptLock", "window": "PromptLock", "state": "PromptLock"}, kinds
    for cls, _ in prompt_locks.PATCHED:
        monkeypatch.setattr(cls, "__init__", prompt_locks._originals[cls])
    original, kinds = await _reader_steps(100)
    assert kinds == {"streams": "Lock", "window": "Lock", "state": "Lock"}, kinds
    assert 2 * patched <= original, f"reader steps for 100 frames: {patched} patched, {original} with trio.Lock"


def test_install_covers_the_classes_that_create_the_locks() -> None:
    assert {cls for cls, _ in prompt_locks.PATCHED} == {yamux.Yamux, yamux.YamuxStream, NetStream, TrioTCPStream}
    prompt_locks.install()  # idempotent: installed at import by the mesh, again here
    for cls, _ in prompt_locks.PATCHED:
        assert cls.__init__ is not prompt_locks._originals[cls]
