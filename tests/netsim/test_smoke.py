"""The smoke scenario end to end: real node processes, a seeded workload, a kill -9 + restart, all invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netsim.cli import run_scenario
from netsim.scenario import ScenarioError, load_scenario, parse_scenario
from netsim.workload import plan

SCENARIOS = Path(__file__).resolve().parents[2] / "netsim" / "scenarios"


def test_every_shipped_scenario_parses() -> None:
    for path in sorted(SCENARIOS.glob("*.toml")):
        assert load_scenario(path).name == path.stem


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ScenarioError):
        parse_scenario({"name": "x", "duration": 1, "cluster": {"workers": [{"name": "w", "colour": "red"}]}})


def test_workload_plan_is_deterministic_for_a_seed() -> None:
    import random

    s = load_scenario(SCENARIOS / "smoke.toml")
    a = plan(s.workload, s.duration, s.requesters, random.Random(7))
    b = plan(s.workload, s.duration, s.requesters, random.Random(7))
    c = plan(s.workload, s.duration, s.requesters, random.Random(8))
    assert a == b and a != c and a


@pytest.mark.slow
def test_smoke_scenario_passes_every_invariant(tmp_path: Path) -> None:
    # run_scenario drives its own trio.run, so this test is sync (pytest-trio leaves it alone).
    report = run_scenario(SCENARIOS / "smoke.toml", out=tmp_path / "out", base_dir=tmp_path, plots=True)
    verdicts = {inv["name"]: inv["verdict"] for inv in report["invariants"]}
    assert all(v in ("PASS", "SKIP") for v in verdicts.values()), report["invariants"]
    for required in ("answers_complete", "no_prompt_to_disallowed_worker", "discovery_converged", "workload_ran",
                     "payments_paid", "no_voucher_lost", "funds_conserved"):
        assert verdicts[required] == "PASS", report["invariants"]
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["requests"]["completed"] >= 10
    assert written["shaping"].startswith("transport (NETSIM-ONLY")  # and says why not netem
    assert written["links"]["latency_ms"] == 5
    assert (tmp_path / "out" / "report.png").stat().st_size > 0
