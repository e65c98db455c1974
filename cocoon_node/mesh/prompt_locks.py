"""A pinned patch for py-libp2p 0.8.1: the locks on its per-frame path take an uncontended lock without yielding.

``trio.Lock.acquire`` yields to the scheduler even when nobody holds the lock (a ``cancel_shielded_checkpoint``
after taking it), and py-libp2p takes several such locks for every frame and every read: the connection's
``streams_lock`` for each frame its yamux reader routes, a stream's ``window_lock`` for each credit check,
``NetStream._state_lock`` two or three times per read or write, the TCP stream's read and write locks per
socket call. On an idle loop a yield costs microseconds. On a loaded one each costs a whole pass of the run
queue, *with the lock held*: every other task that wants it parks behind. In a netsim pool of 25 nodes (each
pool's loop ~80 % busy, a pass ~0.1 s late on average) a connection's reader moved a few frames a second,
stream negotiations waited more than their 10 s timeout, and requesters could fetch almost no worker's
attestation (``bench/RESULTS.md``, netsim scale).

:class:`PromptLock` takes a free lock at once, like asyncio's and threading's locks, and parks (trio's own
FIFO hand-off, cancellable) only when the lock is held. Every path through these locks still reaches a real
checkpoint soon after: a socket call, an Event wait, a sleep. :func:`install` swaps it in where py-libp2p
creates those locks. The yamux connection's ``_write_lock`` stays a ``trio.Lock``: :mod:`.yamux_patch`
coalesces the frames of writers that queue on it while its holder yields.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import trio
from libp2p.io import trio as libp2p_trio_io
from libp2p.network.stream import net_stream
from libp2p.stream_muxer.yamux import yamux

from cocoon_node.mesh._pinned import require_pinned_libp2p


class PromptLock:
    """A ``trio.Lock`` whose uncontended ``acquire`` does not yield (see the module docstring).

    Same contract otherwise: one owner, released only by it, FIFO hand-off to parked waiters, a parked
    acquire is cancellable, re-acquiring a held lock raises ``RuntimeError``.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()  # checkpoint_if_cancelled, then park until handed the lock

    def acquire_nowait(self) -> None:
        self._lock.acquire_nowait()

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def statistics(self) -> Any:
        return self._lock.statistics()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release()


#: (class, lock attributes its ``__init__`` creates) that the patch replaces.
PATCHED: tuple[tuple[type, tuple[str, ...]], ...] = (
    (yamux.Yamux, ("streams_lock",)),
    (yamux.YamuxStream, ("window_lock", "close_lock")),
    (net_stream.NetStream, ("_state_lock",)),
    (libp2p_trio_io.TrioTCPStream, ("read_lock", "write_lock")),
)
_originals: dict[type, Any] = {}


def _with_prompt_locks(cls: type, names: tuple[str, ...]) -> Any:
    original = _originals[cls]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for name in names:
            setattr(self, name, PromptLock())

    __init__.__doc__ = f"py-libp2p's {cls.__name__}.__init__, then {', '.join(names)} as PromptLock"
    return __init__


def install() -> None:
    """Wrap the four constructors (idempotent); refuse another py-libp2p, whose locking may differ."""
    require_pinned_libp2p("the prompt-lock patch", "check where libp2p/stream_muxer/yamux/yamux.py, "
                          "network/stream/net_stream.py and io/trio.py create and hold their trio.Locks and "
                          "update cocoon_node/mesh/prompt_locks.py")
    for cls, names in PATCHED:
        if cls in _originals:
            continue
        patched: Any = cls
        _originals[cls] = patched.__init__
        patched.__init__ = _with_prompt_locks(cls, names)
