"""A per-peer sliding-window rate limit for the small request/response protocols a node serves to anyone
(dial-back, fresh attestation): at most N requests a minute from one peer, in bounded memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import trio

WINDOW_SECONDS = 60.0
MAX_TRACKED_PEERS = 4096


class PeerRateLimit:
    """``allow(peer)`` is True for at most ``per_minute`` calls per peer in any 60 s (trio's clock)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._recent: dict[Hashable, deque[float]] = {}

    def allow(self, peer: Hashable) -> bool:
        now = trio.current_time()
        window = self._recent.setdefault(peer, deque())
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        if len(window) >= self.per_minute:
            return False
        window.append(now)
        if len(self._recent) > MAX_TRACKED_PEERS:  # bounded memory: forget peers idle for a whole window
            for idle in [p for p, w in self._recent.items() if not w or w[-1] <= now - WINDOW_SECONDS]:
                del self._recent[idle]
        return True
