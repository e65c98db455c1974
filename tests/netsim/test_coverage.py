"""netsim's scale invariants (issue 15): answered_fraction and workers_verified, read from a run's record."""

from __future__ import annotations

from typing import Any

from netsim.report import invariants
from netsim.scenario import parse_scenario
from netsim.simdata import SimData, SimNode
from netsim.workload import RequestResult


def run_record(*, answered: int, total: int, verified: dict[str, set[str]], **inv: Any) -> SimData:
    s = parse_scenario({"name": "scale-unit", "duration": 5, "cluster": {"workers": [{"name": "w", "count": 3}]},
                        "invariants": {"min_completed": 0, **inv}})
    data = SimData(scenario=s, seed=1)
    for i in range(3):
        data.nodes[f"w{i}"] = SimNode(f"w{i}", "worker", "w", peer_id=f"peer-w{i}", state="up")
    for name, peers in verified.items():
        data.nodes[name] = SimNode(name, "requester", None, peer_id=f"peer-{name}", state="up")
        # the gate's summary: peer -> asdict(Verdict); a worker it rejected is there too, and does not count
        summary = {p: {"ok": p in peers} for p in ("peer-w0", "peer-w1", "peer-w2")}
        data.final_status[name] = {"attestation": summary}
    data.results = [RequestResult(index=i, at=0.0, requester="r0", stream=False, max_tokens=4, ok=i < answered,
                                  cause="ok" if i < answered else "status_503")
                    for i in range(total)]
    return data


def verdicts(data: SimData) -> dict[str, dict[str, str]]:
    return {i["name"]: i for i in invariants(data)}


def test_answered_fraction_passes_at_the_bound_and_fails_below() -> None:
    everyone = {"r0": {"peer-w0", "peer-w1", "peer-w2"}}
    at = verdicts(run_record(answered=19, total=20, verified=everyone, min_answered_fraction=0.95))
    assert at["answered_fraction"]["verdict"] == "PASS", at["answered_fraction"]
    below = verdicts(run_record(answered=18, total=20, verified=everyone, min_answered_fraction=0.95))
    assert below["answered_fraction"]["verdict"] == "FAIL", below["answered_fraction"]
    assert "90.0% of 20" in below["answered_fraction"]["detail"]
    none_sent = verdicts(run_record(answered=0, total=0, verified=everyone, min_answered_fraction=0.95))
    assert none_sent["answered_fraction"]["verdict"] == "FAIL"  # no request at all is no evidence
    assert "answered_fraction" not in verdicts(run_record(answered=0, total=20, verified=everyone))


def test_workers_verified_needs_every_live_worker_at_every_requester() -> None:
    full = {"r0": {"peer-w0", "peer-w1", "peer-w2"}, "r1": {"peer-w0", "peer-w1", "peer-w2"}}
    ok = verdicts(run_record(answered=1, total=1, verified=full, all_workers_verified=True))
    assert ok["workers_verified"]["verdict"] == "PASS", ok["workers_verified"]
    assert "r0 3/3" in ok["workers_verified"]["detail"]
    partial = {"r0": {"peer-w0", "peer-w1", "peer-w2"}, "r1": {"peer-w0", "peer-w1"}}
    bad = verdicts(run_record(answered=1, total=1, verified=partial, all_workers_verified=True))
    assert bad["workers_verified"]["verdict"] == "FAIL", bad["workers_verified"]
    assert "r1: 1 not verified" in bad["workers_verified"]["detail"]
    # a worker that was killed need not be verified any more
    data = run_record(answered=1, total=1, verified=partial, all_workers_verified=True)
    data.nodes["w2"].state = "dead"
    assert verdicts(data)["workers_verified"]["verdict"] == "PASS"
    assert "workers_verified" not in verdicts(run_record(answered=1, total=1, verified=partial))
