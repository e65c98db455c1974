"""TCB status through dcap-qvl, offline, with Intel-format collateral signed by a fake Intel PKI.

Real Intel collateral needs a PCCS/PCS fetch (no network here), so the collateral path is exercised
end to end under a fake root passed as the trust anchor (test-only ``_verify`` / monkeypatch).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon_node.attestation import ANY, TEE_TDX, AttestationError, Claims, Policy, sign_report, verify_report
from cocoon_node.attestation import tdx as tdx_mod

from .att_helpers import AT_VALID, fixed_ed25519, forge_quote, make_collateral, make_fake_pki, real_quote

PKI = make_fake_pki()
RD = real_quote().td_report.report_data
FORGED = forge_quote(PKI)


def test_up_to_date() -> None:
    res = tdx_mod._verify(FORGED, RD, at=AT_VALID, collateral=make_collateral(PKI, FORGED), root=PKI.root)
    assert res.tcb_checked and res.tcb_status == "UpToDate" and res.tcb_reason == "checked with dcap-qvl"


@pytest.mark.parametrize("status", ["OutOfDate", "SWHardeningNeeded", "ConfigurationNeeded"])
def test_other_statuses_reported(status: str) -> None:
    col = make_collateral(PKI, FORGED, status=status, advisories=("INTEL-SA-00999",))
    res = tdx_mod._verify(FORGED, RD, at=AT_VALID, collateral=col, root=PKI.root)
    assert res.tcb_status == status and res.advisory_ids == ("INTEL-SA-00999",)


def test_revoked_and_bad_collateral_fail_tcb() -> None:
    for col in (
        make_collateral(PKI, FORGED, status="Revoked"),
        make_collateral(PKI, FORGED, tamper_tcb_info=True),
        "not collateral",
    ):
        with pytest.raises(AttestationError) as ei:
            tdx_mod._verify(FORGED, RD, at=AT_VALID, collateral=col, root=PKI.root)
        assert ei.value.check == "tcb", str(ei.value)


def test_collateral_never_rescues_a_foreign_root() -> None:
    with pytest.raises(AttestationError) as ei:
        tdx_mod.verify_tdx_quote(FORGED, RD, at=AT_VALID, collateral=make_collateral(PKI, FORGED))
    assert ei.value.check == "pck_root"


def test_verify_report_with_collateral(monkeypatch: pytest.MonkeyPatch) -> None:
    node = fixed_ed25519("node-1")
    now = int(AT_VALID.timestamp())
    c = Claims.for_key(
        node.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        model_name="m",
        model_hash=bytes(32),
        node_version="0.1.0",
        issued_at=now,
        expires_at=now + 600,
        tee_kind=TEE_TDX,
    )
    quote = forge_quote(PKI, report_data=c.report_data())
    env = sign_report(c, quote, node)
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", PKI.root)
    policy = Policy(image_hashes=ANY, mrtds=ANY, model_hashes=ANY, require_tcb_check=True)
    v = verify_report(env, c.peer_id, policy, now, collateral=make_collateral(PKI, quote))
    assert v.ok and v.tcb_checked and v.tcb_status == "UpToDate" and v.reasons == ()
    old = make_collateral(PKI, quote, status="OutOfDate")
    with pytest.raises(AttestationError) as ei:
        verify_report(env, c.peer_id, policy, now, collateral=old)
    assert ei.value.check == "tcb_status"
    relaxed = replace(policy, allowed_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    assert verify_report(env, c.peer_id, relaxed, now, collateral=old).tcb_status == "OutOfDate"
