"""netsim/paycheats.py: the three payment cheats of issue 20 parse, and their invariants PASS when contained and
FAIL on what the code before the fix let them take (the figures of the issue's review)."""

from __future__ import annotations

from typing import Any

import pytest

from netsim.report import adversary_lines, invariants
from netsim.runner import SimData, SimNode
from netsim.scenario import parse_scenario
from netsim.workload import RequestResult

R, W, INF, BAD, VL = "peer-req", "peer-worker", "peer-inflate", "peer-badsig", "peer-voucherless"


def scenario() -> Any:
    return parse_scenario({"name": "p", "duration": 5, "voucherless": {"requests": 3},
                           "cluster": {"workers": [{"name": "worker"},
                                                   {"name": "inflate", "adversary": "inflate",
                                                    "price_completion": 1000},
                                                   {"name": "badsig", "adversary": "bad_close_sig"}]}})


def world(*, paid_inflated: int = 10_000, unpaid: int = 90_000, settled: str = "closed",
          refund: int = 10**9 - 3000, later_to_inflater: bool = False) -> SimData:
    data = SimData(scenario(), 1)
    for name, role, peer, adv, group in (("worker1", "worker", W, None, "worker"),
                                         ("requester1", "requester", R, None, None),
                                         ("inflate1", "worker", INF, "inflate", "inflate"),
                                         ("badsig1", "worker", BAD, "bad_close_sig", "badsig"),
                                         ("voucherless1", "requester", VL, "voucherless", None)):
        data.nodes[name] = SimNode(name, role, group, adv is not None, peer_id=peer, state="up", adversary=adv)
    data.final_status = {
        "requester1": {"payments": {"channels": [{"role": "payer", "peer": INF, "address": "ch-i",
                                                   "voucher_cumulative": paid_inflated}]}},
        "inflate1": {"adversary": {"by_peer": {R: {"requests": 1, "prompt_tokens": 5, "streamed_tokens": 5,
                                                   "claimed_tokens": 15, "streamed_amount": 10_000}}}},
        "worker1": {"payments": {"credit_window": 100_000}},
        "badsig1": {"adversary": {"bad_signatures": [{"address": "ch-b", "cumulative": 3000}]}},
        "voucherless1": {"adversary": {"by_worker": {W: {"requests": 20, "received_amount": unpaid, "paid": 0,
                                                          "unpaid": unpaid}}}},
    }
    data.results.append(RequestResult(0, 0.0, "requester1", True, 8, ended=1.0, cause="stream_error_overcount",
                                      detail="worker claims 15 completion tokens for 14 bytes of text", worker=INF))
    # Another worker's over-claim, caught earlier, must not count as catching the inflater.
    data.results.append(RequestResult(1, 0.0, "requester1", True, 8, ended=0.5, cause="stream_error_overcount",
                                      detail="worker claims 17 completion tokens but streamed 12", worker=W))
    if later_to_inflater:  # a request started after the inflater was caught, answered by it anyway
        data.results.append(RequestResult(2, 2.0, "requester1", True, 8, started=2.0, ended=3.0, ok=True,
                                          cause="ok", worker=INF))
    data.paycheats = {
        "voucherless_results": [{"requester": "voucherless1", "ok": False}],
        "closer": {"channels": {"ch-b": {"deposit": 10**9, "newest": 3000, "initiator": 1, "committed": 3000,
                                         "settled": {"status": settled, "payee": 3000, "payer_refund": refund}}}},
    }
    return data


def verdicts(data: SimData) -> dict[str, str]:
    return {i["name"]: i["verdict"] for i in invariants(data) if i["name"].split("[")[0] in (
        "inflate_contained", "voucherless_contained", "bad_close_contained")}


def test_contained_cheats_pass_and_say_how() -> None:
    s = scenario()
    assert s.voucherless is not None and [g.adversary_kind for g in s.workers] == [None, "inflate", "bad_close_sig"]
    data = world()
    assert verdicts(data) == {"inflate_contained[inflate1]": "PASS", "voucherless_contained[voucherless1]": "PASS",
                              "bad_close_contained[badsig1]": "PASS"}
    report = {"invariants": invariants(data), "fake_upstream_prompts": None}
    lines = {a["adversary"]: a for a in adversary_lines(report)}
    assert lines["inflate (inflate1)"]["verdict"] == "detected and contained"
    assert "closed alone" in lines["bad_close (badsig1)"]["how"]


@pytest.mark.parametrize("change, failing", [
    ({"paid_inflated": 20_000}, "inflate_contained[inflate1]"),          # signed for the claimed tokens
    ({"later_to_inflater": True}, "inflate_contained[inflate1]"),        # not dropped after being caught
    ({"unpaid": 360_000}, "voucherless_contained[voucherless1]"),        # forgiven 6x the window, as reviewed
    ({"settled": "open"}, "bad_close_contained[badsig1]"),               # the deposit stayed locked
    ({"refund": 10}, "bad_close_contained[badsig1]"),                    # closed, but the refund never came
])
def test_a_cheat_that_is_not_contained_fails(change: dict[str, Any], failing: str) -> None:
    v = verdicts(world(**change))
    assert v[failing] == "FAIL" and all(x == "PASS" for k, x in v.items() if k != failing), v
