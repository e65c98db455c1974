"""The NETSIM-ONLY clock-skew fault: scenario parsing, netsim.node's ``--clock-skew`` (local network only; the
production CLI has no such flag), the skewed wall clock itself, and what a skewed worker's announcements meet
at a validator."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from cocoon_node.cli import build_parser, overrides_from_args
from cocoon_node.config import load_config
from cocoon_node.mesh.announce import MAX_CLOCK_SKEW, Announcement, AnnouncementError, AnnouncementValidator
from netsim.lifecycle import Lifecycle
from netsim.node import clock_skew_problems, skew_wall_clock
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


def test_clock_skew_is_netsim_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):  # cocoon-node itself has no clock-skew flag or setting
        build_parser().parse_args(["run", "--data-dir", str(tmp_path / "node"), "--netsim-clock-skew", "120"])
    assert "unrecognized arguments: --netsim-clock-skew" in capsys.readouterr().err
    local = run_config(tmp_path)
    assert not hasattr(local.node, "netsim_clock_skew")
    assert clock_skew_problems(local, 120.0) == []
    testnet = dataclasses.replace(local, node=dataclasses.replace(local.node, network="testnet"))
    assert clock_skew_problems(testnet, 0.0) == []
    (problem,) = clock_skew_problems(testnet, 120.0)
    assert "--clock-skew" in problem and "refused outside the local network" in problem


def test_a_skewed_restart_starts_through_netsim_node() -> None:
    """The skew fault's restart command is netsim's entry point with --clock-skew (the node flags stay plain)."""
    ctx: Any = type("Ctx", (), {"links": None})()
    lifecycle = Lifecycle(ctx)
    assert lifecycle.command() is None  # an honest node without shaping: plain ``python -m cocoon_node``
    assert lifecycle.command(clock_skew=90.0)[-4:] == ["-m", "netsim.node", "--clock-skew", "90.0"]
    ctx.links = type("Links", (), {"path": Path("links.json")})()
    assert lifecycle.command(clock_skew=-30.0)[-6:] == ["-m", "netsim.node", "--clock-skew", "-30.0",
                                                       "--link-table", "links.json"]


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
        expires_at=now + 15, payout="", v=1,
    )
    validator = AnnouncementValidator(clock=lambda: true_now)  # a peer with a true clock
    with pytest.raises(AnnouncementError, match="future"):
        validator.check(ahead.seal(key.private_key), ID.from_pubkey(key.public_key))
    assert 3600 > MAX_CLOCK_SKEW

