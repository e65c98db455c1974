"""Where our peers listen, remembered across restarts, so a restarted node finds the mesh again even when its
configured bootstrap peers are gone (or it was itself the bootstrap)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

log = logging.getLogger(__name__)

MAX_ENTRIES = 50


class PeerCache:
    """A small JSON file of multiaddrs: current connections first, then older entries."""

    def __init__(self, path: Path, host: IHost, dial: Callable[[str], Awaitable[object]], *,
                 dial_timeout: float) -> None:
        self.path = path
        self._host = host
        self._dial = dial
        self._dial_timeout = dial_timeout

    async def dial_all(self) -> None:
        """Re-dial peers remembered from the last run (bounded, in parallel, failures ignored)."""
        if not self.path.exists():
            return
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        me = self._host.get_id().to_base58()
        async with trio.open_nursery() as nursery:
            for addr in entries[:MAX_ENTRIES] if isinstance(entries, list) else []:
                if isinstance(addr, str) and not addr.endswith(me):
                    nursery.start_soon(self._dial_quietly, addr)

    async def _dial_quietly(self, addr: str) -> None:
        with trio.move_on_after(self._dial_timeout):
            try:
                await self._dial(addr)
            except* Exception as group:
                log.debug("cached peer %s unreachable: %s", addr, group.exceptions)

    def save(self) -> None:
        """Remember where our peers listen: current connections first, then older entries (max 50)."""
        fresh: list[str] = []
        for peer in self._host.get_connected_peers():
            try:
                known = self._host.get_peerstore().addrs(peer)[:2]
            except Exception:  # PeerStoreError: connected, but its addresses are not (or no longer) known
                continue
            for maddr in known:
                text = str(maddr)
                if "/tcp/" in text:
                    fresh.append(text if "/p2p/" in text else f"{text}/p2p/{peer.to_base58()}")
        try:
            old = json.loads(self.path.read_text()) if self.path.exists() else []
        except (OSError, ValueError):
            old = []
        merged = list(dict.fromkeys(fresh + [a for a in old if isinstance(a, str)]))[:MAX_ENTRIES]
        try:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(merged))
            tmp.replace(self.path)
        except OSError as exc:
            log.debug("could not save the peer cache: %s", exc)

    async def watch(self) -> None:
        """Save whenever the set of connected peers changes (checked every 2 s)."""
        last: set[ID] = set()
        while True:
            await trio.sleep(2)
            now = set(self._host.get_connected_peers())
            if now != last:
                self.save()
                last = now
