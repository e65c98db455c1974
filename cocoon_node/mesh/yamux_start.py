"""A pinned fix for py-libp2p 0.8.1's yamux: one read loop per connection, however often ``start`` is called.

``Yamux.start`` returns early only once ``event_started`` is set, and sets it after an ``await`` (starting
its read loop). The swarm's ``add_conn`` can run twice for one muxed connection (py-libp2p's own comment
there: "the race where two concurrent add_conn calls for the same IMuxedConn both passed the early check")
and each call starts the muxer; both calls pass the guard, and the connection gets **two** read loops
competing for the socket's read lock, each taking alternate Noise messages (frames split between them, new
streams unanswered). Found while looking for the stalled streams of netsim's 100-node scale run; that run
does not show that the swarm hits this race there (bench/RESULTS.md), ``tests/mesh/test_yamux_start.py``
shows the two loops. :func:`install` claims the start synchronously, before any await,
so a second call returns as an already-started muxer's does; everything else is py-libp2p's code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import version

from libp2p.stream_muxer.yamux.yamux import Yamux

PINNED_VERSION = "0.8.1"
_CLAIM = "_cocoon_start_claimed"
_original_start: Callable[[Yamux], Awaitable[None]] = Yamux.start


async def _start_once(self: Yamux) -> None:
    if getattr(self, _CLAIM, False):
        return  # another start() is running (or ran) this muxer's read loop
    setattr(self, _CLAIM, True)  # no await before this line: concurrent callers cannot both get here
    await _original_start(self)


def install() -> None:
    """Rebind ``Yamux.start`` (idempotent); refuse another py-libp2p, whose code may differ."""
    found = version("libp2p")
    if found != PINNED_VERSION:
        raise RuntimeError(f"the yamux start fix is pinned to libp2p {PINNED_VERSION}, found {found}: check "
                           "libp2p/stream_muxer/yamux/yamux.py start and update cocoon_node/mesh/yamux_start.py")
    Yamux.start = _start_once  # type: ignore[method-assign]
