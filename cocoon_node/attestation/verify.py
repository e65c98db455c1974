"""Verify a peer's attestation report envelope against a :class:`Policy`.

:func:`verify_report` raises :class:`AttestationError` (``check`` names what failed) and returns an
ok :class:`Verdict`; :func:`check_report` never raises for attestation failures and returns a
non-ok Verdict instead, for callers that log and score rather than branch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .collateral import collateral_next_update, decode_snp_collateral
from .dev import verify_dev_evidence
from .errors import AttestationError
from .policy import UPSTREAM_ANYWHERE, UPSTREAM_NONE, Policy, rtmr_set_digest, upstream_in_td
from .report import TEE_DEV, TEE_SNP, TEE_TDX, Report, decode_and_verify_envelope
from .snp_evidence import snp_image_hash, verify_snp_evidence
from .tdx import verify_tdx_quote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one report; hex strings for digests so it logs and serialises as is."""

    ok: bool
    tee_kind: str | None
    image_hash: str | None
    mrtd: str | None
    model_hash: str | None
    model_name: str | None
    tcb_checked: bool
    tcb_status: str | None
    expires_at: int | None
    reasons: tuple[str, ...]
    check: str | None = None  # the failed check when not ok
    issued_at: int | None = None
    backend: str | None = None
    upstream: str | None = None  # where the worker sends prompts ("" = nowhere: the model runs in the TD)
    measurement: str | None = None  # SEV-SNP launch MEASUREMENT (the MRTD's counterpart)

    @property
    def prompts_leave_tee(self) -> bool:
        """The report says prompts go to an upstream outside the TD (only a policy allowing it accepts it)."""
        return bool(self.upstream) and not upstream_in_td(self.upstream or "")

    @classmethod
    def failed(cls, check: str, reason: str) -> Verdict:
        """A not-ok verdict that names the failed check (nothing verified, so no measurements)."""
        return cls(ok=False, tee_kind=None, image_hash=None, mrtd=None, model_hash=None, model_name=None,
                   tcb_checked=False, tcb_status=None, expires_at=None, reasons=(reason,), check=check)


def _check_times(report: Report, policy: Policy, now: int) -> None:
    c = report.claims
    if c.expires_at < c.issued_at:
        raise AttestationError("expired", f"expires_at {c.expires_at} before issued_at {c.issued_at}")
    if c.issued_at > now + policy.clock_skew_s:
        raise AttestationError("not_yet_valid", f"issued_at {c.issued_at} is in the future (now {now})")
    if now > c.expires_at + policy.clock_skew_s:
        raise AttestationError("expired", f"report expired at {c.expires_at} (now {now})")
    if now - c.issued_at > policy.max_report_age_s:
        raise AttestationError("too_old", f"report issued {now - c.issued_at}s ago, max age {policy.max_report_age_s}s")


def _check_upstream(report: Report, policy: Policy, reasons: list[str]) -> None:
    """Where prompts go: nowhere, an upstream on the TD's loopback, or (only if the policy says so) elsewhere."""
    c = report.claims
    if c.backend == "openai-upstream" and not c.upstream:
        raise AttestationError("upstream", "an upstream backend must name its upstream in the report")
    if not c.upstream:
        return
    if policy.upstream == UPSTREAM_NONE:
        raise AttestationError("upstream", f"worker forwards prompts to {c.upstream}; policy allows no upstream")
    if upstream_in_td(c.upstream):
        reasons.append(f"upstream {c.upstream} on the TD's loopback")
        return
    if policy.upstream != UPSTREAM_ANYWHERE:
        raise AttestationError("upstream", f"worker forwards prompts to {c.upstream}, outside the TD")
    log.warning("ACCEPTING a worker that forwards prompts OUTSIDE the TEE to %s (policy.upstream = anywhere)",
                c.upstream)
    reasons.append(f"PROMPTS LEAVE THE TEE: forwarded to {c.upstream}")


def _verify_snp(report: Report, policy: Policy, now: int, reasons: list[str],
                collateral: Any) -> tuple[bytes, bytes, str | None]:
    """SNP evidence to AMD's pinned roots, REPORT_DATA = our claims, the SNP policy, AMD's CRL when shipped;
    (image hash, measurement, TCB status). The report carries no time: the claims' validity window, checked
    by the caller, is bound to it through REPORT_DATA."""
    if collateral is None and policy.require_collateral:
        raise AttestationError("crl", "report ships no AMD CRL; the policy requires it "
                                      "(allow_missing_collateral accepts such reports)")
    crl = None if collateral is None else decode_snp_collateral(collateral)
    res = verify_snp_evidence(report.evidence, report.claims.report_data(), policy.snp, now=now, crl=crl)
    floor = policy.snp.min_tcb.get(res.product)
    if floor is None:
        if policy.require_tcb_check:
            raise AttestationError("tcb", f"TCB check required but the policy sets no minimum for {res.product}")
        reasons.append(f"tcb not checked: no minimum TCB for {res.product} in the policy")
        status = None
    else:
        status = f"meets minimum {floor}"
    crl_note = "AMD CRL checked" if crl is not None else "AMD CRL not checked"
    reasons.append(f"snp {res.product} {res.signing_key} VMPL {res.report.vmpl}, reported TCB {res.reported_tcb}; "
                   f"{crl_note}")
    return snp_image_hash(res.report), res.measurement, status


def verify_report(
    report_bytes: bytes,
    expected_peer_id: bytes,
    policy: Policy,
    now: int | None = None,
    *,
    collateral: Any = None,
) -> Verdict:
    """Verify envelope, peer id, validity window, TEE evidence and policy; raise AttestationError.

    ``now`` is unix seconds (default: the clock). ``collateral`` overrides what the record ships in its
    ``collateral`` field (TDX: Intel's TCB info, QE identity, CRLs, checked with dcap-qvl at ``now``; SNP:
    AMD's CRL).
    """
    now = int(time.time()) if now is None else int(now)
    report = decode_and_verify_envelope(report_bytes)
    c = report.claims
    if c.peer_id != bytes(expected_peer_id):
        raise AttestationError("peer_id", "report is for another peer id")
    _check_times(report, policy, now)
    if c.tee_kind not in policy.tee_kinds:
        raise AttestationError("tee_kind", f"tee kind {c.tee_kind!r} not allowed by policy")
    if not policy.allows_model(c.model_name, c.model_hash):
        raise AttestationError("model_hash", f"model hash {c.model_hash.hex()} not allowed for model "
                                             f"{c.model_name!r} by policy")

    reasons: list[str] = []
    mrtd: str | None = None
    measurement: bytes | None = None
    tcb_checked, tcb_status = False, None
    if collateral is None and report.collateral:
        collateral = report.collateral  # what the worker shipped (vendor-signed, checked below)
    if c.tee_kind == TEE_TDX:
        res = verify_tdx_quote(report.evidence, c.report_data(), at=now, collateral=collateral)
        td = res.quote.td_report
        if td.debug and not policy.allow_debug_td:
            raise AttestationError("debug_td", "TD runs in debug mode (host can read its memory)")
        if td.mrtd not in policy.mrtds:
            raise AttestationError("mrtd", f"MRTD {td.mrtd.hex()} not allowed by policy")
        if rtmr_set_digest(td.rtmrs) not in policy.rtmrs:
            raise AttestationError("rtmr", "RTMR0..3 not an allowed set")
        image_hash = res.image_hash
        mrtd = td.mrtd.hex()
        tcb_checked, tcb_status = res.tcb_checked, res.tcb_status
        if not tcb_checked:
            if policy.require_collateral:
                raise AttestationError("tcb", f"report ships no TCB collateral ({res.tcb_reason}); the policy "
                                              "requires it (allow_missing_collateral accepts such reports)")
            if policy.require_tcb_check:
                raise AttestationError("tcb", f"TCB status required but not checked: {res.tcb_reason}")
            reasons.append(f"tcb not checked: {res.tcb_reason}")
        elif tcb_status not in policy.allowed_tcb_statuses:
            raise AttestationError("tcb_status", f"TCB status {tcb_status} not allowed by policy")
        if res.advisory_ids:
            reasons.append("advisories: " + ",".join(res.advisory_ids))
    elif c.tee_kind == TEE_SNP:
        image_hash, measurement, tcb_status = _verify_snp(report, policy, now, reasons, collateral)
        tcb_checked = tcb_status is not None
    elif c.tee_kind == TEE_DEV:
        dev = verify_dev_evidence(report.evidence, c.report_data())
        if dev.platform_key not in policy.dev_platform_keys:
            raise AttestationError("dev_platform_key", "dev platform key not allowed by policy")
        image_hash = dev.image_hash
        reasons.append("dev-INSECURE tee: proves nothing about hardware")
    else:  # pragma: no cover - decode rejects unknown kinds
        raise AttestationError("tee_kind", f"unknown tee kind {c.tee_kind!r}")
    if image_hash not in policy.image_hashes:
        raise AttestationError("image_hash", f"image hash {image_hash.hex()} not allowed by policy")
    _check_upstream(report, policy, reasons)
    expires_at = c.expires_at
    if isinstance(collateral, bytes) and collateral and c.tee_kind in (TEE_TDX, TEE_SNP):
        stale = collateral_next_update(c.tee_kind, collateral)  # checked above: it decodes
        if stale is not None and stale < expires_at:
            expires_at = stale  # the verdict lasts no longer than the collateral it was checked with
    if c.tee_kind == TEE_DEV:
        log.warning(
            "ACCEPTING dev-INSECURE attestation from peer %s (model %s): this proves NOTHING about "
            "hardware; never allow dev reports in production",
            c.peer_id.hex(),
            c.model_name,
        )
    return Verdict(
        ok=True,
        tee_kind=c.tee_kind,
        image_hash=image_hash.hex(),
        mrtd=mrtd,
        model_hash=c.model_hash.hex(),
        model_name=c.model_name,
        tcb_checked=tcb_checked,
        tcb_status=tcb_status,
        expires_at=expires_at,
        reasons=tuple(reasons),
        issued_at=c.issued_at,
        backend=c.backend,
        upstream=c.upstream,
        measurement=measurement.hex() if measurement is not None else None,
    )


def check_report(
    report_bytes: bytes,
    expected_peer_id: bytes,
    policy: Policy,
    now: int | None = None,
    *,
    collateral: Any = None,
) -> Verdict:
    """Like :func:`verify_report` but returns a non-ok Verdict (``check`` + reason) instead of raising."""
    try:
        return verify_report(report_bytes, expected_peer_id, policy, now, collateral=collateral)
    except AttestationError as exc:
        return Verdict.failed(exc.check, str(exc))
