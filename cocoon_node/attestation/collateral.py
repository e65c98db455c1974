"""The TEE vendor's signed TCB collateral a worker ships with its report (``protocols/attestation.toml``).

A quote proves *which* platform signed it; only Intel's current TCB info, QE identity and CRLs (for SNP:
AMD's CRL) say whether that platform is patched or revoked. Workers fetch them (:mod:`.pcs`) and put them
in the record's ``collateral`` field; requesters verify them with dcap-qvl (TDX) at their own clock, so a
worker cannot vouch for itself: everything in here is vendor-signed and bound to the quote's PCK
certificate (FMSPC) by the verifier.

Times come in as arguments: :func:`tdx_collateral_window` reads the collateral's own validity window, which
is what a cache keeps it for and what a test evaluates inside of (or after).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from cocoon_node.wire import CborError, SchemaError, decode_cbor, encode_cbor
from cocoon_node.wire.messages.attestation import SnpCollateralRecord, TdxCollateralRecord

from .errors import AttestationError

__all__ = [
    "CollateralWindow",
    "SnpCollateralRecord",
    "TdxCollateralRecord",
    "collateral_next_update",
    "decode_snp_collateral",
    "decode_tdx_collateral",
    "encode_snp_collateral",
    "encode_tdx_collateral",
    "tdx_collateral_from_json",
    "tdx_collateral_to_dcap",
    "tdx_collateral_to_json",
    "tdx_collateral_window",
    "tdx_fmspc",
]

#: dcap-qvl's QuoteCollateralV3 fields, in its constructor's order.
_DCAP_FIELDS = ("pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
                "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature")


@dataclass(frozen=True)
class CollateralWindow:
    """When collateral may be used: from the latest issue date to the earliest next update of its parts."""

    issued: datetime
    next_update: datetime

    def contains(self, when: datetime) -> bool:
        when = when if when.tzinfo else when.replace(tzinfo=UTC)  # a naive time is UTC
        return self.issued <= when <= self.next_update


def encode_tdx_collateral(record: TdxCollateralRecord) -> bytes:
    try:
        return encode_cbor(record)
    except (SchemaError, CborError) as exc:
        raise AttestationError("collateral", f"TDX collateral: {exc}") from exc


def decode_tdx_collateral(data: bytes) -> TdxCollateralRecord:
    """Strictly decode the record's ``collateral`` bytes as TDX collateral; raises AttestationError."""
    try:
        return decode_cbor(bytes(data), TdxCollateralRecord)
    except (CborError, SchemaError) as exc:
        raise AttestationError("collateral", f"TDX collateral does not decode: {exc}") from exc


def encode_snp_collateral(crl_der: bytes) -> bytes:
    try:
        return encode_cbor(SnpCollateralRecord(kind="snp", crl=bytes(crl_der)))
    except (SchemaError, CborError) as exc:
        raise AttestationError("collateral", f"SNP collateral: {exc}") from exc


def decode_snp_collateral(data: bytes) -> bytes:
    """The DER CRL inside SNP collateral bytes; raises AttestationError."""
    try:
        return bytes(decode_cbor(bytes(data), SnpCollateralRecord).crl)
    except (CborError, SchemaError) as exc:
        raise AttestationError("collateral", f"SNP collateral does not decode: {exc}") from exc


def tdx_collateral_from_json(text: str | bytes) -> TdxCollateralRecord:
    """Read dcap-qvl's JSON form of collateral (``QuoteCollateralV3.to_json``: hex for the binary fields)."""
    try:
        m = json.loads(text)
        values = {k: m[k] for k in _DCAP_FIELDS}
        for k in ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"):
            values[k] = bytes.fromhex(values[k])
        return TdxCollateralRecord(kind="tdx", **values)
    except (ValueError, KeyError, TypeError) as exc:
        raise AttestationError("collateral", f"not dcap-qvl collateral JSON: {exc}") from exc


def tdx_collateral_to_json(record: TdxCollateralRecord) -> str:
    """dcap-qvl's JSON form (what the on-disk cache holds and ``from_json`` reads back)."""
    out: dict[str, Any] = {}
    for k in _DCAP_FIELDS:
        v = getattr(record, k)
        out[k] = v.hex() if isinstance(v, bytes) else v
    return json.dumps(out, sort_keys=True)


def tdx_collateral_to_dcap(record: TdxCollateralRecord) -> Any:
    """The ``dcap_qvl.QuoteCollateralV3`` dcap-qvl verifies."""
    import dcap_qvl

    return dcap_qvl.QuoteCollateralV3(*(getattr(record, k) for k in _DCAP_FIELDS))


def _iso(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise AttestationError("collateral", f"{what} is not a date")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise AttestationError("collateral", f"{what} {value!r} is not an ISO date") from exc


def _signed_json(text: str, what: str) -> dict[str, Any]:
    try:
        m = json.loads(text)
    except ValueError as exc:
        raise AttestationError("collateral", f"{what} is not JSON: {exc}") from exc
    if not isinstance(m, dict):
        raise AttestationError("collateral", f"{what} is not a JSON object")
    return m


def _crl_times(der: bytes, what: str) -> tuple[datetime, datetime]:
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise AttestationError("collateral", f"{what} is not a DER CRL: {exc}") from exc
    nxt = crl.next_update_utc
    if nxt is None:
        raise AttestationError("collateral", f"{what} has no nextUpdate")
    return crl.last_update_utc, nxt


def tdx_collateral_window(record: TdxCollateralRecord) -> CollateralWindow:
    """The window in which every part (TCB info, QE identity, both CRLs) is current."""
    tcb = _signed_json(record.tcb_info, "TCB info")
    qe = _signed_json(record.qe_identity, "QE identity")
    starts = [_iso(tcb.get("issueDate"), "TCB info issueDate"), _iso(qe.get("issueDate"), "QE identity issueDate")]
    ends = [_iso(tcb.get("nextUpdate"), "TCB info nextUpdate"), _iso(qe.get("nextUpdate"), "QE identity nextUpdate")]
    for der, what in ((record.pck_crl, "PCK CRL"), (record.root_ca_crl, "root CA CRL")):
        start, end = _crl_times(der, what)
        starts.append(start)
        ends.append(end)
    return CollateralWindow(issued=max(starts), next_update=min(ends))


def collateral_next_update(tee_kind: str, collateral: bytes) -> int | None:
    """Unix time after which checked collateral is stale (TDX: its window's end; SNP: the CRL's nextUpdate), so a
    cached verdict lasts no longer than what it was checked with; None when there is nothing to read."""
    if tee_kind == "tdx":
        return int(tdx_collateral_window(decode_tdx_collateral(collateral)).next_update.timestamp())
    if tee_kind == "snp":
        return int(_crl_times(decode_snp_collateral(collateral), "AMD CRL")[1].timestamp())
    return None


def tdx_fmspc(record: TdxCollateralRecord) -> str:
    """The FMSPC (platform model) the TCB info is for, upper-case hex."""
    fmspc = _signed_json(record.tcb_info, "TCB info").get("fmspc")
    if not isinstance(fmspc, str):
        raise AttestationError("collateral", "TCB info names no FMSPC")
    return fmspc.upper()
