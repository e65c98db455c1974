"""Golden vectors round-trip, are reproducible, and the TOML schema matches the code."""

from __future__ import annotations

import json
import tomllib
import typing
from pathlib import Path
from typing import Any

import cbor2
import pytest

from cocoon_node.attestation import (
    ANY,
    TEE_DEV,
    AttestationError,
    Policy,
    SnpPolicy,
    decode_and_verify_envelope,
    verify_report,
)
from cocoon_node.attestation import dev as dev_mod
from cocoon_node.attestation import report as report_mod
from cocoon_node.wire import canonical_dumps, decode_cbor, encode_cbor, from_builtins, validate
from cocoon_node.wire.messages import attestation as att_msgs

from .make_vectors import VECTOR_DIR, build, from_json_value, render

SCHEMA = Path(__file__).resolve().parents[2] / "protocols" / "attestation.toml"
FILES = ["claims.json", "dev_evidence.json", "snp_evidence.json", "record.json", "envelope.json", "tdx_collateral.json",
         "snp_collateral.json"]
MESSAGE_OF = {
    "claims.json": "attestation_claims",
    "dev_evidence.json": "dev_evidence",
    "snp_evidence.json": "snp_evidence",
    "record.json": "attestation_report",
    "envelope.json": "attestation_envelope",
    "tdx_collateral.json": "tdx_collateral",
    "snp_collateral.json": "snp_collateral",
}


def _load(name: str) -> list[dict[str, Any]]:
    data = json.loads((VECTOR_DIR / name).read_text(encoding="utf-8"))
    assert isinstance(data, list) and data
    return data


@pytest.mark.parametrize("name", FILES)
def test_vectors_round_trip(name: str) -> None:
    for vec in _load(name):
        assert set(vec) == {"name", "hex", "value"}
        raw = bytes.fromhex(vec["hex"])
        value = from_json_value(vec["value"])
        assert cbor2.loads(raw) == value, vec["name"]
        assert canonical_dumps(value) == raw, vec["name"]
        # and through the declared type: decode, re-encode, the same bytes
        typ = att_msgs.MESSAGES[MESSAGE_OF[name]]
        assert encode_cbor(decode_cbor(raw, typ)) == raw, vec["name"]


def test_vectors_are_reproducible() -> None:
    built = build()
    assert sorted(built) == sorted(FILES)
    for name, vectors in built.items():
        assert (VECTOR_DIR / name).read_text(encoding="utf-8") == render(vectors), name


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_envelope_vectors_decode_and_verify() -> None:
    dev_env, tdx_env, snp_env = (bytes.fromhex(v["hex"]) for v in _load("envelope.json"))
    rep = decode_and_verify_envelope(dev_env)
    policy = Policy(tee_kinds=frozenset({TEE_DEV}), image_hashes=ANY, model_hashes=ANY)
    assert verify_report(dev_env, rep.claims.peer_id, policy, rep.claims.issued_at).ok
    tdx = decode_and_verify_envelope(tdx_env)
    with pytest.raises(AttestationError) as ei:
        verify_report(
            tdx_env,
            tdx.claims.peer_id,
            Policy(image_hashes=ANY, mrtds=ANY, model_hashes=ANY),
            tdx.claims.issued_at,
        )
    assert ei.value.check == "report_data"
    snp = decode_and_verify_envelope(snp_env)
    with pytest.raises(AttestationError) as ei:
        verify_report(snp_env, snp.claims.peer_id, Policy(tee_kinds=frozenset({"snp"}), image_hashes=ANY,
                                                          model_hashes=ANY, snp=SnpPolicy(measurements=ANY)),
                      snp.claims.issued_at)
    assert ei.value.check == "report_data"


def test_schema_matches_code() -> None:
    """The constants the code uses agree with the TOML (the field tables: tests/wire/test_types_match_toml.py)."""
    schema = tomllib.loads(SCHEMA.read_text())
    assert schema["protocol"] == {
        "name": "attestation",
        "dht_namespace": "/cocoon-att/",
        "encoding": "cbor-canonical",
        "version": 2,
    }
    msgs = schema["messages"]
    assert msgs["attestation_report"]["max_bytes"] == report_mod.MAX_ENVELOPE_BYTES
    assert msgs["attestation_envelope"]["max_bytes"] == report_mod.MAX_ENVELOPE_BYTES
    assert msgs["attestation_report"]["fields"]["evidence"]["max"] == report_mod.MAX_EVIDENCE_BYTES
    assert msgs["dev_evidence"]["max_bytes"] == dev_mod.MAX_DEV_EVIDENCE_BYTES
    assert msgs["attestation_report"]["fields"]["tee_kind"]["values"] == list(report_mod.TEE_KINDS)
    assert report_mod.TEE_KINDS == typing.get_args(att_msgs.TeeKind)
    assert msgs["attestation_report"]["fields"]["version"]["values"] == [report_mod.REPORT_VERSION]
    # every vector satisfies its message's field table, read both by the TOML validator and by the type
    for name, msg in MESSAGE_OF.items():
        for vec in _load(name):
            value = from_json_value(vec["value"])
            validate("attestation", msg, value)
            from_builtins(value, att_msgs.MESSAGES[msg])
            assert len(bytes.fromhex(vec["hex"])) <= msgs[msg]["max_bytes"]


def test_collateral_is_shipped_but_not_claimed() -> None:
    """The record vector with collateral carries the tdx_collateral vector, and its claims are exactly the TDX
    claims vector: collateral is left out of the claims the quote commits to, like the evidence."""
    _dev, with_col = (bytes.fromhex(v["hex"]) for v in _load("record.json"))
    (col,) = (bytes.fromhex(v["hex"]) for v in _load("tdx_collateral.json"))
    record = report_mod.decode_record(with_col)
    assert record.collateral == col
    tdx_claims = bytes.fromhex(_load("claims.json")[1]["hex"])
    assert report_mod.Claims.of_record(record).to_cbor() == tdx_claims
    assert "collateral" not in cbor2.loads(tdx_claims)
