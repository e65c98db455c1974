"""The requester's live table of workers, fed by validated announcements."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cocoon_node.mesh.announce import Announcement


@dataclass
class WorkerEntry:
    announcement: Announcement
    first_seen: float
    last_seen: float


class WorkerTable:
    """Newest announcement per worker; silent workers expire at their announcement's ``expires_at``."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[bytes, WorkerEntry] = {}
        self.changed = trio.Event()

    def update(self, announcement: Announcement) -> bool:
        """Record an announcement; older seqnos never overwrite newer ones. Returns True if applied."""
        now = self._clock()
        current = self._entries.get(announcement.peer_id)
        if current is not None and current.announcement.seqno >= announcement.seqno:
            return False
        first_seen = current.first_seen if current else now
        self._entries[announcement.peer_id] = WorkerEntry(announcement, first_seen, now)
        self._notify()
        return True

    def remove(self, peer_id: bytes) -> None:
        if self._entries.pop(peer_id, None) is not None:
            self._notify()

    def expire(self) -> list[bytes]:
        """Drop workers whose last announcement has expired; returns their peer ids."""
        now = self._clock()
        gone = [pid for pid, e in self._entries.items() if e.announcement.expires_at <= now]
        for pid in gone:
            del self._entries[pid]
        if gone:
            self._notify()
        return gone

    def live(self) -> list[Announcement]:
        now = self._clock()
        return [e.announcement for e in self._entries.values() if e.announcement.expires_at > now]

    def get(self, peer_id: bytes) -> Announcement | None:
        entry = self._entries.get(peer_id)
        return entry.announcement if entry else None

    def __len__(self) -> int:
        return len(self._entries)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
