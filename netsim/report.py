"""Turn a finished simulation into the report JSON, the PASS/FAIL invariants and the PNG plots."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from netsim.channel_life import invariants as channel_life_invariants
from netsim.coverage import invariant as coverage_invariant
from netsim.misnamed import invariant as misnamed_invariant
from netsim.receipts import invariant as receipts_invariant
from netsim.rogue_report import rogue_invariants
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
    receipts_invariant(data.results, add, faults=bool(s.faults))
    channel_life_invariants(data, add)
    rogue_invariants(data, add)
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
        # issue 16: requesters killed mid-stream, the closing `channels close`, on-chain ops per channel
        "channels": {k: v for k, v in data.channel_life.items() if k != "books"},
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
