"""Build the golden vectors in protocols/vectors/attestation/ from fixed keys (all deterministic).

Rewrite them with ``.venv/bin/python -m tests.attestation.make_vectors`` from the repo root;
test_vectors.py checks that the files equal what this produces.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon_node.attestation import (
    TEE_DEV,
    TEE_SNP,
    TEE_TDX,
    Claims,
    DevPlatform,
    dev_image_hash,
    encode_snp_evidence,
    sign_report,
)
from cocoon_node.attestation.collateral import encode_snp_collateral, encode_tdx_collateral, tdx_collateral_from_json

from .att_helpers import fixed_ed25519, real_quote_bytes
from .snp_helpers import real_report, real_vcek

VECTOR_DIR = Path(__file__).resolve().parents[2] / "protocols" / "vectors" / "attestation"
COLLATERAL_DIR = Path(__file__).resolve().parents[1] / "data" / "tdx-collateral"


def to_json_value(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"$bytes": obj.hex()}
    if isinstance(obj, dict):
        return {k: to_json_value(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_json_value(v) for v in obj]
    return obj


def from_json_value(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"$bytes"}:
            return bytes.fromhex(obj["$bytes"])
        return {k: from_json_value(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_value(v) for v in obj]
    return obj


def _vector(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "hex": data.hex(), "value": to_json_value(cbor2.loads(data))}


def build() -> dict[str, list[dict[str, Any]]]:
    node = fixed_ed25519("cocoon-vector-node-key-1")
    raw = node.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    dev = DevPlatform(fixed_ed25519("cocoon-vector-dev-platform-1"))
    common: dict[str, Any] = dict(
        model_hash=hashlib.sha256(b"cocoon-vector-model").digest(),
        issued_at=1_800_000_000,
        expires_at=1_800_086_400,
    )
    dev_claims = Claims.for_key(raw, model_name="Qwen/Qwen3-8B", node_version="0.1.0", tee_kind=TEE_DEV,
                                backend="torch", **common)
    # an upstream backend binds where its prompts go: here a model server on the TD's own loopback
    tdx_claims = Claims.for_key(raw, model_name="modèle-ß/ü", node_version="0.1.0+tdx", tee_kind=TEE_TDX,
                                backend="openai-upstream", upstream="http://127.0.0.1:8000", **common)
    evidence = dev.evidence(dev_claims.report_data(), dev_image_hash(dev_claims.node_version))
    dev_env = sign_report(dev_claims, evidence, node)
    tdx_env = sign_report(tdx_claims, real_quote_bytes(), node)
    snp_claims = Claims.for_key(raw, model_name="Qwen/Qwen3-8B", node_version="0.1.0+snp", tee_kind=TEE_SNP,
                                backend="torch", **common)
    snp_evidence = encode_snp_evidence(real_report(), real_vcek())  # the real Milan report and its VCEK
    snp_env = sign_report(snp_claims, snp_evidence, node)
    # A record shipping Intel's collateral: the dcap-qvl sample quote with its recorded collateral (the
    # quote's REPORTDATA is not these claims', so verify_report fails it with check "report_data").
    col_quote = (COLLATERAL_DIR / "tdx_quote").read_bytes()
    recorded = (COLLATERAL_DIR / "tdx_quote_collateral.json").read_text()
    collateral = encode_tdx_collateral(tdx_collateral_from_json(recorded))
    col_env = sign_report(tdx_claims, col_quote, node, collateral=collateral)
    return {
        "claims.json": [
            _vector("dev-claims", dev_claims.to_cbor()),
            _vector("tdx-claims-unicode-model-name", tdx_claims.to_cbor()),
            _vector("snp-claims", snp_claims.to_cbor()),
        ],
        "snp_evidence.json": [_vector("snp-evidence-real-milan", snp_evidence)],
        "dev_evidence.json": [_vector("dev-evidence", evidence)],
        "record.json": [_vector("dev-record", cbor2.loads(dev_env)["payload"]),
                        _vector("tdx-record-with-real-collateral", cbor2.loads(col_env)["payload"])],
        "tdx_collateral.json": [_vector("tdx-collateral-real-dcap-qvl-sample", collateral)],
        # The format only: these crl bytes are a placeholder, not a CRL (AMD's are ARK-signed, RSA-PSS).
        "snp_collateral.json": [_vector("snp-collateral-format-only", encode_snp_collateral(b"\x30\x03placeholder"))],
        "envelope.json": [
            _vector("dev-envelope", dev_env),
            # Well-formed and correctly signed, but the real quote's REPORTDATA is not this record's:
            # verify_report fails it with check "report_data".
            _vector("tdx-envelope-real-quote-foreign-report-data", tdx_env),
            # The real Milan report verifies to AMD's pinned Milan ARK, but its REPORT_DATA is not this
            # record's: verify_report fails it with check "report_data".
            _vector("snp-envelope-real-milan-foreign-report-data", snp_env),
        ],
    }


def render(vectors: list[dict[str, Any]]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    for name, vectors in build().items():
        (VECTOR_DIR / name).write_text(render(vectors), encoding="utf-8")
        print(f"wrote {VECTOR_DIR / name} ({len(vectors)} vectors)")


if __name__ == "__main__":
    main()
