"""What the dashboard page shows, cut from the status snapshot and the metric totals (no bookkeeping of its own).

The page polls this every couple of seconds and draws its charts from the differences between polls.
"""

from __future__ import annotations

import time
from typing import Any

from cocoon_node.attestation.report import TEE_DEV
from cocoon_node.observe.metrics import NodeMetrics


def _verdict(gate: dict[str, Any] | None) -> dict[str, Any]:
    if not gate:
        return {"verified": None, "reasons": ["not checked by this node (not a requester)"]}
    return {"verified": bool(gate.get("verified")), "check": gate.get("check"),
            "reasons": list(gate.get("reasons") or []), "tee_kind": gate.get("tee_kind")}


def worker_rows(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for w in snapshot.get("workers") or []:
        rows.append({
            "peer_id": w.get("peer_id", ""), "model": w.get("model", ""),
            "price_prompt": w.get("price_prompt"), "price_completion": w.get("price_completion"),
            "load": w.get("load"), "max_concurrent": w.get("max_concurrent"),
            "ttft_ms": w.get("ttft_ms"), "tokens_per_second": w.get("tokens_per_second"),
            "path": w.get("path") or "unknown", "synthetic": bool(w.get("synthetic")),
            "dev_insecure": w.get("announced_tee_kind") == TEE_DEV,
            "tee_kind": w.get("announced_tee_kind"),
            "attestation": _verdict(w.get("gate")),
        })
    return rows


def dashboard_data(snapshot: dict[str, Any], models: list[dict[str, Any]], metrics: NodeMetrics) -> dict[str, Any]:
    pay = snapshot.get("payments") or {}
    roles = [r for r in ("worker", "requester") if snapshot.get(r)]
    return {
        "time": time.time(),
        "node": {"peer_id": snapshot.get("peer_id"), "version": snapshot.get("version"),
                 "network": snapshot.get("network"), "uptime_s": snapshot.get("uptime_s"), "roles": roles,
                 "connected_peers": snapshot.get("connected_peers"), "worker": snapshot.get("worker")},
        "workers": worker_rows(snapshot),
        "models": [{"id": m.get("id"), "workers": (m.get("cocoon") or {}).get("workers"),
                    "verified_workers": (m.get("cocoon") or {}).get("verified_workers"),
                    "price_prompt": (m.get("cocoon") or {}).get("price_prompt"),
                    "price_completion": (m.get("cocoon") or {}).get("price_completion"),
                    "synthetic": (m.get("cocoon") or {}).get("synthetic")} for m in models],
        "payments": {"enabled": bool(pay.get("enabled")), "chain": pay.get("chain"),
                     "spent": pay.get("spent"), "earned": pay.get("earned"),
                     "wallet_balance": pay.get("wallet_balance"),
                     "onchain_ops": {**(pay.get("onchain_ops") or {}), **(pay.get("settlement") or {})},
                     "channels": [{k: ch.get(k) for k in ("address", "role", "peer", "status", "deposit",
                                                          "voucher_seqno", "voucher_cumulative", "claimed")}
                                  for ch in pay.get("channels") or []]},
        "totals": metrics.totals(),
        "recent_errors": list(metrics.recent_errors)[-20:][::-1],
    }
