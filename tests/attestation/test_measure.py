"""``python -m cocoon_node.attestation.measure``: the values an operator lists to approve a TDX image, read
from a quote or a report, are exactly what a testnet requester's policy then accepts."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon_node.attestation import TEE_TDX, Claims, check_report, rtmr_set_digest, sign_report
from cocoon_node.attestation import tdx as tdx_mod
from cocoon_node.attestation.collateral import encode_tdx_collateral, tdx_collateral_from_json
from cocoon_node.attestation.measure import main, measurements, measurements_of_report
from cocoon_node.config import load_config
from cocoon_node.node.attest import policy_from_config

from .att_helpers import AT_VALID, QUOTE_PATH, fixed_ed25519, forge_quote, make_collateral, make_fake_pki, real_quote

NOW = int(AT_VALID.timestamp())


def test_measurements_of_the_real_quote() -> None:
    td = real_quote().td_report
    m = measurements(QUOTE_PATH.read_bytes())
    assert m["mrtd"] == td.mrtd.hex() and m["rtmrs"] == [r.hex() for r in td.rtmrs]
    assert m["image_hash"] == td.image_hash().hex() and m["rtmr_set_digest"] == rtmr_set_digest(td.rtmrs).hex()
    assert m["debug_td"] is False


def test_printed_policy_approves_the_image_on_testnet(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_fake_pki()
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", pki.root)  # test PKI (test only)
    key = fixed_ed25519("measured-worker")
    claims = Claims.for_key(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), model_name="qwen3-8b",
                            model_hash=hashlib.sha256(b"w").digest(), node_version="0.1.0", issued_at=NOW - 10,
                            expires_at=NOW + 3600, tee_kind=TEE_TDX, backend="torch")
    quote = forge_quote(pki, report_data=claims.report_data())
    shipped = encode_tdx_collateral(tdx_collateral_from_json(make_collateral(pki, quote).to_json()))  # type: ignore[attr-defined]
    envelope = sign_report(claims, quote, key, collateral=shipped)  # as a testnet worker ships it
    (tmp_path / "report.cbor").write_bytes(envelope)
    assert main([str(tmp_path / "report.cbor")]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    cfg = load_config(env={}, overrides={"node": {"network": "testnet"}, "payments": {"chain": "ton"}, **printed})
    assert check_report(envelope, claims.peer_id, policy_from_config(cfg), NOW).ok
    m = measurements_of_report(envelope)
    assert m is not None and m["model"] == f"qwen3-8b={claims.model_hash.hex()}"
    (tmp_path / "junk").write_bytes(b"not evidence")
    assert main([str(tmp_path / "junk")]) == 2
