"""The peer cache: where our peers listened last run (``peers.json`` in the data dir), so a restart can rejoin
without its bootstrap peers. A damaged or unwritable file only costs that shortcut, never the node."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Entries kept (and dialled at start).
MAX_ENTRIES = 50


def cached_addrs(cache: Path | None, own_peer_id: str) -> list[str]:
    """Addresses remembered in ``cache`` (at most :data:`MAX_ENTRIES`), ours left out; [] if none or unreadable."""
    if cache is None or not cache.exists():
        return []
    try:
        entries = json.loads(cache.read_text())
    except (OSError, ValueError):
        return []
    return [a for a in (entries[:MAX_ENTRIES] if isinstance(entries, list) else [])
            if isinstance(a, str) and not a.endswith(own_peer_id)]


def save_peer_cache(cache: Path, host: Any) -> None:
    """Remember where ``host``'s peers listen: current connections first, then older entries (max 50)."""
    fresh: list[str] = []
    for peer in host.get_connected_peers():
        try:
            known = host.get_peerstore().addrs(peer)[:2]
        except Exception:  # PeerStoreError: connected, but its addresses are not (or no longer) known
            continue
        for maddr in known:
            text = str(maddr)
            if "/tcp/" in text:
                fresh.append(text if "/p2p/" in text else f"{text}/p2p/{peer.to_base58()}")
    try:
        old = json.loads(cache.read_text()) if cache.exists() else []
    except (OSError, ValueError):
        old = []
    merged = list(dict.fromkeys(fresh + [a for a in old if isinstance(a, str)]))[:MAX_ENTRIES]
    try:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged))
        tmp.replace(cache)
    except OSError as exc:
        log.debug("could not save the peer cache: %s", exc)
