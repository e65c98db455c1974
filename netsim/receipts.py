"""Receipts in netsim (issue 16): every answered request must come with a receipt that verifies offline and
agrees with what the client itself received, and that the requester stored (``GET /v1/cocoon/receipts``).

:func:`check_answer` runs in the workload right after an answer (the client's own view: the text it read and
the usage it was told); :func:`invariant` adds ``receipts_verified`` to the report from those checks.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from cocoon_node.attestation import ANY, TEE_DEV, TEE_SNP, TEE_TDX, Policy, SnpPolicy
from cocoon_node.receipts import ReceiptError, verify_receipt

# netsim workers run the dev-INSECURE TEE: the receipt's report is judged for its binding, not its hardware.
_POLICY = Policy(tee_kinds=frozenset({TEE_DEV, TEE_TDX, TEE_SNP}), image_hashes=ANY, mrtds=ANY, model_hashes=ANY,
                 snp=SnpPolicy(measurements=ANY), max_report_age_s=10 * 365 * 86_400)


async def check_answer(client: httpx.AsyncClient, api_url: str, completion_id: str, cocoon: Any, text: str,
                       usage: dict[str, int] | None) -> str:
    """``verified``, or what is wrong: missing, does not verify, disagrees with the answer, not stored."""
    got = (cocoon or {}).get("receipt") if isinstance(cocoon, dict) else None
    if not got:
        return f"missing: {(cocoon or {}).get('receipt_missing') if isinstance(cocoon, dict) else 'no cocoon'}"
    try:
        r = verify_receipt(bytes.fromhex(got["receipt"]), bytes.fromhex(got["attestation_report"]), _POLICY).receipt
    except (ReceiptError, ValueError, KeyError, TypeError) as exc:
        return f"does not verify: {exc}"
    if r.output_digest != hashlib.sha256(text.encode()).digest():
        return "output digest disagrees with the streamed text"
    if usage and (r.prompt_tokens, r.completion_tokens) != (usage.get("prompt_tokens"), usage.get("completion_tokens")):
        return f"tokens {r.prompt_tokens}/{r.completion_tokens} disagree with usage {usage}"
    stored = await client.get(f"{api_url}/v1/cocoon/receipts/{completion_id}")
    if stored.status_code != 200 or stored.json().get("receipt") != got["receipt"]:
        return f"not stored (GET answered {stored.status_code})"
    return "verified"


def invariant(results: list[Any], add: Any, *, faults: bool = False) -> None:
    """``receipts_verified``: every answered request has a stored receipt that verifies and agrees. A receipt
    that does not verify, disagrees or was not stored always FAILs; a missing one FAILs too, unless the run
    injects faults (a worker or relay killed between ``final`` and its receipt leaves an answer without one:
    listed, not hidden)."""
    ok = [r for r in results if r.ok]
    checks = [(r.index, str(r.extra.get("receipt", "not checked"))) for r in ok]
    missing = [f"#{i}: {c}" for i, c in checks if c.startswith("missing")]
    bad = [f"#{i}: {c}" for i, c in checks if c != "verified" and not c.startswith("missing")]
    failed = bool(bad) or not ok or (bool(missing) and not faults)
    verified = sum(c == "verified" for _, c in checks)
    add("receipts_verified", "FAIL" if failed else "PASS",
        f"{verified}/{len(ok)} answered requests have a stored receipt that verifies offline and agrees with the "
        f"streamed text and usage" + (f"; bad: {bad[:5]}" if bad else "")
        + (f"; receipt-less{' (faults injected)' if faults else ''}: {missing[:5]}" if missing else ""))
