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


def invariant(results: list[Any], add: Any) -> None:
    """``receipts_verified``: every answered request has a stored receipt that verifies and agrees."""
    ok = [r for r in results if r.ok]
    bad = [f"#{r.index}: {r.extra.get('receipt', 'not checked')}" for r in ok if r.extra.get("receipt") != "verified"]
    add("receipts_verified", "FAIL" if bad or not ok else "PASS",
        f"{len(ok) - len(bad)}/{len(ok)} answered requests have a stored receipt that verifies offline and agrees "
        f"with the streamed text and usage" + (f"; {bad[:5]}" if bad else ""))
