"""The peer cache (mesh/peer_cache.py): what a restarted node re-dials, and that a damaged file costs nothing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import trio

from cocoon_node.mesh.peer_cache import MAX_ENTRIES, PeerCache

ME = "12D3KooWme"


async def _redialled(cache: Path) -> list[str]:
    """What a restarted node dials from ``cache``."""
    dialled: list[str] = []

    async def dial(addr: str) -> None:
        dialled.append(addr)

    host = SimpleNamespace(get_id=lambda: SimpleNamespace(to_base58=lambda: ME))
    with trio.fail_after(10):
        await PeerCache(cache, host, dial, dial_timeout=1).dial_all()  # type: ignore[arg-type]
    return dialled


async def test_cached_addresses_leave_us_out_and_survive_a_damaged_file(tmp_path: Path) -> None:
    cache = tmp_path / "peers.json"
    assert await _redialled(cache) == []  # none written yet
    cache.write_text(json.dumps([f"/ip4/127.0.0.1/tcp/{4000 + i}/p2p/peer{i}" for i in range(80)]
                                + [f"/ip4/127.0.0.1/tcp/1/p2p/{ME}", 7]))
    got = await _redialled(cache)
    assert len(got) == MAX_ENTRIES and sorted(got) == sorted(f"/ip4/127.0.0.1/tcp/{4000 + i}/p2p/peer{i}"
                                                             for i in range(MAX_ENTRIES))
    cache.write_text("/ip4/1.2.3.4/tcp/1 {not json")
    assert await _redialled(cache) == []
    cache.write_text(json.dumps({"not": "a list"}))
    assert await _redialled(cache) == []


async def _no_dial(addr: str) -> None:
    raise AssertionError("saving dials nobody")


class FakeHost:
    """Connected peers and their addresses, as py-libp2p's host reports them (one peer's are unknown)."""

    def __init__(self, addrs: dict[str, list[str]], unknown: str) -> None:
        self._addrs, self._unknown = addrs, unknown

    def get_connected_peers(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n, to_base58=lambda n=n: n) for n in [*self._addrs, self._unknown]]

    def get_peerstore(self) -> SimpleNamespace:
        def addrs(peer: SimpleNamespace) -> list[str]:
            if peer.name == self._unknown:
                raise KeyError(peer.name)  # py-libp2p's PeerStoreError: connected, addresses not known
            return self._addrs[peer.name]

        return SimpleNamespace(addrs=addrs)


def test_saving_puts_current_connections_first_and_keeps_older_entries(tmp_path: Path) -> None:
    cache = tmp_path / "peers.json"
    cache.write_text(json.dumps(["/ip4/10.0.0.9/tcp/9/p2p/old", "/ip4/127.0.0.1/tcp/4001/p2p/a"]))
    host = FakeHost({"a": ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"],
                     "b": ["/ip4/127.0.0.1/tcp/4002/p2p/b"]}, unknown="c")
    PeerCache(cache, host, _no_dial, dial_timeout=1).save()  # type: ignore[arg-type]
    assert json.loads(cache.read_text()) == ["/ip4/127.0.0.1/tcp/4001/p2p/a", "/ip4/127.0.0.1/tcp/4002/p2p/b",
                                             "/ip4/10.0.0.9/tcp/9/p2p/old"]  # TCP only, no duplicates
    assert not cache.with_suffix(".tmp").exists()  # written through a temporary file, then renamed
