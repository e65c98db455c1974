"""verify_report / check_report: dev TEE round trip, policy, time window, and TDX end to end."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon_node.attestation import (
    ANY,
    TEE_DEV,
    TEE_TDX,
    AttestationError,
    Claims,
    DevPlatform,
    Policy,
    check_report,
    dev_image_hash,
    sign_report,
    verify_dev_evidence,
    verify_report,
)
from cocoon_node.attestation import tdx as tdx_mod

from .att_helpers import AT_VALID, fixed_ed25519, forge_quote, make_fake_pki, real_quote

NODE = fixed_ed25519("node-1")
NODE_RAW = NODE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
DEV = DevPlatform(fixed_ed25519("dev-platform-1"))
MODEL = hashlib.sha256(b"weights").digest()
IMAGE = dev_image_hash("0.1.0")
NOW = int(AT_VALID.timestamp())


def make_claims(tee_kind: str = TEE_DEV, **kw: Any) -> Claims:
    base: dict[str, Any] = dict(
        model_name="qwen3-8b",
        model_hash=MODEL,
        node_version="0.1.0",
        issued_at=NOW - 60,
        expires_at=NOW + 3600,
        tee_kind=tee_kind,
    )
    base.update(kw)
    return Claims.for_key(NODE_RAW, **base)


def dev_report(**kw: Any) -> tuple[bytes, Claims]:
    c = make_claims(**kw)
    return sign_report(c, DEV.evidence(c.report_data(), IMAGE), NODE), c


DEV_POLICY = Policy(
    tee_kinds=frozenset({TEE_TDX, TEE_DEV}), image_hashes=frozenset({IMAGE}), model_hashes=frozenset({MODEL})
)


def expect(check: str, env: bytes, peer: bytes, policy: Policy, now: int = NOW, **kw: Any) -> None:
    with pytest.raises(AttestationError) as ei:
        verify_report(env, peer, policy, now, **kw)
    assert ei.value.check == check, str(ei.value)
    v = check_report(env, peer, policy, now, **kw)
    assert not v.ok and v.check == check and v.reasons


def test_dev_round_trip_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    env, c = dev_report()
    with caplog.at_level(logging.WARNING):
        v = verify_report(env, c.peer_id, DEV_POLICY, NOW)
    assert v.ok and v.tee_kind == TEE_DEV and v.tee_kind == "dev-INSECURE"
    assert v.image_hash == IMAGE.hex() and v.model_hash == MODEL.hex() and v.mrtd is None
    assert v.tcb_checked is False and v.expires_at == c.expires_at
    assert any("INSECURE" in r for r in v.reasons)
    assert any("ACCEPTING dev-INSECURE" in r.message for r in caplog.records if r.levelno == logging.WARNING)


def test_dev_rejected_unless_listed() -> None:
    env, c = dev_report()
    expect("tee_kind", env, c.peer_id, Policy(image_hashes=ANY, model_hashes=ANY))
    assert not Policy().allows_dev


def test_other_peer_rejected() -> None:
    env, _ = dev_report()
    other = Claims.for_key(
        fixed_ed25519("node-2").public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        **{k: v for k, v in make_claims().to_map().items() if k not in ("peer_id", "public_key", "version")},
    )
    expect("peer_id", env, other.peer_id, DEV_POLICY)


def test_time_window() -> None:
    env, c = dev_report()
    expect("expired", env, c.peer_id, DEV_POLICY, now=c.expires_at + 121)
    verify_report(env, c.peer_id, DEV_POLICY, c.expires_at + 100)  # within skew
    expect("not_yet_valid", env, c.peer_id, DEV_POLICY, now=c.issued_at - 121)
    expect("too_old", env, c.peer_id, replace(DEV_POLICY, max_report_age_s=30))
    inverted, ci = dev_report(issued_at=NOW, expires_at=NOW - 1)
    expect("expired", inverted, ci.peer_id, DEV_POLICY)


def test_model_and_image_policy() -> None:
    env, c = dev_report()
    expect("model_hash", env, c.peer_id, replace(DEV_POLICY, model_hashes=frozenset({bytes(32)})))
    expect("model_hash", env, c.peer_id, replace(DEV_POLICY, model_hashes=frozenset()))  # empty = none
    assert verify_report(env, c.peer_id, replace(DEV_POLICY, model_hashes=ANY), NOW).ok
    expect("image_hash", env, c.peer_id, replace(DEV_POLICY, image_hashes=frozenset()))


def test_dev_platform_key_pinning() -> None:
    env, c = dev_report()
    assert verify_report(env, c.peer_id, replace(DEV_POLICY, dev_platform_keys=frozenset({DEV.public_key})), NOW)
    expect("dev_platform_key", env, c.peer_id, replace(DEV_POLICY, dev_platform_keys=frozenset({bytes(32)})))


def test_dev_evidence_bound_to_claims() -> None:
    c = make_claims()
    stolen = DEV.evidence(make_claims(model_name="other").report_data(), IMAGE)
    env = sign_report(c, stolen, NODE)
    expect("report_data", env, c.peer_id, DEV_POLICY)
    bad = bytearray(DEV.evidence(c.report_data(), IMAGE))
    bad[-1] ^= 1  # last signature byte
    expect("dev_signature", sign_report(c, bytes(bad), NODE), c.peer_id, DEV_POLICY)
    with pytest.raises(AttestationError) as ei:
        verify_dev_evidence(b"\xa0", c.report_data())
    assert ei.value.check == "format"


def test_dev_platform_persisted(tmp_path: Path) -> None:
    p = tmp_path / "dev" / "platform.key"
    a = DevPlatform.load_or_create(p)
    b = DevPlatform.load_or_create(p)
    assert a.public_key == b.public_key and p.stat().st_mode & 0o777 == 0o600


def test_tdx_report_verifies_with_pinned_root_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TDX report whose quote commits to the claims, under a fake Intel PKI."""
    pki = make_fake_pki()
    c = make_claims(TEE_TDX)
    env = sign_report(c, forge_quote(pki, report_data=c.report_data()), NODE)
    td = real_quote().td_report
    policy = Policy(
        image_hashes=frozenset({td.image_hash()}), mrtds=frozenset({td.mrtd}), model_hashes=frozenset({MODEL})
    )
    # With Intel's pinned root the fake chain is refused ...
    expect("pck_root", env, c.peer_id, policy)
    # ... and with the fake root pinned (test only), the whole report verifies.
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", pki.root)
    v = verify_report(env, c.peer_id, policy, NOW)
    assert v.ok and v.tee_kind == TEE_TDX and v.mrtd == td.mrtd.hex()
    assert v.tcb_checked is False and v.tcb_status is None
    assert "tcb not checked: no collateral supplied" in v.reasons
    expect("mrtd", env, c.peer_id, replace(policy, mrtds=frozenset({bytes(48)})))
    expect("rtmr", env, c.peer_id, replace(policy, rtmrs=frozenset({(bytes(48),) * 4})))
    assert verify_report(env, c.peer_id, replace(policy, rtmrs=frozenset({td.rtmrs})), NOW).ok
    expect("image_hash", env, c.peer_id, replace(policy, image_hashes=frozenset({bytes(32)})))
    expect("tcb", env, c.peer_id, replace(policy, require_tcb_check=True))
    expect("tee_kind", env, c.peer_id, replace(policy, tee_kinds=frozenset({TEE_DEV})))
    # quote made for other claims: REPORTDATA mismatch
    env2 = sign_report(make_claims(TEE_TDX, node_version="0.2.0"), forge_quote(pki, report_data=c.report_data()), NODE)
    expect("report_data", env2, c.peer_id, policy)
    # debug TD refused unless allowed
    q = real_quote()
    dbg = replace(q, td_report=replace(q.td_report, td_attributes=b"\x01" + q.td_report.td_attributes[1:]))
    env3 = sign_report(c, forge_quote(pki, report_data=c.report_data(), base=dbg), NODE)
    expect("debug_td", env3, c.peer_id, policy)


def test_real_quote_in_a_report_fails_report_data() -> None:
    """The real quote's REPORTDATA commits to someone else's data, never to our claims."""
    c = make_claims(TEE_TDX)
    env = sign_report(c, real_quote().to_bytes(), NODE)
    policy = Policy(image_hashes=ANY, mrtds=ANY, model_hashes=ANY)
    expect("report_data", env, c.peer_id, policy)


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        Policy(tee_kinds=frozenset({"sgx"}))
    assert repr(ANY) == "ANY" and b"x" in ANY


def test_every_byte_of_a_dev_report_matters() -> None:
    env, c = dev_report()
    for pos in range(len(env)):
        b = bytearray(env)
        b[pos] ^= 0x01
        v = check_report(bytes(b), c.peer_id, DEV_POLICY, NOW)
        assert not v.ok and v.check, pos
