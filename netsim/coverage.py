"""Invariants of a run at scale (issue 15): the share of requests answered, and every worker verified.

``workload_ran`` asks only for a minimum count of completed requests; at 100 nodes a run can pass it while most
requests wait out a DHT lookup and fail, and a requester can answer everything from the few workers it has
verified. These two say how much of the network actually worked.
"""

from __future__ import annotations

from typing import Any

from netsim.simdata import SimData


def invariant(data: SimData, good_ids: set[str], add: Any) -> None:
    """``answered_fraction`` and ``workers_verified``, each when the scenario's [invariants] asks for it."""
    inv = data.scenario.invariants
    if inv.min_answered_fraction:
        ok = sum(1 for r in data.results if r.ok)
        share = ok / len(data.results) if data.results else 0.0
        add("answered_fraction", "PASS" if share >= inv.min_answered_fraction else "FAIL",
            f"{share:.1%} of {len(data.results)} requests answered (minimum {inv.min_answered_fraction:.0%})")
    if inv.all_workers_verified:
        _verified(data, good_ids, add)


def _verified(data: SimData, good_ids: set[str], add: Any) -> None:
    """Every requester holds a passing attestation verdict for every good worker that is still up."""
    live = {n.peer_id for n in data.nodes.values() if n.peer_id in good_ids and n.state == "up"}
    problems, counts = [], []
    for n in data.nodes.values():
        if n.role != "requester" or n.adversarial:
            continue
        summary = ((data.final_status.get(n.name) or data.last_status.get(n.name)) or {}).get("attestation") or {}
        verified = {peer for peer, verdict in summary.items() if isinstance(verdict, dict) and verdict.get("ok")}
        missing = live - verified
        counts.append(f"{n.name} {len(live & verified)}/{len(live)}")
        if missing:
            problems.append(f"{n.name}: {len(missing)} not verified")
    add("workers_verified", "FAIL" if problems or not counts else "PASS",
        "; ".join(problems) or ", ".join(counts))
