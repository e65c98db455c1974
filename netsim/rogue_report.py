"""The report's verdicts on the payment adversaries: each must be detected or contained, the detail says how.

Split from :mod:`netsim.report` (which calls :func:`rogue_invariants`) to keep both modules small: the rogue kinds
of :mod:`netsim.rogue` (overclaim, stale close, nonpayer) are judged here, and the kinds that live in their own
modules (:mod:`netsim.lowball`, :mod:`netsim.paycheats`) are judged by those modules, called from here.
"""

from __future__ import annotations

from typing import Any

from netsim import paycheats
from netsim.lowball import invariant as lowball_invariant
from netsim.receiptcheats import invariant as receipt_liar_invariant
from netsim.simdata import SimData


def _status(data: SimData, name: str) -> dict[str, Any]:
    return data.final_status.get(name) or data.last_status.get(name) or {}


def _payer_channels(data: SimData, requester: str, worker_peer: str) -> list[dict[str, Any]]:
    return [c for c in (_status(data, requester).get("payments") or {}).get("channels") or []
            if c["role"] == "payer" and c["peer"] == worker_peer]


def rogue_invariants(data: SimData, add: Any) -> None:
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
    receipt_liar_invariant(data, add)


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


