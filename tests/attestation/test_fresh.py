"""Fresh, nonce-bound evidence (protocols/attest.toml) checked offline with verify_fresh_evidence.

dev-INSECURE end to end; TDX and SNP on the recorded evidence: the real TDX quote body re-signed under the
test Intel PKI, and the real Milan report re-signed by a test VCEK for its chip (test roots, monkeypatched),
each with the nonce-bound report data; the unmodified real quote/report as "fresh" evidence is refused at the
binding, since it commits to someone else's data.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cocoon_node.attestation import (
    ANY,
    TEE_DEV,
    TEE_SNP,
    TEE_TDX,
    AttestationError,
    DevPlatform,
    Policy,
    SnpPolicy,
    dev_image_hash,
    encode_snp_evidence,
    sign_report,
    snp_image_hash,
)
from cocoon_node.attestation import snp as snp_mod
from cocoon_node.attestation import tdx as tdx_mod
from cocoon_node.attestation.fresh import nonce_report_data, verify_fresh_evidence

from . import test_snp_gate as sg
from .att_helpers import fixed_ed25519, forge_quote, make_fake_pki, real_quote, real_quote_bytes
from .snp_helpers import patch, real_report, real_vcek
from .snp_helpers import sign_report as resign
from .test_verify import NODE, NOW, make_claims

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

NONCE = bytes(range(32))
OTHER_NONCE = bytes(32)


def expect(check: str, *args: Any, **kw: Any) -> None:
    with pytest.raises(AttestationError) as ei:
        verify_fresh_evidence(*args, **kw)
    assert ei.value.check == check, str(ei.value)


def test_binding_is_the_documented_hash() -> None:
    import hashlib

    rd = nonce_report_data(b"report", NONCE)
    assert rd == hashlib.sha512(b"cocoon/attestation-nonce/v1" + hashlib.sha256(b"report").digest() + NONCE).digest()
    assert nonce_report_data(b"report", OTHER_NONCE) != rd and nonce_report_data(b"report2", NONCE) != rd


def test_dev_fresh_evidence() -> None:
    dev = DevPlatform(fixed_ed25519("fresh-dev"))
    image = dev_image_hash("0.1.0")
    c = make_claims(TEE_DEV)
    report = sign_report(c, dev.evidence(c.report_data(), image), NODE)
    policy = Policy(tee_kinds=frozenset({TEE_DEV}), image_hashes=ANY, model_hashes=ANY)
    fresh = dev.evidence(nonce_report_data(report, NONCE), image)
    v = verify_fresh_evidence(report, fresh, NONCE, c.peer_id, policy, NOW)
    assert v.ok and v.tee_kind == TEE_DEV
    expect("report_data", report, fresh, OTHER_NONCE, c.peer_id, policy, NOW)  # another client's nonce
    # the report's own (old) evidence replayed as fresh: it commits to the claims, not to this nonce
    expect("report_data", report, dev.evidence(c.report_data(), image), NONCE, c.peer_id, policy, NOW)
    other = DevPlatform(fixed_ed25519("another-dev-machine"))
    expect("fresh_tee", report, other.evidence(nonce_report_data(report, NONCE), image), NONCE, c.peer_id,
           policy, NOW)
    expect("fresh_tee", report, dev.evidence(nonce_report_data(report, NONCE), dev_image_hash("9")), NONCE,
           c.peer_id, policy, NOW)
    expect("peer_id", report, fresh, NONCE, bytes(38), policy, NOW)


def test_tdx_fresh_evidence_on_the_recorded_quote(monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_fake_pki()
    c = make_claims(TEE_TDX)
    report = sign_report(c, forge_quote(pki, report_data=c.report_data()), NODE)
    td = real_quote().td_report
    policy = Policy(image_hashes=frozenset({td.image_hash()}), mrtds=frozenset({td.mrtd}), model_hashes=ANY)
    fresh = forge_quote(pki, report_data=nonce_report_data(report, NONCE), att_label="fresh-att-key")
    expect("pck_root", report, fresh, NONCE, c.peer_id, policy, NOW)  # Intel's pinned root: test PKI refused
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", pki.root)
    assert verify_fresh_evidence(report, fresh, NONCE, c.peer_id, policy, NOW).ok
    expect("report_data", report, fresh, OTHER_NONCE, c.peer_id, policy, NOW)
    # another TD image (MRTD changed) answering for this report
    q = real_quote()
    other_td = replace(q, td_report=replace(q.td_report, mrtd=bytes(48)))
    other = forge_quote(pki, report_data=nonce_report_data(report, NONCE), base=other_td)
    expect("fresh_tee", report, other, NONCE, c.peer_id, policy, NOW)


def test_real_tdx_quote_as_fresh_evidence_fails_the_binding() -> None:
    """With Intel's pinned root only: the real quote verifies to Intel, and fails at REPORTDATA."""
    with pytest.raises(AttestationError) as ei:
        tdx_mod.verify_tdx_quote(real_quote_bytes(), nonce_report_data(b"any report", NONCE), at=NOW)
    assert ei.value.check == "report_data"


def test_snp_fresh_evidence_on_the_recorded_report(monkeypatch: pytest.MonkeyPatch) -> None:
    c = sg.claims()
    report = sg.snp_envelope(c)
    policy = sg.POLICY
    rd = nonce_report_data(report, NONCE)
    fresh = encode_snp_evidence(resign(patch(real_report(), sg.REPORT_DATA_AT, rd), sg.KEY), sg.TEST_VCEK)
    expect("cert_chain", report, fresh, NONCE, c.peer_id, policy, sg.NOW)  # AMD's pinned roots: test VCEK refused
    monkeypatch.setattr(snp_mod, "AMD_SNP_ROOTS", sg.PKI.roots)
    v = verify_fresh_evidence(report, fresh, NONCE, c.peer_id, policy, sg.NOW)
    assert v.ok and v.tee_kind == TEE_SNP and v.image_hash == snp_image_hash(sg.REP).hex()
    expect("report_data", report, fresh, OTHER_NONCE, c.peer_id, policy, sg.NOW)
    # a fresh report of another guest image (HOST_DATA changed) answering for this one
    other = encode_snp_evidence(resign(patch(patch(real_report(), sg.REPORT_DATA_AT, rd), 0xC0, b"\x01" * 32),
                                       sg.KEY), sg.TEST_VCEK)
    expect("fresh_tee", report, other, NONCE, c.peer_id, replace(policy, image_hashes=ANY), sg.NOW)


def test_real_snp_report_as_fresh_evidence_fails_the_binding() -> None:
    """With AMD's pinned roots only: the real Milan report verifies to AMD, and fails at REPORT_DATA."""
    from cocoon_node.attestation.snp_evidence import verify_snp_evidence

    with pytest.raises(AttestationError) as ei:
        verify_snp_evidence(encode_snp_evidence(real_report(), real_vcek()), nonce_report_data(b"any", NONCE),
                            SnpPolicy(measurements=ANY), now=sg.NOW)
    assert ei.value.check == "report_data"


def test_tdx_fresh_evidence_is_tcb_checked_with_the_reports_collateral(monkeypatch: pytest.MonkeyPatch) -> None:
    from cocoon_node.attestation.collateral import encode_tdx_collateral, tdx_collateral_from_json

    from .att_helpers import make_collateral

    pki = make_fake_pki()
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", pki.root)
    c = make_claims(TEE_TDX)
    quote = forge_quote(pki, report_data=c.report_data())
    shipped = encode_tdx_collateral(tdx_collateral_from_json(make_collateral(pki, quote).to_json()))  # type: ignore[attr-defined]
    td = real_quote().td_report
    policy = Policy(image_hashes=frozenset({td.image_hash()}), mrtds=frozenset({td.mrtd}), model_hashes=ANY,
                    require_collateral=True)
    report = sign_report(c, quote, NODE, collateral=shipped)
    fresh = forge_quote(pki, report_data=nonce_report_data(report, NONCE), att_label="fresh-att-key")
    v = verify_fresh_evidence(report, fresh, NONCE, c.peer_id, policy, NOW)
    assert v.ok and v.tcb_checked and v.tcb_status == "UpToDate"
    # a client whose policy requires collateral refuses a report that ships none
    bare = sign_report(c, quote, NODE)
    expect("tcb", bare, forge_quote(pki, report_data=nonce_report_data(bare, NONCE)), NONCE, c.peer_id, policy, NOW)
