"""``cocoon-node status`` as a readable table (``--json`` prints the snapshot itself)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cocoon_node.observe.dashboard_data import worker_rows


def _short(peer: str) -> str:
    return peer if len(peer) <= 16 else f"{peer[:8]}…{peer[-6:]}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _verdict(row: dict[str, Any]) -> str:
    a = row["attestation"]
    if a["verified"] is None:
        return "not checked"
    if a["verified"]:
        return "verified"
    return f"REJECTED ({a.get('check') or '?'}): " + "; ".join(a.get("reasons") or [])[:80]


def format_status(s: dict[str, Any]) -> str:
    out = [f"node     {s.get('peer_id')}  ({s.get('network')}, version {s.get('version')}, "
           f"up {s.get('uptime_s', 0):.0f} s, {s.get('connected_peers', 0)} peers)"]
    for a in (s.get("addrs") or [])[:3]:
        out.append(f"         {a}")
    w = s.get("worker")
    if w:
        out.append(f"worker   {w.get('model')} on {w.get('backend')}, TEE {w.get('tee')}; load {w.get('load')}/"
                   f"{w.get('max_concurrent')}; served {w.get('served')}, rejected {w.get('rejected')}, "
                   f"cancelled {w.get('cancelled')}, failed {w.get('failed')}")
    r = s.get("requester")
    if r:
        out.append(f"requester API {r.get('api_url')}; completed {r.get('completed')}, failed {r.get('failed')}")
        q = r.get("queue")
        if q:  # the admission queue (issue 13)
            w = q.get("wait_ms") or {}
            out.append(f"queue    {q['queued']}/{q['max_queue']} waiting ({q['clients_waiting']} clients, oldest "
                       f"{q['oldest_wait_ms'] / 1000:.1f} s; longest wait {q['max_wait_s']:g} s); admitted "
                       f"{q['admitted']} ({q['admitted_after_wait']} after waiting), 429: {q['rejected_full']} full, "
                       f"{q['expired']} expired; {q['left']} left; wait p50 {w.get('p50')} ms, p95 {w.get('p95')} "
                       f"ms, max {w.get('max')} ms")
    rows = worker_rows(s)
    out.append("")
    out.append(f"workers seen: {len(rows)}")
    if rows:
        out.append(table(["worker", "model", "price p/c", "load", "reached", "TEE", "attestation"],
                         [[_short(x["peer_id"]), x["model"], f"{x['price_prompt']}/{x['price_completion']}",
                           f"{x['load']}/{x['max_concurrent']}", x["path"],
                           "dev-INSECURE" if x["dev_insecure"] else x["tee_kind"], _verdict(x)] for x in rows]))
    pay = s.get("payments") or {}
    out.append("")
    if not pay.get("enabled"):
        out.append("payments: off")
    else:
        out.append(f"payments: {pay.get('chain')}; spent {pay.get('spent')} nTON, earned {pay.get('earned')} nTON, "
                   f"wallet {pay.get('wallet_balance')} nTON")
        channels = pay.get("channels") or []
        if channels:
            out.append(table(["channel", "role", "peer", "status", "deposit", "vouchered", "vouchers"],
                             [[_short(c["address"]), c["role"], _short(str(c["peer"])), c["status"], c["deposit"],
                               c["voucher_cumulative"], c["voucher_seqno"]] for c in channels]))
    out.append("")
    out.append("(--json for everything; the same facts as /metrics and /dashboard)")
    return "\n".join(out)
