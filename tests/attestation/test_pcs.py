"""The worker's collateral fetch and cache against a local PCCS (127.0.0.1) serving recorded Intel collateral.

Intel's real service cannot be reached from tests; the fake speaks its wire format (fake_pccs.py) and the
collateral is genuine, so what the fetch assembles must equal the recording field for field and verify.
"""

from __future__ import annotations

import logging
import stat
from datetime import timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from cocoon_node.attestation.collateral import decode_tdx_collateral
from cocoon_node.attestation.pcs import CollateralFetchError, TdxCollateralCache, fetch_tdx_collateral

from .fake_pccs import fake_pccs
from .test_collateral_real import AFTER, COLLATERAL, INSIDE, QUOTE, WINDOW


async def test_fetch_assembles_the_recorded_collateral() -> None:
    with trio.fail_after(10):
        async with fake_pccs(COLLATERAL) as pccs, httpx.AsyncClient(timeout=5) as client:
            got = await fetch_tdx_collateral(QUOTE, pccs.url, client)
    assert got == COLLATERAL  # byte for byte, including the signed JSON texts
    assert pccs.paths[0] == "/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
    assert pccs.paths[1] == "/tdx/certification/v4/tcb?fmspc=B0C06F000000"
    assert pccs.paths[3] == "/sgx/certification/v4/rootcacrl"


async def test_cache_fetches_once_stores_0600_and_ships(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with fake_pccs(COLLATERAL) as pccs:
            cache = TdxCollateralCache(tmp_path / "c", pccs.url, clock=lambda: INSIDE)
            first = await cache.for_quote(QUOTE)
            hits = len(pccs.paths)
            second = await cache.for_quote(QUOTE)
    assert decode_tdx_collateral(first) == COLLATERAL and second == first
    assert hits == 4 and len(pccs.paths) == 4 and cache.fetches == 1  # the second came from the disk cache
    (path,) = (tmp_path / "c").iterdir()
    assert path.name == "tdx-collateral-b0c06f000000-platform.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a new cache object (a restart) reads it back without fetching
    again = TdxCollateralCache(tmp_path / "c", "http://127.0.0.1:9", clock=lambda: INSIDE)
    assert await again.for_quote(QUOTE) == first and again.fetches == 0


async def test_expired_cache_refetches_and_expired_answers_are_not_shipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [INSIDE]
    with trio.fail_after(10):
        async with fake_pccs(COLLATERAL) as pccs:
            cache = TdxCollateralCache(tmp_path, pccs.url, clock=lambda: now[0])
            assert await cache.for_quote(QUOTE)
            now[0] = AFTER  # the cached copy is past its nextUpdate: fetch again
            with caplog.at_level(logging.WARNING):
                shipped = await cache.for_quote(QUOTE)
    assert cache.fetches == 2 and len(pccs.paths) == 8
    assert shipped == b""  # the PCCS still serves the old collateral: expired, so not shipped
    assert "FAILED" in caplog.text and "WITHOUT collateral" in caplog.text


async def test_refresh_margin_keeps_shipping_the_cached_copy_when_the_pccs_is_down(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [INSIDE]
    with trio.fail_after(10):
        async with fake_pccs(COLLATERAL) as pccs:
            cache = TdxCollateralCache(tmp_path, pccs.url, clock=lambda: now[0], refresh_margin=timedelta(days=2))
            first = await cache.for_quote(QUOTE)
            pccs.status = 500
            now[0] = WINDOW.next_update - timedelta(days=1)  # inside the margin: refresh, which fails
            with caplog.at_level(logging.WARNING):
                shipped = await cache.for_quote(QUOTE)
    assert shipped == first and cache.failures == 1
    assert "HTTP 500" in caplog.text and "shipping the cached collateral" in caplog.text


async def test_unreachable_or_bad_pccs_ships_nothing_and_says_why(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with fake_pccs(COLLATERAL) as pccs:
            port = pccs.port
        cache = TdxCollateralCache(tmp_path / "a", f"http://127.0.0.1:{port}", clock=lambda: INSIDE, timeout=2)
        with caplog.at_level(logging.WARNING):
            assert await cache.for_quote(QUOTE) == b""
        assert "FAILED" in caplog.text and f"127.0.0.1:{port}" in caplog.text
        sig = bytearray(COLLATERAL.tcb_info_signature)
        sig[0] ^= 1
        async with fake_pccs(msgspec.structs.replace(COLLATERAL, tcb_info_signature=bytes(sig))) as forged:
            cache = TdxCollateralCache(tmp_path / "b", forged.url, clock=lambda: INSIDE)
            assert await cache.for_quote(QUOTE) == b""  # the worker checks before it ships or caches
        assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())
        async with fake_pccs(COLLATERAL) as pccs, httpx.AsyncClient(timeout=5) as client:
            pccs.status = 404
            with pytest.raises(CollateralFetchError, match="HTTP 404"):
                await fetch_tdx_collateral(QUOTE, pccs.url, client)

