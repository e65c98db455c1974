"""Turn a finished simulation into the report JSON, the PASS/FAIL invariants and the PNG plots."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from netsim import paycheats
from netsim.coverage import invariant as coverage_invariant
from netsim.lowball import invariant as lowball_invariant
from netsim.misnamed import invariant as misnamed_invariant
from netsim.simdata import SimData


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    xs = sorted(values)

    def q(p: float) -> float:
        k = (len(xs) - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return round((xs[lo] + (xs[hi] - xs[lo]) * (k - lo)) * 1000, 2)

    return {"n": len(xs), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(xs[-1] * 1000, 2),
            "mean": round(sum(xs) / len(xs) * 1000, 2)}


def throughput(data: SimData, bin_s: float = 1.0) -> list[dict[str, float]]:
    end = max([data.workload_duration, *[r.ended for r in data.results]], default=0.0)
    bins = max(1, math.ceil(end / bin_s))
    reqs = [0] * bins
    toks = [0] * bins
    errs = [0] * bins
    for r in data.results:
        b = min(bins - 1, max(0, int(r.ended // bin_s)))
        if r.ok:
            reqs[b] += 1
            toks[b] += (r.usage or {}).get("completion_tokens", 0)
        else:
            errs[b] += 1
    return [{"t": round(i * bin_s, 2), "completed_per_s": reqs[i] / bin_s, "tokens_per_s": toks[i] / bin_s,
             "errors_per_s": errs[i] / bin_s} for i in range(bins)]


def invariants(data: SimData) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def add(name: str, verdict: str, detail: str) -> None:
        out.append({"name": name, "verdict": verdict, "detail": detail})

    s = data.scenario
    ok = [r for r in data.results if r.ok]
    bad_answers = [r.index for r in ok if r.content_chars == 0 or not r.usage
                   or not r.usage.get("completion_tokens") or r.usage.get("prompt_tokens") is None]
    add("answers_complete", "FAIL" if bad_answers else "PASS",
        f"{len(ok)} completed requests, {len(bad_answers)} without non-empty content and usage"
        + (f" (indexes {bad_answers[:10]})" if bad_answers else ""))

    # Rogue workers (overclaim, stale_close) pass the attestation policy on purpose: they may answer.
    good_ids = {n.peer_id for n in data.nodes.values() if n.role == "worker" and n.adversary != "bad_model_hash"}
    bad_nodes = [n for n in data.nodes.values() if n.adversary == "bad_model_hash"]
    bad_ids = {n.peer_id for n in bad_nodes}
    answered_by_bad = [r.index for r in ok if r.worker in bad_ids]
    answered_by_unknown = [r.index for r in ok if r.worker not in good_ids]
    problems = []
    for n in bad_nodes:
        st = data.final_status.get(n.name) or data.last_status.get(n.name)
        w = (st or {}).get("worker") or {}
        if not st:
            problems.append(f"{n.name}: no status")
        elif w.get("served", 0) or w.get("rejected", 0):
            problems.append(f"{n.name}: served={w.get('served')} rejected={w.get('rejected')}")
    if data.fake_upstream_requests:
        problems.append(f"fake upstream behind the bad worker received {data.fake_upstream_requests} prompts")
    if answered_by_bad:
        problems.append(f"answers from a disallowed worker: {answered_by_bad[:10]}")
    if answered_by_unknown:
        problems.append(f"answers from workers netsim did not start: {answered_by_unknown[:10]}")
    detail = (f"{len(bad_nodes)} disallowed worker(s) (served=0, rejected=0, upstream prompts="
              f"{data.fake_upstream_requests}); every answer came from an allowed, attested worker"
              if bad_nodes else "no disallowed worker in this scenario; every answer came from an allowed worker")
    add("no_prompt_to_disallowed_worker", "FAIL" if problems else "PASS", "; ".join(problems) or detail)

    bound = s.invariants.convergence_bound
    late = []
    pending = []
    for e in data.expectations:
        if not e.present or e.superseded:
            continue
        if e.resolved_at is None:
            pending.append(f"{e.name} ({e.cause} at t={e.t})")
        elif e.resolved_at - e.t > bound:
            late.append(f"{e.name} after {e.resolved_at - e.t:.1f}s")
    conv_fail = (data.initial_convergence_s is None or data.final_convergence_s is None or late or pending)
    add("discovery_converged", "FAIL" if conv_fail else "PASS",
        f"initial {data.initial_convergence_s}s, final check {data.final_convergence_s}s (bound {bound}s); "
        f"late: {late or 'none'}; never listed: {pending or 'none'}")

    cut = [e for e in data.expectations if e.cause == "partition"]
    if cut:
        missed = [f"{e.name} (t={e.t})" for e in cut if e.resolved_at is None]
        took = [e.resolved_at - e.t for e in cut if e.resolved_at is not None]
        add("partition_observed", "FAIL" if missed else "PASS",
            f"{len(cut) - len(missed)}/{len(cut)} workers dropped by the requesters across the cut, after "
            f"{min(took, default=0):.1f}-{max(took, default=0):.1f}s"
            + (f"; never dropped during the partition: {missed} (a cut shorter than the announcement TTL "
               "cannot be seen)" if missed else ""))

    add("workload_ran", "PASS" if len(ok) >= s.invariants.min_completed else "FAIL",
        f"{len(ok)} completed of {len(data.results)} (minimum {s.invariants.min_completed})")
    coverage_invariant(data, good_ids, add)

    if data.flooder is not None:
        rejected = _rejected_total(data)
        sent = sum((data.flooder.get("sent") or {}).values())
        verdict = "PASS" if sent == 0 or sum(rejected.values()) > 0 else "FAIL"
        add("junk_gossip_rejected", verdict, f"flooder sent {sent}; requesters rejected {dict(rejected)}")

    _payment_invariants(data, ok, add)
    _rogue_invariants(data, add)
    misnamed_invariant(data, add)
    if data.errors:
        add("harness_errors", "FAIL", "; ".join(data.errors[:10]))
    return out


def _payment_invariants(data: SimData, ok: list[Any], add: Any) -> None:
    """Every completed request was paid within the credit window; no voucher lost; funds conserved."""
    from cocoon_node.config import PaymentsSection

    window = PaymentsSection().credit_window
    # The non-paying requester's channels are judged by nonpayer_contained, not here.
    statuses = {name: st for name, st in data.final_status.items()
                if st and not (data.nodes.get(name) and data.nodes[name].adversary == "nonpayer")}
    if not any((st.get("payments") or {}).get("enabled") for st in statuses.values()):
        add("payments_paid", "SKIP", "payments disabled in this run")
        return
    prices: dict[str, tuple[int, int]] = {}
    payer: dict[str, dict[str, Any]] = {}   # channel address -> requester's view
    payee: dict[str, dict[str, Any]] = {}   # channel address -> worker's view
    for st in statuses.values():
        for w in st.get("workers") or []:
            prices[w["peer_id"]] = (w["price_prompt"], w["price_completion"])
        for ch in (st.get("payments") or {}).get("channels") or []:
            (payer if ch["role"] == "payer" else payee)[ch["address"]] = ch
    owed: dict[str, int] = {}
    for r in ok:
        if r.usage and r.worker in prices:
            pp, pc = prices[r.worker]
            owed[r.worker] = owed.get(r.worker, 0) + r.usage["prompt_tokens"] * pp + r.usage["completion_tokens"] * pc
    problems: list[str] = []
    unknown: list[str] = []
    for worker, amount in owed.items():
        paid = sum(c["voucher_cumulative"] for c in payer.values() if c["peer"] == worker)
        addresses = [a for a, c in payer.items() if c["peer"] == worker]
        received = sum(payee[a]["voucher_cumulative"] for a in addresses if a in payee)
        if paid < amount:
            problems.append(f"{worker[:16]}: requesters signed {paid} < {amount} owed for completed requests")
        if any(a not in payee for a in addresses):
            unknown.append(worker[:16])  # no final status from that worker: its side cannot be checked
        elif received < amount - window:
            problems.append(f"{worker[:16]}: worker holds vouchers for {received}, owed {amount} (window {window})")
    note = f"; worker side not checked (no final status): {unknown}" if unknown else ""
    add("payments_paid", "FAIL" if problems else "PASS", "; ".join(problems) or
        f"{len(owed)} worker(s): vouchers cover every completed request ({sum(owed.values())} nanotons) "
        f"within the {window}-nanoton credit window{note}")
    lost = []
    for address, mine in payer.items():
        theirs = payee.get(address)
        if theirs is None:
            continue
        if theirs["voucher_cumulative"] > mine["voucher_cumulative"] or theirs["voucher_seqno"] > mine["voucher_seqno"]:
            lost.append(f"{address[:12]}: worker holds a voucher the requester never stored")
        elif mine["voucher_cumulative"] - theirs["voucher_cumulative"] > window:
            lost.append(f"{address[:12]}: {mine['voucher_cumulative'] - theirs['voucher_cumulative']} signed but "
                        "not received (more than the credit window)")
    add("no_voucher_lost", "FAIL" if lost else "PASS", "; ".join(lost) or
        f"{len(payer)} channel(s): every voucher the requester persisted reached the worker within the window")
    if data.chain_supply is not None:
        sup = data.chain_supply
        balanced = sup["sum_balances"] + sup["burned"] == sup["minted"]
        add("funds_conserved", "PASS" if balanced else "FAIL",
            f"balances {sup['sum_balances']} + fees burned {sup['burned']} "
            f"{'==' if balanced else '!='} minted {sup['minted']} over {sup['accounts']} accounts")


def _status(data: SimData, name: str) -> dict[str, Any]:
    return data.final_status.get(name) or data.last_status.get(name) or {}


def _payer_channels(data: SimData, requester: str, worker_peer: str) -> list[dict[str, Any]]:
    return [c for c in (_status(data, requester).get("payments") or {}).get("channels") or []
            if c["role"] == "payer" and c["peer"] == worker_peer]


def _rogue_invariants(data: SimData, add: Any) -> None:
    """The payment adversaries (netsim/rogue.py): each must be detected or contained, and the detail says how."""
    requesters = {n.peer_id: n.name for n in data.nodes.values() if n.role == "requester" and not n.adversary}
    for node in [n for n in data.nodes.values() if n.adversary == "overclaim"]:
        _overclaim(data, node, requesters, add)
    for node in [n for n in data.nodes.values() if n.adversary == "stale_close"]:
        _stale_close(data, node, add)
    nonpayers = [n for n in data.nodes.values() if n.adversary == "nonpayer"]
    for node in nonpayers:
        _nonpayer(data, node, add)
    for node in [n for n in data.nodes.values() if n.adversary == "lowball_close"]:
        lowball_invariant(data, node, add)
    paycheats.invariants(data, add)  # inflate, voucherless, bad_close_sig


def overclaim_detections(results: list[Any], worker_peer: str) -> list[Any]:
    """Requests the requester failed because the worker's final frame claimed more tokens than it streamed."""
    return [r for r in results if not r.ok and "claims" in r.detail and "but streamed" in r.detail
            and r.worker in (None, "", worker_peer)]


def _overclaim(data: SimData, node: Any, requesters: dict[str, str], add: Any) -> None:
    adv = _status(data, node.name).get("adversary") or {}
    books: dict[str, dict[str, Any]] = adv.get("by_peer") or {}
    problems: list[str] = []
    parts: list[str] = []
    overclaims = sum(b["overclaims"] for p, b in books.items() if p in requesters)
    detected = overclaim_detections(data.results, node.peer_id)
    answered = [r.index for r in data.results if r.ok and r.worker == node.peer_id]
    if answered:
        problems.append(f"requesters accepted {len(answered)} answers whose final frame over-claimed: {answered[:10]}")
    if not books:
        problems.append("the over-claimer never served a request (nothing was tested)")
    elif overclaims and not detected:
        problems.append(f"{overclaims} over-claiming final frames, none reported by a requester")
    for peer, book in sorted(books.items()):
        name = requesters.get(peer)
        if name is None:
            continue  # the non-payer's streams are judged by nonpayer_contained
        paid = sum(c["voucher_cumulative"] for c in _payer_channels(data, name, node.peer_id))
        if paid > book["streamed_amount"]:
            problems.append(f"{name} paid {paid} > {book['streamed_amount']} nanotons of tokens streamed to it")
        parts.append(f"{name}: {book['requests']} requests, {book['overclaims']} final frames claimed "
                     f"+{book['claimed_extra_tokens']} tokens (worth {book['claimed_amount'] - book['streamed_amount']}"
                     f"), signed {paid} of {book['streamed_amount']} streamed (a failed call's tokens are "
                     "signed with the channel's next voucher or at close)")
    # Reputation: after a requester's first detection, its later requests should mostly go elsewhere.
    avoid: list[str] = []
    honest_workers = sum(1 for n in data.nodes.values() if n.role == "worker" and n.adversary != "bad_model_hash")
    for name in sorted(set(requesters.values())):
        mine = sorted((r for r in data.results if r.requester == name), key=lambda r: r.started)
        first = min((r.ended for r in detected if r.requester == name), default=None)
        if first is None:
            continue
        later = [r for r in mine if r.started > first]
        again = [r for r in later if r in detected or r.worker == node.peer_id]
        fair = len(later) / max(honest_workers, 1)
        avoid.append(f"{name} sent it {len(again)} of {len(later)} later requests (fair share {fair:.1f})")
        if later and len(again) >= max(fair, 1):
            problems.append(f"{name} kept choosing the over-claimer after detecting it ({len(again)} of "
                            f"{len(later)} later requests)")
    add(f"overclaim_contained[{node.name}]", "FAIL" if problems else "PASS",
        "; ".join(problems) if problems else
        f"detected {len(detected)} times (requester: 'worker claims N completion tokens but streamed M', "
        f"WorkerFailure overcount, answer failed, worker dropped); contained: vouchers cover only streamed "
        f"tokens; " + "; ".join(parts) + ("; " + "; ".join(avoid) if avoid else ""))


def _stale_close(data: SimData, node: Any, add: Any) -> None:
    adv = _status(data, node.name).get("adversary") or {}
    closes: list[dict[str, Any]] = adv.get("closes") or []
    # The worker's store names a payer by its chain wallet; requesters report theirs in their status.
    by_peer = {(_status(data, n.name).get("payments") or {}).get("wallet"): n.name
               for n in data.nodes.values() if n.role == "requester"}
    problems: list[str] = []
    parts: list[str] = []
    if not closes:
        problems.append(f"no channel reached {adv.get('stale_after')} vouchers: the stale close never happened")
    for c in closes:
        address, payer = c["address"], by_peer.get(c["payer"], c["payer"][:12])
        ours = next((ch for ch in (_status(data, payer).get("payments") or {}).get("channels") or []
                     if ch["address"] == address), None)
        newest = ours["voucher_cumulative"] if ours else None
        watch = ((_status(data, payer).get("payments") or {}).get("payer_watch") or {}).get("closes") or []
        seen = next((w for w in watch if w["address"] == address), None)
        cheats = [a for a in c["attempts"] if a["success"]]
        line = (f"{address[:12]} of {payer}: closed on voucher #{c['stale_seqno']} ({c['stale_cumulative']}) while "
                f"holding #{c['newest_seqno']} ({c['newest_cumulative']}): {c['error_name']}")
        if not c["success"]:
            parts.append(line + " (the contract refused the close)")
            continue
        if cheats:
            problems.append(f"{address[:12]}: the contract accepted {[a['what'] for a in cheats]}")
        refused = ", ".join(f"{a['what']} -> {a['error_name']}" for a in c["attempts"])
        settled = data.stale_settlements.get(address) or {}
        if seen is None:
            problems.append(f"{address[:12]}: {payer}'s watcher never reported the close")
        if settled.get("status") != "closed":
            problems.append(f"{address[:12]}: not settled by the end of the run ({settled.get('status')})")
        payee_got = settled.get("payee", 0)
        if newest is not None and payee_got > newest:
            problems.append(f"{address[:12]}: worker was paid {payee_got} > the newest voucher {newest}")
        if settled.get("status") == "closed" and payee_got != c["stale_cumulative"]:
            problems.append(f"{address[:12]}: worker was paid {payee_got}, the stale close committed "
                            f"{c['stale_cumulative']}")
        deposit = ours["deposit"] if ours else 0
        refund = settled.get("payer_refund", 0)
        if settled.get("status") == "closed" and refund < deposit - payee_got:
            problems.append(f"{address[:12]}: payer refunded {refund} < deposit {deposit} - {payee_got}")
        parts.append(line + f"; detected by {payer}'s watcher: {'yes' if seen else 'NO'}"
                     + (f" (stale={seen['stale']}, finished by the payer={seen['finished']})" if seen else "")
                     + f"; refused by the contract: {refused}; settled {settled.get('status')}: worker paid "
                       f"{payee_got} (newest voucher {newest}), payer refunded {refund} of deposit {deposit}")
    add(f"stale_close_contained[{node.name}]", "FAIL" if problems else "PASS",
        "; ".join(problems + parts) if problems else
        "contained: the contract took the stale close and nothing more, the worker forwent the difference; "
        + "; ".join(parts))


def _nonpayer(data: SimData, node: Any, add: Any) -> None:
    adv = _status(data, node.name).get("adversary") or {}
    by_worker: dict[str, dict[str, Any]] = adv.get("by_worker") or {}
    names = {n.peer_id: n.name for n in data.nodes.values() if n.role == "worker"}
    results = [r for r in data.nonpayer_results if r.requester == node.name]
    stopped = [r for r in results if "payment" in r.cause or "payment" in r.detail]
    timeouts = {names.get(p, p[:12]): ((_status(data, names.get(p, "")).get("payments") or {}).get("worker_meter")
                                       or {}).get("payment_timeouts", 0) for p in by_worker}
    problems: list[str] = []
    parts: list[str] = []
    if not any(b["unpaid"] > 0 for b in by_worker.values()):
        problems.append("the non-payer never received an unpaid token (nothing was tested)")
    for peer, b in sorted(by_worker.items()):
        wname = names.get(peer, peer[:12])
        window = (_status(data, wname).get("payments") or {}).get("credit_window")
        if window is None:
            problems.append(f"{wname}: no final status, its credit window is unknown")
        elif b["unpaid"] > window:
            problems.append(f"{wname} lost {b['unpaid']} > its credit window {window}")
        parts.append(f"{wname}: {b['requests']} requests, {b['completion_tokens']} completion tokens delivered, "
                     f"unpaid {b['unpaid']} (window {window}), payment timeouts {timeouts.get(wname)}")
    if by_worker and not stopped:
        problems.append("no request of the non-payer ended with a payment error")
    ok = sum(1 for r in results if r.ok)
    add(f"nonpayer_contained[{node.name}]", "FAIL" if problems else "PASS",
        "; ".join(problems + parts) if problems else
        f"detected: {len(stopped)} of {len(results)} requests stopped by a worker's payment error ({ok} completed "
        "within the window); contained: each worker lost at most its credit window; " + "; ".join(parts))


def adversary_lines(report: dict[str, Any]) -> list[dict[str, str]]:
    """One line per adversary in the run: what it is, and how it was detected or contained."""
    out: list[dict[str, str]] = []
    for inv in report["invariants"]:
        name = inv["name"]
        if name == "no_prompt_to_disallowed_worker" and report.get("fake_upstream_prompts") is not None:
            out.append({"adversary": "bad_model_hash", "verdict": "contained" if inv["verdict"] == "PASS"
                        else "NOT contained", "how": "the attestation gate refused its model hash before any "
                        "prompt left a requester: " + inv["detail"]})
        elif name == "junk_gossip_rejected":
            out.append({"adversary": "gossip_flooder", "verdict": "detected" if inv["verdict"] == "PASS"
                        else "NOT detected", "how": "the topic validators rejected its junk: " + inv["detail"]})
        elif "[" in name and name.split("[")[0].removesuffix("_contained") in (
                "overclaim", "stale_close", "nonpayer", "lowball_close", "inflate", "voucherless", "bad_close"):
            kind = name.split("[")[0].removesuffix("_contained")
            verdict = "detected and contained"
            out.append({"adversary": f"{kind} ({name.split('[')[1].rstrip(']')})",
                        "verdict": verdict if inv["verdict"] == "PASS" else "NOT contained", "how": inv["detail"]})
        elif name.startswith("misnamed_never_prompted["):
            out.append({"adversary": f"misnamed ({name.split('[')[1].rstrip(']')})",
                        "verdict": "detected and contained" if inv["verdict"] == "PASS" else "NOT contained",
                        "how": inv["detail"]})
    return out


def _rejected_total(data: SimData) -> Counter[str]:
    total: Counter[str] = Counter()
    for name, st in data.last_status.items():
        if data.nodes.get(name) and data.nodes[name].role == "requester":
            total.update((st.get("announcements") or {}).get("rejected") or {})
    return total


def build_report(data: SimData, *, png: Path | None) -> dict[str, Any]:
    s = data.scenario
    results = data.results
    causes = Counter(r.cause for r in results)
    streaming_ttft = [r.ttft_s for r in results if r.ok and r.stream and r.ttft_s is not None]
    totals = [r.total_s for r in results if r.ok and r.total_s is not None]
    tokens = sum((r.usage or {}).get("completion_tokens", 0) for r in results if r.ok)
    expectations = [
        {"t": e.t, "node": e.name, "expect": "listed" if e.present else "dropped", "cause": e.cause,
         "after_s": round(e.resolved_at - e.t, 2) if e.resolved_at is not None else None,
         "superseded": e.superseded, **({"observers": list(e.observers)} if e.observers is not None else {})}
        for e in data.expectations
    ]
    requesters = {name: {"announcements": st.get("announcements"), "requester": st.get("requester"),
                         "workers_listed": len(st.get("workers", []))}
                  for name, st in data.last_status.items()}
    workers = {name: (st or {}).get("worker") for name, st in data.final_status.items()
               if data.nodes[name].role == "worker"}
    report = {
        "scenario": s.name,
        "scenario_file": str(s.path) if s.path else None,
        "seed": data.seed,
        "nodes": {"workers": sum(1 for n in data.nodes.values() if n.role == "worker"),
                  "pooled_workers": sum(1 for n in data.nodes.values() if n.pooled),
                  "requesters": s.requesters, "total": len(data.nodes)},
        "setup_s": data.setup_s,
        "shaping": data.shaping,
        "links": asdict(s.links) if s.links is not None else None,
        "on_chain_transactions": data.chain_transactions if data.chain_transactions is not None else "no chain",
        "processes": data.resources,
        "allowed_model_hashes": data.allowed_hashes,
        "allowed_models": data.allowed_models,
        "discovery": {"initial_convergence_s": data.initial_convergence_s,
                      "initial_convergence_definition": "max over requesters of (first poll listing every live "
                                                        "worker - that requester's ready line); polled every 0.1 s",
                      "per_requester_s": data.requester_converged,
                      "converged_after_setup_s": data.converged_after_setup_s,
                      "final_convergence_s": data.final_convergence_s,
                      "bound_s": s.invariants.convergence_bound, "events": expectations},
        "requests": {"planned_duration_s": s.duration, "total": len(results),
                     "completed": causes.get("ok", 0), "by_cause": dict(causes),
                     "completion_tokens": tokens},
        "latency_ms": {"ttft_streaming": percentiles([x for x in streaming_ttft if x is not None]),
                       "total": percentiles([x for x in totals if x is not None])},
        "throughput": throughput(data),
        "events": data.events,
        "requesters": requesters,
        "workers": workers,
        "flooder": data.flooder,
        "nonpayer_requests": {"total": len(data.nonpayer_results),
                              "by_cause": dict(Counter(r.cause for r in data.nonpayer_results))},
        "stale_settlements": data.stale_settlements,
        "lowball_requests": {"total": len(data.lowball_results),
                             "by_cause": dict(Counter(r.cause for r in data.lowball_results))},
        "lowball_settlements": data.lowball_settlements,
        "fake_upstream_prompts": data.fake_upstream_requests,
        "harness_errors": data.errors,
        "invariants": (invs := invariants(data)),
        "plots": str(png) if png else None,
    }
    if data.nat is not None:  # [topology] runs (netsim/natsim.py)
        from netsim.natsim import report as nat_report

        report["nat"], extra = nat_report(data.nat, data)
        invs.extend(extra)
    report["adversaries"] = adversary_lines(report)
    if png is not None:
        plot(data, report, png)
    return report


def plot(data: SimData, report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for label, xs in (("TTFT (streaming)", [r.ttft_s for r in data.results if r.ok and r.stream and r.ttft_s]),
                      ("total", [r.total_s for r in data.results if r.ok and r.total_s])):
        vals = sorted(x * 1000 for x in xs if x is not None)
        if vals:
            ax1.plot(vals, [(i + 1) / len(vals) for i in range(len(vals))], label=f"{label} (n={len(vals)})")
    ax1.set_xscale("log")
    ax1.set_xlabel("latency (ms)")
    ax1.set_ylabel("fraction of completed requests")
    ax1.set_title("latency CDF")
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    tp = report["throughput"]
    ts = [b["t"] for b in tp]
    ax2.step(ts, [b["completed_per_s"] for b in tp], where="post", label="completed/s")
    ax2.step(ts, [b["errors_per_s"] for b in tp], where="post", label="errors/s", color="tab:red")
    ax3 = ax2.twinx()
    ax3.plot(ts, [b["tokens_per_s"] for b in tp], color="tab:green", alpha=0.5, label="tokens/s")
    ax3.set_ylabel("completion tokens/s")
    markers = [e for e in data.events if e["kind"] in ("kill", "term", "stop", "partition", "heal", "resume", "restart",
                                                       "join", "leave", "flood_start", "flood_end", "stale_close",
                                                       "chain_clock_advanced")]
    for e in markers:
        ax2.axvline(e["t"], color="grey", linestyle="--", alpha=0.6)
        ax2.text(e["t"], ax2.get_ylim()[1] * 0.95, f"{e['kind']} {e['target']}", rotation=90, fontsize=7,
                 va="top", ha="right")
    ax2.set_xlabel("t (s since workload start)")
    ax2.set_ylabel("requests/s")
    ax2.set_title(f"throughput — {data.scenario.name} (seed {data.seed})")
    ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def summary_lines(report: dict[str, Any]) -> list[str]:
    r = report
    lat = r["latency_ms"]
    lines = [
        f"scenario {r['scenario']} seed {r['seed']}: {r['nodes']['total']} nodes, set-up {r['setup_s']}s, "
        f"discovery converged in {r['discovery']['initial_convergence_s']}s",
        f"requests: {r['requests']['completed']}/{r['requests']['total']} ok, by cause {r['requests']['by_cause']}",
        f"TTFT p50/p90/p99 {lat['ttft_streaming']['p50']}/{lat['ttft_streaming']['p90']}/"
        f"{lat['ttft_streaming']['p99']} ms; total p50/p90/p99 {lat['total']['p50']}/{lat['total']['p90']}/"
        f"{lat['total']['p99']} ms",
        f"shaping: {r['shaping']}; on-chain transactions: {r['on_chain_transactions']}",
    ]
    for name, p in sorted((r.get("processes") or {}).items()):
        if p["nodes"] > 1:
            lines.append(f"process {name}: {p['nodes']} nodes, CPU {p['cpu_pct_discovery']}% of a core while "
                         f"converging, {p['cpu_pct_workload']}% under the workload; RSS {p['rss_mb']} MB "
                         f"({p['rss_mb_per_node']} MB per node)")
    if r.get("nat"):
        lines.append(f"paths (served requests): {r['nat']['paths']}; relay kills: {r['nat']['relay_kills']}")
    for adv in r.get("adversaries") or []:
        lines.append(f"adversary {adv['adversary']}: {adv['verdict']}")
    for inv in r["invariants"]:
        lines.append(f"{inv['verdict']:4}  {inv['name']}: {inv['detail']}")
    return lines
