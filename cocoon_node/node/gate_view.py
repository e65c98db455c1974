"""How a verified report relates to an announcement: the binding rule, and what the API and status show.

A report binds the model *name*, the weight hash, the TEE kind and the backend; an announcement is only
an offer. A request for model M may go to a worker only if its announcement offers M and its verified
report names M with the announced weights (the policy decided those weights are allowed for M). What
``/v1/models`` and status show comes from the verdict, never from the announcement's own claims.
"""

from __future__ import annotations

from typing import Any

from cocoon_node.attestation import TEE_DEV, Verdict
from cocoon_node.mesh import Announcement


def binding_problems(verdict: Verdict, announcement: Announcement) -> list[str]:
    """Why the verified report does not back this announcement (empty: it does)."""
    out = []
    if verdict.model_name != announcement.model:
        out.append(f"report attests model {verdict.model_name!r}, announcement offers {announcement.model!r}")
    if verdict.model_hash != announcement.model_hash.hex():
        out.append("report attests other weights than announced")
    if verdict.tee_kind != announcement.tee_kind:
        out.append(f"report is {verdict.tee_kind}, announcement claims {announcement.tee_kind}")
    if verdict.backend and verdict.backend != announcement.backend:
        out.append(f"report names backend {verdict.backend!r}, announcement {announcement.backend!r}")
    return out


def describe_verdict(announcement: Announcement, fresh: Verdict | None, last: Verdict | None) -> dict[str, Any]:
    """One worker's entry: ``verified`` is exactly what routing would decide now (binding included)."""
    worker = announcement.peer.to_base58()
    if fresh is None:
        reason = "not yet verified" if last is None else "verdict expired; re-checking"
        return {"worker": worker, "verified": False, "tee_kind": None, "dev_insecure": None, "image_hash": None,
                "model_hash": None, "attested_model": None, "upstream": None, "prompts_leave_tee": None,
                "tcb_checked": False, "check": None, "reasons": [reason]}
    problems = binding_problems(fresh, announcement) if fresh.ok else []
    ok = fresh.ok and not problems
    return {
        "worker": worker,
        "verified": ok,
        "tee_kind": fresh.tee_kind,
        "dev_insecure": fresh.tee_kind == TEE_DEV if fresh.tee_kind else None,
        "image_hash": fresh.image_hash,
        "model_hash": fresh.model_hash,
        "attested_model": fresh.model_name,
        "upstream": fresh.upstream,
        "prompts_leave_tee": fresh.prompts_leave_tee if fresh.ok else None,
        "tcb_checked": fresh.tcb_checked,
        "check": None if ok else (fresh.check or "binding"),
        "reasons": [*fresh.reasons, *problems],
    }
