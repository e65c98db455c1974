"""Intel TDX quote v4 (ECDSA-P256) parsing and verification.

A quote is only worth something if every link from Intel's root key down to the TD report is
checked, so :func:`verify_tdx_quote` walks the whole chain itself with ``cryptography``:

1. the PCK certificate chain in the quote ends in a root whose public key equals the **pinned**
   Intel SGX Root CA key below (``pck_root``), each link is signed by its parent (``pck_chain``) and
   every certificate is valid at ``at`` (``cert_validity``);
2. the QE report is signed by the PCK leaf key (``qe_report_signature``) and comes from Intel's TD
   quoting enclave (``qe_identity``: pinned MRSIGNER, ISVPRODID 2, not a debug enclave);
3. QE REPORTDATA = SHA-256(attestation key || QE authentication data) || 32 zero bytes
   (``qe_report_data_binding``), which certifies the attestation key;
4. header || TD report body is signed by that attestation key (``quote_signature``);
5. TD REPORTDATA equals what the caller expects (``report_data``);
6. optionally, with collateral (TCB info, QE identity, CRLs), TCB status via ``dcap-qvl``.

This module is the face: the quote layout and parser live in :mod:`._tdx_quote`, the pinned root and the
chain walk in :mod:`._tdx_pck`; the names below are re-exported from there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._tdx_pck import (
    INTEL_SGX_ROOT_CA,
    INTEL_SGX_ROOT_CA_PEM,
    INTEL_SGX_ROOT_CA_PUBKEY,
    _check_chain,
    _ecdsa_ok,
    _p256_from_raw,
)
from ._tdx_quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_DATA_TYPE_PCK_CHAIN,
    CERT_DATA_TYPE_QE_REPORT,
    ECDSA_KEY_LEN,
    ECDSA_SIG_LEN,
    HEADER_LEN,
    IMAGE_HASH_FIELDS,
    QE_REPORT_LEN,
    QUOTE_VERSION,
    SIGNED_LEN,
    TD_REPORT_FIELDS,
    TD_REPORT_LEN,
    TEE_TYPE_TDX,
    QeReport,
    QuoteHeader,
    TdReport,
    TdxQuote,
    parse_tdx_quote,
)
from .collateral import TdxCollateralRecord, decode_tdx_collateral, tdx_collateral_to_dcap, tdx_collateral_window
from .errors import AttestationError

__all__ = [
    "ATT_KEY_TYPE_ECDSA_P256",
    "CERT_DATA_TYPE_PCK_CHAIN",
    "CERT_DATA_TYPE_QE_REPORT",
    "ECDSA_KEY_LEN",
    "ECDSA_SIG_LEN",
    "HEADER_LEN",
    "IMAGE_HASH_FIELDS",
    "INTEL_QE_MRSIGNER",
    "INTEL_QE_VENDOR_ID",
    "INTEL_SGX_ROOT_CA",
    "INTEL_SGX_ROOT_CA_PEM",
    "INTEL_SGX_ROOT_CA_PUBKEY",
    "INTEL_TD_QE_PRODID",
    "QE_REPORT_LEN",
    "QUOTE_VERSION",
    "SIGNED_LEN",
    "TD_REPORT_FIELDS",
    "TD_REPORT_LEN",
    "TEE_TYPE_TDX",
    "QeReport",
    "QuoteHeader",
    "TdReport",
    "TdxQuote",
    "TdxVerification",
    "parse_tdx_quote",
    "verify_tdx_quote",
]

#: Intel's quoting-enclave vendor id (informational; the QE itself is pinned by MRSIGNER below).
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: MRSIGNER of Intel's production quoting enclaves, as published in Intel's QE identity collateral.
INTEL_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
#: ISVPRODID of the TD quoting enclave (the SGX QE uses 1).
INTEL_TD_QE_PRODID = 2


@dataclass(frozen=True)
class TdxVerification:
    """Outcome of a successful :func:`verify_tdx_quote`."""

    quote: TdxQuote
    image_hash: bytes
    tcb_checked: bool
    tcb_status: str | None
    tcb_reason: str
    advisory_ids: tuple[str, ...] = ()

    @property
    def mrtd(self) -> bytes:
        return self.quote.td_report.mrtd


def _as_datetime(at: datetime | int | float | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if isinstance(at, datetime):
        return at if at.tzinfo else at.replace(tzinfo=UTC)
    return datetime.fromtimestamp(at, UTC)


def verify_tdx_quote(
    quote: bytes | TdxQuote,
    expected_report_data: bytes,
    *,
    at: datetime | int | float | None = None,
    collateral: Any = None,
) -> TdxVerification:
    """Verify a TDX quote from the pinned Intel root down to REPORTDATA; raise AttestationError.

    ``at`` (datetime or unix seconds, default now) is the time for certificate validity and TCB
    checks. ``collateral`` is Intel's TCB info, QE identity and CRLs (:class:`TdxCollateralRecord`, its
    canonical CBOR as a record carries it, or a ``dcap_qvl.QuoteCollateralV3``); without
    it the result says ``tcb_checked=False`` — the quote is genuine but its platform may be unpatched.
    """
    return _verify(quote, expected_report_data, at=at, collateral=collateral, root=INTEL_SGX_ROOT_CA)


def _verify(
    quote: bytes | TdxQuote,
    expected_report_data: bytes,
    *,
    at: datetime | int | float | None,
    collateral: Any,
    root: x509.Certificate,
) -> TdxVerification:
    """:func:`verify_tdx_quote` with the trust anchor as a parameter, so tests can build a whole fake
    Intel PKI; production code must go through :func:`verify_tdx_quote` (pinned root)."""
    q = quote if isinstance(quote, TdxQuote) else parse_tdx_quote(quote)
    when = _as_datetime(at)

    certs = q.pck_chain()
    _check_chain(certs, root, when)
    try:
        leaf_key = certs[0].public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError("pck_chain", f"PCK leaf key does not parse: {exc}") from exc
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or not isinstance(leaf_key.curve, ec.SECP256R1):
        raise AttestationError("pck_chain", "PCK leaf key is not ECDSA P-256")

    if not _ecdsa_ok(leaf_key, q.qe_report_signature, q.qe_report_bytes):
        raise AttestationError("qe_report_signature", "QE report is not signed by the PCK leaf key")

    qe = q.qe_report
    if qe.mrsigner != INTEL_QE_MRSIGNER or qe.isv_prod_id != INTEL_TD_QE_PRODID:
        raise AttestationError(
            "qe_identity",
            f"QE is not Intel's TD quoting enclave (mrsigner {qe.mrsigner.hex()}, prodid {qe.isv_prod_id})",
        )
    if qe.attributes[0] & 0x02:
        raise AttestationError("qe_identity", "quoting enclave runs in debug mode")

    binding = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
    if qe.report_data != binding + bytes(32):
        raise AttestationError(
            "qe_report_data_binding",
            "QE REPORTDATA != SHA-256(attestation key || QE auth data) || zeros",
        )

    att_key = _p256_from_raw(q.attestation_key, "qe_report_data_binding")
    if not _ecdsa_ok(att_key, q.signature, q.signed_bytes):
        raise AttestationError("quote_signature", "header || TD report body not signed by the attestation key")

    if len(expected_report_data) != 64 or q.td_report.report_data != bytes(expected_report_data):
        raise AttestationError(
            "report_data",
            f"REPORTDATA {q.td_report.report_data.hex()} != expected {bytes(expected_report_data).hex()}",
        )

    tcb_checked, status, reason = False, None, "no collateral supplied"
    advisories: tuple[str, ...] = ()
    if collateral is not None:
        status, advisories = _check_tcb(q.to_bytes(), collateral, root, when)
        tcb_checked, reason = True, "checked with dcap-qvl"
    return TdxVerification(
        quote=q,
        image_hash=q.td_report.image_hash(),
        tcb_checked=tcb_checked,
        tcb_status=status,
        tcb_reason=reason,
        advisory_ids=tuple(advisories),
    )


def _check_tcb(raw: bytes, collateral: Any, root: x509.Certificate, when: datetime) -> tuple[str, tuple[str, ...]]:
    """Run dcap-qvl over the quote with the collateral (TdxCollateralRecord, its CBOR bytes, or a
    ``dcap_qvl.QuoteCollateralV3``), anchored at ``root``, at ``when``."""
    try:
        import dcap_qvl
    except ImportError as exc:  # pragma: no cover - dependency present in the venv
        raise AttestationError("tcb", "collateral supplied but dcap-qvl is not installed") from exc
    if isinstance(collateral, bytes | bytearray | memoryview):
        try:
            collateral = decode_tdx_collateral(bytes(collateral))
        except AttestationError as exc:
            raise AttestationError("tcb", str(exc)) from exc
    if isinstance(collateral, TdxCollateralRecord):
        try:
            window = tdx_collateral_window(collateral)
        except AttestationError as exc:
            raise AttestationError("tcb", str(exc)) from exc
        if not window.contains(when):
            raise AttestationError("tcb", f"collateral is valid {window.issued.isoformat()} .. "
                                          f"{window.next_update.isoformat()}, not at {when.isoformat()}")
        collateral = tdx_collateral_to_dcap(collateral)
    if not isinstance(collateral, dcap_qvl.QuoteCollateralV3):
        raise AttestationError("tcb", "collateral must be tdx_collateral or a dcap_qvl.QuoteCollateralV3")
    try:
        rep = dcap_qvl.verify_with_root_ca(
            raw, collateral, root.public_bytes(serialization.Encoding.DER), int(when.timestamp())
        )
    except ValueError as exc:
        raise AttestationError("tcb", f"dcap-qvl rejected the quote/collateral: {exc}") from exc
    return str(rep.status), tuple(str(a) for a in rep.advisory_ids)
