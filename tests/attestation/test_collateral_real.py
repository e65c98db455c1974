"""TCB status checked with REAL Intel collateral, recorded with its quote (tests/data/tdx-collateral/).

The quote and collateral are Phala's dcap-qvl samples (provenance in tests/data/README.md). The collateral
is valid 2025-06-19T10:32:27Z .. 2025-07-19T10:00:35Z; verification takes the time as an input, so these
tests evaluate inside that window and after it and pass on any date. A revoked PCK needs a CRL that lists
it, which only Intel could sign for the real chain: that case runs under the test PKI (att_helpers).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon_node.attestation import ANY, TEE_TDX, AttestationError, Claims, Policy, sign_report, verify_report
from cocoon_node.attestation import tdx as tdx_mod
from cocoon_node.attestation.collateral import (
    decode_tdx_collateral,
    encode_tdx_collateral,
    tdx_collateral_from_json,
    tdx_collateral_to_json,
    tdx_collateral_window,
    tdx_fmspc,
)

from .att_helpers import AT_VALID, fixed_ed25519, forge_quote, make_collateral, make_fake_pki

DATA = Path(__file__).resolve().parents[1] / "data" / "tdx-collateral"
QUOTE = (DATA / "tdx_quote").read_bytes()
RD = tdx_mod.parse_tdx_quote(QUOTE).td_report.report_data
COLLATERAL = tdx_collateral_from_json((DATA / "tdx_quote_collateral.json").read_text())
OTHER_PLATFORM = tdx_collateral_from_json((DATA / "other_fmspc_collateral.json").read_text())
WINDOW = tdx_collateral_window(COLLATERAL)
INSIDE = WINDOW.issued + timedelta(days=3)
AFTER = WINDOW.next_update + timedelta(seconds=1)


def refused(collateral: object, at: datetime = INSIDE) -> AttestationError:
    with pytest.raises(AttestationError) as ei:
        tdx_mod.verify_tdx_quote(QUOTE, RD, at=at, collateral=collateral)
    assert ei.value.check == "tcb", str(ei.value)
    return ei.value


def test_recorded_collateral_window_and_platform() -> None:
    assert WINDOW.issued == datetime(2025, 6, 19, 10, 32, 27, tzinfo=UTC)
    assert WINDOW.next_update == datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)
    assert tdx_fmspc(COLLATERAL) == "B0C06F000000" and tdx_fmspc(OTHER_PLATFORM) == "90C06F000000"


def test_valid_collateral_checks_the_tcb() -> None:
    """Inside the window, as the record's CBOR bytes: tcb_checked with Intel's status for this platform."""
    res = tdx_mod.verify_tdx_quote(QUOTE, RD, at=INSIDE, collateral=encode_tdx_collateral(COLLATERAL))
    assert res.tcb_checked and res.tcb_status == "UpToDate" and res.tcb_reason == "checked with dcap-qvl"
    # the same through dcap-qvl's own type and after a round trip through the cache's JSON form
    again = tdx_collateral_from_json(tdx_collateral_to_json(COLLATERAL))
    assert again == COLLATERAL and decode_tdx_collateral(encode_tdx_collateral(again)) == COLLATERAL
    # without collateral the quote is still genuine, but its TCB is unchecked
    assert not tdx_mod.verify_tdx_quote(QUOTE, RD, at=INSIDE).tcb_checked


def test_expired_collateral_is_refused() -> None:
    e = refused(COLLATERAL, AFTER)
    assert "2025-07-19T10:00:35" in str(e)
    refused(COLLATERAL, WINDOW.issued - timedelta(seconds=1))  # and before it was issued
    # dcap-qvl also refuses it on its own (without our window pre-check): TCB info past its nextUpdate
    e = refused(_dcap(COLLATERAL), AFTER)
    assert "expired" in str(e).lower()


def test_collateral_for_another_platform_is_refused() -> None:
    at = tdx_collateral_window(OTHER_PLATFORM).issued + timedelta(days=1)
    e = refused(OTHER_PLATFORM, at)
    assert "fmspc" in str(e).lower()


@pytest.mark.parametrize("field", ["tcb_info_signature", "qe_identity_signature"])
def test_tampered_signature_is_refused(field: str) -> None:
    sig = bytearray(getattr(COLLATERAL, field))
    sig[10] ^= 0x01
    refused(msgspec.structs.replace(COLLATERAL, **{field: bytes(sig)}))


def test_tampered_signed_text_is_refused() -> None:
    """Claiming a better status, or a later nextUpdate, breaks Intel's signature."""
    refused(msgspec.structs.replace(COLLATERAL, tcb_info=COLLATERAL.tcb_info.replace('"OutOfDate"', '"UpToDate"')))
    later = COLLATERAL.tcb_info.replace('"nextUpdate":"2025-07-19', '"nextUpdate":"2035-07-19')
    assert later != COLLATERAL.tcb_info
    refused(msgspec.structs.replace(COLLATERAL, tcb_info=later))


def test_tampered_crl_is_refused() -> None:
    crl = bytearray(COLLATERAL.pck_crl)
    crl[-5] ^= 0x01  # inside the CRL's signature
    refused(msgspec.structs.replace(COLLATERAL, pck_crl=bytes(crl)))


def test_malformed_collateral_bytes_are_refused() -> None:
    for junk in (b"", b"\xa0", b"not cbor at all", encode_tdx_collateral(COLLATERAL)[:-1]):
        refused(junk)


def _dcap(record: object) -> object:
    from cocoon_node.attestation.collateral import tdx_collateral_to_dcap

    return tdx_collateral_to_dcap(record)  # type: ignore[arg-type]


# --- a revoked PCK, under the test PKI (only Intel can sign a CRL listing a real PCK) -------------------------

def test_revoked_pck_in_the_crl_is_refused() -> None:
    pki = make_fake_pki()
    forged = forge_quote(pki)
    rd = tdx_mod.parse_tdx_quote(forged).td_report.report_data
    ok = tdx_mod._verify(forged, rd, at=AT_VALID, collateral=make_collateral(pki, forged), root=pki.root)
    assert ok.tcb_checked
    with pytest.raises(AttestationError) as ei:
        tdx_mod._verify(forged, rd, at=AT_VALID, collateral=make_collateral(pki, forged, revoke_pck=True),
                        root=pki.root)
    assert ei.value.check == "tcb" and "revoked" in str(ei.value).lower()


# --- the record carries the collateral; the policy decides about reports without it --------------------------

def _report(pki: object, *, with_collateral: bool, now: int = int(AT_VALID.timestamp()),
            **col: object) -> tuple[bytes, bytes]:
    node = fixed_ed25519("collateral-node")
    c = Claims.for_key(node.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), model_name="m",
                       model_hash=bytes(32), node_version="0.1.0", issued_at=now, expires_at=now + 600,
                       tee_kind=TEE_TDX)
    quote = forge_quote(pki, report_data=c.report_data())  # type: ignore[arg-type]
    shipped = b""
    if with_collateral:
        dcap = make_collateral(pki, quote, **col)  # type: ignore[arg-type]
        shipped = encode_tdx_collateral(tdx_collateral_from_json(dcap.to_json()))  # type: ignore[attr-defined]
    return sign_report(c, quote, node, collateral=shipped), c.peer_id


POLICY = Policy(image_hashes=ANY, mrtds=ANY, model_hashes=ANY)


def test_report_shipping_collateral_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_fake_pki()
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", pki.root)
    now = int(AT_VALID.timestamp())
    env, peer = _report(pki, with_collateral=True)
    v = verify_report(env, peer, replace(POLICY, require_collateral=True), now)
    assert v.ok and v.tcb_checked and v.tcb_status == "UpToDate"
    for bad in ({"status": "OutOfDate"}, {"status": "Revoked"}, {"revoke_pck": True}, {"tamper_tcb_info": True}):
        env, peer = _report(pki, with_collateral=True, **bad)
        # shipped but failing collateral is refused even by a policy that accepts missing collateral
        with pytest.raises(AttestationError) as ei:
            verify_report(env, peer, POLICY, now)
        assert ei.value.check in ("tcb", "tcb_status"), (bad, ei.value)
    # a fresh report whose shipped collateral is past its nextUpdate (2026-02-01)
    late = int(datetime(2026, 2, 2, tzinfo=UTC).timestamp())
    env, peer = _report(pki, with_collateral=True, now=late)
    with pytest.raises(AttestationError) as ei:
        verify_report(env, peer, POLICY, late)
    assert ei.value.check == "tcb" and "not at 2026-02-02" in str(ei.value)


def test_report_without_collateral_refused_when_the_policy_requires_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_fake_pki()
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", pki.root)
    now = int(AT_VALID.timestamp())
    env, peer = _report(pki, with_collateral=False)
    with pytest.raises(AttestationError) as ei:
        verify_report(env, peer, replace(POLICY, require_collateral=True), now)
    assert ei.value.check == "tcb" and "allow_missing_collateral" in str(ei.value)
    v = verify_report(env, peer, POLICY, now)  # a policy that does not require it: accepted, tcb unchecked
    assert v.ok and not v.tcb_checked and any("tcb not checked" in r for r in v.reasons)


def test_a_verdict_lasts_no_longer_than_its_collateral(monkeypatch: pytest.MonkeyPatch) -> None:
    """A report valid past its collateral's nextUpdate (2026-02-01 for the test PKI's): the verdict expires then,
    so a cached verdict is not used with stale TCB data."""
    pki = make_fake_pki()
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", pki.root)
    node = fixed_ed25519("long-lived")
    now = int(AT_VALID.timestamp())
    c = Claims.for_key(node.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), model_name="m",
                       model_hash=bytes(32), node_version="0.1.0", issued_at=now,
                       expires_at=int(datetime(2026, 3, 1, tzinfo=UTC).timestamp()), tee_kind=TEE_TDX)
    quote = forge_quote(pki, report_data=c.report_data())
    shipped = encode_tdx_collateral(tdx_collateral_from_json(make_collateral(pki, quote).to_json()))  # type: ignore[attr-defined]
    policy = replace(POLICY, max_report_age_s=90 * 86400)
    v = verify_report(sign_report(c, quote, node, collateral=shipped), c.peer_id, policy, now)
    assert v.ok and v.expires_at == int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    bare = verify_report(sign_report(c, quote, node), c.peer_id, policy, now)
    assert bare.expires_at == c.expires_at
