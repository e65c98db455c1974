"""Scenario parsing of the adversaries and the report's per-adversary invariants (they must be able to FAIL)."""

from __future__ import annotations

from typing import Any

import pytest

from netsim.report import adversary_lines, invariants
from netsim.runner import SimData, SimNode
from netsim.scenario import ScenarioError, parse_scenario
from netsim.workload import RequestResult

BASE: dict[str, Any] = {"name": "a", "duration": 5, "cluster": {"workers": [{"name": "worker"}]}}


def scenario(**extra: Any) -> Any:
    raw = {**BASE, **extra}
    raw["cluster"] = {**BASE["cluster"], **extra.get("cluster", {})}
    raw["cluster"]["workers"] = BASE["cluster"]["workers"] + extra.get("cluster", {}).get("workers", [])
    return parse_scenario(raw)


def test_adversary_kinds_parse_strictly() -> None:
    s = scenario(cluster={"requester_args": ["--credit-window", "1"],
                          "workers": [{"name": "o", "adversary": "overclaim"}, {"name": "e", "adversarial": True}]},
                 nonpayer={"requests": 2})
    kinds = {g.name: g.adversary_kind for g in s.workers}
    assert kinds == {"worker": None, "o": "overclaim", "e": "bad_model_hash"}
    assert s.nonpayer is not None and s.nonpayer.requests == 2 and s.requester_args == ("--credit-window", "1")
    for bad in ({"cluster": {"workers": [{"name": "x", "adversary": "sneaky"}]}},
                {"cluster": {"workers": [{"name": "x", "adversary": "overclaim", "adversarial": True}]}},
                {"cluster": {"workers": [{"name": "x", "adversary": "stale_close", "stale_after": 1}]}},
                {"nonpayer": {"requests": 2, "colour": "red"}},
                {"cluster": {"requester_args": "--credit-window 1"}}):
        with pytest.raises(ScenarioError):
            scenario(**bad)


W, R, NP, OVER, S = "peer-worker", "peer-req", "peer-nonpayer", "peer-over", "peer-stale"


def world(**status: dict[str, Any]) -> SimData:
    s = scenario(cluster={"workers": [{"name": "overclaim", "adversary": "overclaim"},
                                      {"name": "stale", "adversary": "stale_close"}]}, nonpayer={})
    data = SimData(s, 1)
    for name, role, peer, adv in (("worker1", "worker", W, None), ("requester1", "requester", R, None),
                                  ("nonpayer1", "requester", NP, "nonpayer"),
                                  ("overclaim1", "worker", OVER, "overclaim"), ("stale1", "worker", S, "stale_close")):
        data.nodes[name] = SimNode(name, role, None, adv is not None, peer_id=peer, state="up", adversary=adv)
        data.final_status[name] = status.get(name, {})
    return data


def honest_world(*, paid_over: int = 5500, unpaid: int = 100_000, payee_got: int = 1000,
                 cheat_ok: bool = False) -> SimData:
    pay_r = {"wallet": "wallet-r", "channels": [
        {"role": "payer", "peer": OVER, "address": "ch-o", "voucher_cumulative": paid_over, "voucher_seqno": 1,
         "deposit": 10**9},
        {"role": "payer", "peer": S, "address": "ch-s", "voucher_cumulative": 9000, "voucher_seqno": 5,
         "deposit": 10**9}],
        "payer_watch": {"closes": [{"address": "ch-s", "stale": True, "finished": True}]}}
    data = world(
        requester1={"payments": pay_r},
        overclaim1={"adversary": {"by_peer": {R: {"requests": 1, "overclaims": 1, "claimed_extra_tokens": 5,
                                                  "streamed_amount": 5500, "claimed_amount": 10500}}}},
        stale1={"adversary": {"stale_after": 3, "closes": [{
            "address": "ch-s", "payer": "wallet-r", "stale_seqno": 1, "stale_cumulative": 1000, "newest_seqno": 5,
            "newest_cumulative": 9000, "success": True, "error_name": "OK",
            "attempts": [{"what": "replay", "success": cheat_ok, "exit_code": 109,
                          "error_name": "AMOUNT_BACKWARDS"}]}]}},
        nonpayer1={"adversary": {"by_worker": {W: {"requests": 1, "completion_tokens": 50, "unpaid": unpaid}}}},
        worker1={"payments": {"credit_window": 100_000, "worker_meter": {"payment_timeouts": 1}}},
    )
    data.stale_settlements["ch-s"] = {"status": "closed", "payee": payee_got, "payer_refund": 10**9}
    data.results.append(RequestResult(0, 0.0, "requester1", True, 8, ended=1.0, cause="stream_error_protocol",
                                      detail="worker failed mid-stream: worker claims 17 completion tokens but "
                                             "streamed 12", worker=OVER))
    data.nonpayer_results.append(RequestResult(1, 0.0, "nonpayer1", True, 200, cause="stream_error_payment"))
    return data


def verdicts(data: SimData) -> dict[str, str]:
    return {i["name"]: i["verdict"] for i in invariants(data) if "[" in i["name"]}


def test_contained_adversaries_pass_and_the_report_says_how() -> None:
    data = honest_world()
    assert verdicts(data) == {"overclaim_contained[overclaim1]": "PASS", "stale_close_contained[stale1]": "PASS",
                              "nonpayer_contained[nonpayer1]": "PASS"}
    lines = adversary_lines({"invariants": invariants(data), "fake_upstream_prompts": None})
    assert [(a["adversary"], a["verdict"]) for a in lines] == [
        ("overclaim (overclaim1)", "detected and contained"), ("stale_close (stale1)", "detected and contained"),
        ("nonpayer (nonpayer1)", "detected and contained")]
    assert "AMOUNT_BACKWARDS" in lines[1]["how"] and "window 100000" in lines[2]["how"]


@pytest.mark.parametrize("change, failing", [
    ({"paid_over": 10500}, "overclaim_contained[overclaim1]"),        # paid for claimed, unstreamed tokens
    ({"unpaid": 100_001}, "nonpayer_contained[nonpayer1]"),           # the worker lost more than its window
    ({"payee_got": 9001}, "stale_close_contained[stale1]"),           # paid beyond the newest voucher
    ({"cheat_ok": True}, "stale_close_contained[stale1]"),            # the contract took a replay
])
def test_an_adversary_that_is_not_contained_fails(change: dict[str, Any], failing: str) -> None:
    v = verdicts(honest_world(**change))
    assert v[failing] == "FAIL" and all(x == "PASS" for k, x in v.items() if k != failing), v
