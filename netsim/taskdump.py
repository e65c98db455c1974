"""NETSIM-ONLY debugging aid: where every Trio task of a pool process is waiting, grouped by stack.

A pool process that stalls while idle (streams not answered, low CPU) is waiting on something; py-spy sees
only the thread, not the suspended tasks. ``kill -USR1 <pool pid>`` writes one summary to stderr: each
distinct await stack (innermost frame last) with the number of tasks parked on it, most common first, and
how long the longest of them has shown that same stack at every dump since (a task that loops back to the
same line between dumps looks parked too; and a task at ``trio/_sync.py``'s ``cancel_shielded_checkpoint``
after an uncontended ``acquire`` is runnable, waiting for its turn, not for the lock: ``_lot.park`` is the wait).
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TextIO

import trio


def _frames(coro: Any) -> Iterator[FrameType]:
    # Walks a suspended coroutine's await chain (coroutines, async generators' asend, generators).
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            yield frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)


def _tasks(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _tasks(child)


def stack_of(task: trio.lowlevel.Task) -> tuple[str, ...]:
    return tuple(f"{f.f_code.co_filename.rsplit('site-packages/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}"
                 for f in _frames(task.coro))


_seen: dict[int, tuple[tuple[str, ...], float]] = {}  # id(task) -> (stack, since when parked on it)


def summary(root: trio.lowlevel.Task, top: int = 1000) -> str:
    now = trio.current_time()
    stacks: Counter[tuple[str, ...]] = Counter()
    oldest: dict[tuple[str, ...], float] = {}
    for task in _tasks(root):
        stack = stack_of(task)
        stacks[stack] += 1
        prev = _seen.get(id(task))
        since = prev[1] if prev is not None and prev[0] == stack else now
        _seen[id(task)] = (stack, since)
        oldest[stack] = max(oldest.get(stack, 0.0), now - since)
    lines = [f"== {sum(stacks.values())} tasks, {len(stacks)} distinct stacks"]
    for stack, count in stacks.most_common(top):
        lines.append(f"-- {count} tasks, parked here up to {oldest[stack]:.1f} s (since an earlier dump)")
        lines.extend(f"   {frame}" for frame in stack[-16:])
    return "\n".join(lines)


async def dump_on_sigusr1(hosts: Callable[[], list[Any]], out: TextIO = sys.stderr) -> None:
    """Runs forever; every SIGUSR1 writes :func:`summary` of the whole task tree and
    :func:`connection_pairs` of ``hosts()`` to ``out``."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            print(summary(root), file=out, flush=True)
            print(connection_pairs(hosts()), file=out, flush=True)


_LINKS = ("muxed_conn", "secured_conn", "conn", "read_writer", "read_write_closer", "stream", "socket")


def _socket_of(obj: Any, depth: int = 0) -> Any:
    # SwarmConn -> muxer -> secure session -> Noise read-writer -> RawConnection -> TrioTCPStream -> socket.
    if hasattr(obj, "getpeername"):
        return obj
    if depth > 9:
        return None
    for name in _LINKS:
        inner = getattr(obj, name, None)
        if inner is not None and inner is not obj:
            found = _socket_of(inner, depth + 1)
            if found is not None:
                return found
    return None


def connection_pairs(hosts: list[Any]) -> str:
    """Connections one pooled host holds whose other end, also in this process, is no longer held by the
    peer's swarm (an orphan: the dialer's streams on it are never answered)."""
    held: dict[tuple[Any, Any], str] = {}
    for i, host in enumerate(hosts):
        if host is None:
            continue
        for peer, conns in host.get_network().get_connections_map().items():
            for conn in conns:
                sock = _socket_of(conn)
                try:
                    pair = (sock.getsockname(), sock.getpeername())
                except (AttributeError, OSError):
                    continue
                held[pair] = f"node {i} -> {str(peer)[-8:]}"
    ours = {local for local, _ in held}
    orphans = [f"   {who} {pair[0]}->{pair[1]}" for pair, who in held.items()
               if pair[1] in ours and (pair[1], pair[0]) not in held]
    in_pool = sum(1 for _, remote in held if remote in ours)
    return "\n".join([f"== {len(held)} connections held, {in_pool} inside this pool, {len(orphans)} orphaned",
                      *orphans[:40]])
