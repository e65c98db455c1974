"""The NETSIM-ONLY clock-skew fault: scenario parsing, the node setting (local network only), the skewed
wall clock itself, and what a skewed worker's announcements meet at a validator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from cocoon_node.cli import build_parser, overrides_from_args, skew_wall_clock
from cocoon_node.config import ConfigError, load_config
from cocoon_node.mesh.announce import MAX_CLOCK_SKEW, Announcement, AnnouncementError, AnnouncementValidator
from netsim.scenario import ScenarioError, parse_scenario

BASE = {"name": "t", "duration": 5, "cluster": {"workers": [{"name": "worker", "count": 2}]}}


def run_config(tmp_path: Path, *flags: str) -> Any:
    args = build_parser().parse_args(["run", "--data-dir", str(tmp_path / "node"), *flags])
    return load_config(None, env={}, overrides=overrides_from_args(args))


def test_skew_fault_parses_and_needs_seconds() -> None:
    s = parse_scenario({**BASE, "faults": [{"at": 1.0, "action": "skew", "target": "worker1", "seconds": 90.0,
                                            "duration": 5.0}]})
    assert s.faults[0].seconds == 90.0
    with pytest.raises(ScenarioError, match="seconds"):
        parse_scenario({**BASE, "faults": [{"at": 1.0, "action": "skew", "target": "worker1"}]})
    with pytest.raises(ScenarioError, match="seconds"):
        parse_scenario({**BASE, "faults": [{"at": 1.0, "action": "kill", "target": "worker1", "seconds": 3.0}]})


def test_clock_skew_setting_is_netsim_only(tmp_path: Path) -> None:
    assert run_config(tmp_path, "--netsim-clock-skew", "120").node.netsim_clock_skew == 120.0
    with pytest.raises(ConfigError) as err:
        run_config(tmp_path, "--netsim-clock-skew", "120", "--network", "testnet", "--tee", "tdx")
    assert any("netsim_clock_skew" in p and "refused" in p for p in err.value.problems)


def test_skewed_wall_clock_and_its_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", time.time)  # restored after the test
    monkeypatch.setattr(time, "time_ns", time.time_ns)
    true_now, true_mono = time.time(), time.monotonic()
    skew_wall_clock(3600)
    assert time.time() - true_now >= 3600 - 1 and time.time_ns() // 10**9 - int(true_now) >= 3600 - 1
    assert time.monotonic() - true_mono < 60  # intervals are not skewed
    key = create_new_key_pair()
    now = int(time.time())  # the skewed worker's idea of now
    ahead = Announcement(
        peer_id=ID.from_pubkey(key.public_key).to_bytes(), addrs=(), model="m", model_hash=b"\x01" * 32,
        backend="synthetic", synthetic=True, price_prompt=1, price_completion=1, max_concurrent=1, load=0,
        protocols=("/cocoon/inference/1.0.0",), tee_kind="dev-INSECURE", seqno=1, issued_at=now,
        expires_at=now + 15,
    )
    validator = AnnouncementValidator(clock=lambda: true_now)  # a peer with a true clock
    with pytest.raises(AnnouncementError, match="future"):
        validator.check(ahead.seal(key.private_key), ID.from_pubkey(key.public_key))
    assert 3600 > MAX_CLOCK_SKEW

