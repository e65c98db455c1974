"""What ``GET /v1/models`` lists: the live workers per model, with the gate's verdict on each (a private
part of ``node``, out of ``node.py`` to keep it readable in one sitting)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cocoon_node.inference import Requester
from cocoon_node.mesh import Announcement
from cocoon_node.node.attest import AttestationGate
from cocoon_node.node.hardware import hardware_dict, hardware_matches, hardware_summary


def model_entries(live: Iterable[Announcement], gate: AttestationGate | None, requester: Requester | None,
                  filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Entries for ``GET /v1/models``: worker count, price range, announced hardware and, per worker, the
    verdict the gate would apply now (binding to the announcement included), never what the announcement
    claims. ``hardware`` is what the worker announces (detected or declared, as it says): attestation
    binds none of it.

    ``filters`` (query parameters): ``min_context_length`` (tokens) and ``accelerator`` (a substring of the
    announced accelerator, case-insensitive) keep only the workers that announce them."""
    by_model: dict[str, list[Announcement]] = {}
    for a in live:
        if hardware_matches(a.hardware, filters or {}):
            by_model.setdefault(a.model, []).append(a)
    out = []
    for model, workers in sorted(by_model.items()):
        verdicts = [{**(gate.describe(w) if gate else
                        {"worker": w.peer.to_base58(), "verified": False,
                         "reasons": ["this node is not a requester"]}),
                     "hardware": hardware_dict(w),
                     # announced load (a heartbeat behind) and this requester's own requests on it now
                     "load": w.load, "max_concurrent": w.max_concurrent,
                     "in_flight": requester.selector.in_flight.get(w.peer_id, 0) if requester else 0}
                    for w in workers]
        out.append({
            "id": model, "object": "model", "created": 0, "owned_by": "cocoon-mesh",
            "cocoon": {
                "workers": len(workers),
                "verified_workers": sum(1 for v in verdicts if v["verified"]),
                "synthetic": any(w.synthetic for w in workers),
                "price_prompt": [min(w.price_prompt for w in workers), max(w.price_prompt for w in workers)],
                "price_completion": [min(w.price_completion for w in workers),
                                     max(w.price_completion for w in workers)],
                "attestation": verdicts,
                **hardware_summary(workers),
            },
        })
    return out
