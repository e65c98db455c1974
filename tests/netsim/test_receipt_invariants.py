"""netsim's receipt verdicts (issue 16) can FAIL: receipts_verified and receipt_liar_caught."""

from __future__ import annotations

from typing import Any

from netsim.receiptcheats import invariant as liar_invariant
from netsim.receipts import invariant as receipts_invariant
from netsim.runner import SimData, SimNode
from netsim.scenario import parse_scenario
from netsim.workload import RequestResult

LIAR = "peer-liar"


def verdicts(fn: Any, *args: Any) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    fn(*args, lambda name, verdict, detail: out.__setitem__(name, (verdict, detail)))
    return out


def result(i: int, *, ok: bool, receipt: str | None = None, worker: str = "w", cause: str = "ok") -> RequestResult:
    r = RequestResult(i, 0.0, "requester1", False, 8, ok=ok, cause=cause, worker=worker)
    if receipt is not None:
        r.extra["receipt"] = receipt
    return r


def test_receipts_verified_needs_every_answer_checked() -> None:
    good = [result(1, ok=True, receipt="verified"), result(2, ok=False, cause="http_502_x")]
    assert verdicts(receipts_invariant, good)["receipts_verified"][0] == "PASS"
    for bad in ("missing: the worker issues no receipts", "output digest disagrees with the streamed text", None):
        v, detail = verdicts(receipts_invariant, [*good, result(3, ok=True, receipt=bad)])["receipts_verified"]
        assert v == "FAIL" and "#3" in detail
    assert verdicts(receipts_invariant, [])["receipts_verified"][0] == "FAIL"  # nothing answered: nothing shown
    # a worker killed between its final and its receipt (a run with faults): listed, not a FAIL; a bad one is
    missing = result(4, ok=True, receipt="missing: no receipt: stream reset")
    v, detail = verdicts(lambda *a: receipts_invariant(*a, faults=True), [*good, missing])["receipts_verified"]
    assert v == "PASS" and "#4" in detail
    lying = result(5, ok=True, receipt="does not verify: signature")
    assert verdicts(lambda *a: receipts_invariant(*a, faults=True), [*good, lying])["receipts_verified"][0] == "FAIL"


def liar_world(results: list[RequestResult], signed: int) -> SimData:
    s = parse_scenario({"name": "a", "duration": 5, "cluster": {"workers": [
        {"name": "worker"}, {"name": "liar", "adversary": "receipt_liar"}]}})
    data = SimData(s, 1)
    data.nodes["liar1"] = SimNode("liar1", "worker", "liar", True, peer_id=LIAR, state="up", adversary="receipt_liar")
    data.final_status["liar1"] = {"adversary": {"receipts": {"receipts": signed, "claimed_extra_tokens": 4 * signed},
                                                "extra_tokens_per_receipt": 4}}
    data.results = results
    return data


def test_receipt_liar_caught_fails_unless_every_lie_was_refused() -> None:
    caught = result(1, ok=False, worker=LIAR, cause="http_502_bad_receipt")
    assert verdicts(liar_invariant, liar_world([caught], 1))["receipt_liar_caught"][0] == "PASS"
    accepted = result(2, ok=True, receipt="verified", worker=LIAR)
    assert verdicts(liar_invariant, liar_world([caught, accepted], 2))["receipt_liar_caught"][0] == "FAIL"
    assert verdicts(liar_invariant, liar_world([], 0))["receipt_liar_caught"][0] == "FAIL"  # nothing tested
    other = result(3, ok=False, worker=LIAR, cause="client_timeout")
    assert verdicts(liar_invariant, liar_world([other], 1))["receipt_liar_caught"][0] == "FAIL"  # not caught
