"""Fresh attestation over a client's nonce: what a client checks to know a report is live, not replayed.

A worker's report (in the DHT) is minutes to hours old; a client that does not want to trust the requester
relaying it asks for new evidence over its own nonce (``protocols/attest.toml``). That evidence's 64-byte
report data is :func:`nonce_report_data`: SHA-512 over a domain, SHA-256 of the report envelope and the nonce,
so it binds the nonce and that one report (and through the report the node key, model and weights).
:func:`verify_fresh_evidence` checks the report as usual, then the new evidence over that report data, and
that it comes from the same TEE as the report's own evidence. Runs offline: no node is needed.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Final

from .dev import verify_dev_evidence
from .errors import AttestationError
from .policy import Policy
from .report import TEE_DEV, TEE_SNP, TEE_TDX, decode_and_verify_envelope
from .snp_evidence import snp_image_hash, verify_snp_evidence
from .tdx import verify_tdx_quote
from .verify import Verdict, verify_report

__all__ = ["NONCE_DOMAIN", "nonce_report_data", "verify_fresh_evidence"]

NONCE_DOMAIN: Final = b"cocoon/attestation-nonce/v1"


def nonce_report_data(report: bytes, nonce: bytes) -> bytes:
    """The 64 bytes fresh evidence commits to: SHA-512(domain || SHA-256(report envelope) || nonce)."""
    return hashlib.sha512(NONCE_DOMAIN + hashlib.sha256(bytes(report)).digest() + bytes(nonce)).digest()


def verify_fresh_evidence(report: bytes, evidence: bytes, nonce: bytes, expected_peer_id: bytes, policy: Policy,
                          now: int | None = None, *, collateral: Any = None) -> Verdict:
    """Verify ``report`` (as :func:`verify_report`) and ``evidence`` over the nonce; raise AttestationError.

    The fresh evidence must verify on its own (same roots and policy as the report's) over
    :func:`nonce_report_data`, and come from the TEE the report names: the same TDX image hash, MRTD and RTMRs;
    the same SNP chip, measurement and image; the same dev platform key and image.
    """
    now = int(time.time()) if now is None else int(now)
    verdict = verify_report(report, expected_peer_id, policy, now, collateral=collateral)
    decoded = decode_and_verify_envelope(report)
    expected = nonce_report_data(report, nonce)
    kind = decoded.claims.tee_kind
    if kind == TEE_TDX:
        # the report's shipped collateral checks the fresh quote's TCB too (same platform, or it fails)
        shipped = collateral if collateral is not None else (decoded.collateral or None)
        fresh = verify_tdx_quote(evidence, expected, at=now, collateral=shipped)
        old = verify_tdx_quote(decoded.evidence, decoded.claims.report_data(), at=now)
        if fresh.image_hash != old.image_hash or fresh.mrtd != old.mrtd:
            raise AttestationError("fresh_tee", "fresh quote is from another TD image than the report's")
    elif kind == TEE_SNP:
        res = verify_snp_evidence(evidence, expected, policy.snp, now=now)
        was = verify_snp_evidence(decoded.evidence, decoded.claims.report_data(), policy.snp, now=now)
        if res.chip_id != was.chip_id:
            raise AttestationError("fresh_tee", "fresh SNP report is from another chip than the report's")
        if snp_image_hash(res.report) != snp_image_hash(was.report):
            raise AttestationError("fresh_tee", "fresh SNP report is from another guest image than the report's")
    elif kind == TEE_DEV:
        fresh_dev = verify_dev_evidence(evidence, expected)
        old_dev = verify_dev_evidence(decoded.evidence, decoded.claims.report_data())
        if fresh_dev.platform_key != old_dev.platform_key or fresh_dev.image_hash != old_dev.image_hash:
            raise AttestationError("fresh_tee", "fresh dev evidence is from another dev platform than the report's")
    else:  # pragma: no cover - decode rejects unknown kinds
        raise AttestationError("tee_kind", f"unknown tee kind {kind!r}")
    return verdict
