"""Receipts verify offline against the worker's attestation report; any changed field fails verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
import msgspec
import pytest

from cocoon_node.attestation import ANY, TEE_DEV, DevPlatform, Policy, dev_image_hash, sign_report
from cocoon_node.receipts import ReceiptError, output_digest, request_digest, sign_receipt, verify_receipt
from cocoon_node.wire import canonical_dumps, encode_cbor
from cocoon_node.wire.messages.receipt import Receipt
from tests.attestation.att_helpers import fixed_ed25519
from tests.attestation.test_verify import NODE, NOW, make_claims

VECTORS = Path(__file__).resolve().parents[2] / "protocols" / "vectors" / "receipt" / "receipt.json"
DEV = DevPlatform(fixed_ed25519("receipt-dev"))
POLICY = Policy(tee_kinds=frozenset({TEE_DEV}), image_hashes=ANY, model_hashes=ANY)
CHAT = {"model": "qwen3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def report() -> bytes:
    c = make_claims(TEE_DEV)
    return sign_report(c, DEV.evidence(c.report_data(), dev_image_hash("0.1.0")), NODE)


def receipt(rep: bytes, **kw: Any) -> Receipt:
    c = make_claims(TEE_DEV)
    base: dict[str, Any] = dict(
        v=1, request_id="r-1", request_digest=request_digest(CHAT), output_digest=output_digest("Hello there"),
        model_name=c.model_name, model_hash=c.model_hash, prompt_tokens=9, completion_tokens=2, price_prompt=1000,
        price_completion=2000, channel="0:" + "11" * 32, voucher_seqno=3, voucher_cumulative=13_000,
        issued_at=NOW, worker=c.peer_id, report_hash=hashlib.sha256(rep).digest())
    base.update(kw)
    return Receipt(**base)


def test_a_receipt_verifies_against_its_report() -> None:
    rep = report()
    check = verify_receipt(sign_receipt(receipt(rep), NODE), rep, POLICY)
    assert check.receipt.completion_tokens == 2 and check.report.ok and check.report.tee_kind == TEE_DEV


def _changed(value: Any) -> Any:
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if isinstance(value, bool):  # pragma: no cover - no bool fields
        return not value
    if isinstance(value, int):
        return value + 1
    return value + "x"


@pytest.mark.parametrize("field", [f for f in Receipt.__struct_fields__ if f != "v"])
def test_every_field_is_signed(field: str) -> None:
    """The worker's signature covers each field: a receipt with one value changed does not verify."""
    rep = report()
    env = cbor2.loads(sign_receipt(receipt(rep), NODE))
    payload = cbor2.loads(env["payload"])
    payload[field] = _changed(payload[field])
    forged = canonical_dumps({"payload": canonical_dumps(payload), "signature": env["signature"]})
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(forged, rep, POLICY)
    assert ei.value.check in (("report_hash",) if field == "report_hash" else ("signature",)), str(ei.value)


def test_honestly_signed_lies_are_caught() -> None:
    rep = report()
    for kw, check in (({"worker": b"\x00\x24" + bytes(36)}, "worker"), ({"model_hash": bytes(32)}, "model"),
                      ({"model_name": "other"}, "model"), ({"issued_at": NOW + 7 * 86_400}, "report"),
                      ({"report_hash": bytes(32)}, "report_hash")):
        with pytest.raises(ReceiptError) as ei:
            verify_receipt(sign_receipt(receipt(rep, **kw), NODE), rep, POLICY)
        assert ei.value.check == check, (kw, str(ei.value))
    other_key = fixed_ed25519("not-the-worker")
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(sign_receipt(receipt(rep), other_key), rep, POLICY)
    assert ei.value.check == "signature"
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(b"\xa0", rep, POLICY)
    assert ei.value.check == "format"
    dev_refused = Policy(image_hashes=ANY, model_hashes=ANY)  # a policy that accepts no dev-INSECURE report
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(sign_receipt(receipt(rep), NODE), rep, dev_refused)
    assert ei.value.check == "report" and "tee_kind" in str(ei.value)


def build_vectors() -> list[dict[str, Any]]:
    from tests.attestation.make_vectors import to_json_value

    rep = report()
    r = receipt(rep)
    return [{"name": "receipt", "hex": encode_cbor(r).hex(), "value": to_json_value(msgspec.to_builtins(r))},
            {"name": "receipt-envelope", "hex": sign_receipt(r, NODE).hex(),
             "value": to_json_value(cbor2.loads(sign_receipt(r, NODE)))},
            {"name": "attestation-report-it-names", "hex": rep.hex(), "value": to_json_value(cbor2.loads(rep))}]


def test_golden_vectors() -> None:
    """protocols/vectors/receipt/receipt.json is what this code produces (rewrite: python -m tests.receipts...)."""
    assert json.loads(VECTORS.read_text()) == build_vectors()
    rec, env, rep = (bytes.fromhex(v["hex"]) for v in json.loads(VECTORS.read_text()))
    assert verify_receipt(env, rep, POLICY).receipt == msgspec.convert(cbor2.loads(rec), Receipt)


if __name__ == "__main__":
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(json.dumps(build_vectors(), indent=2) + "\n")
    print("wrote", VECTORS)


def test_verify_receipt_command(tmp_path: Path) -> None:
    """`cocoon-node verify-receipt FILE` with no node running: verdict printed, exit status says it."""
    import subprocess
    import sys

    rep = report()
    good = tmp_path / "receipt.json"
    good.write_text(json.dumps({"receipt": sign_receipt(receipt(rep), NODE).hex(), "attestation_report": rep.hex()}))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cocoon_node", "verify-receipt", *args], capture_output=True,
                              text=True, timeout=120, check=False)

    ok = run(str(good), "--allow-dev-tee")
    assert ok.returncode == 0 and "RECEIPT VERIFIES" in ok.stdout and "dev-INSECURE" in ok.stdout, ok.stdout + ok.stderr
    dev = run(str(good))  # a dev-INSECURE report is refused unless asked for
    assert dev.returncode == 1 and "DOES NOT VERIFY (report)" in dev.stdout
    bad = tmp_path / "forged.json"
    bad.write_text(json.dumps({"receipt": sign_receipt(receipt(rep, completion_tokens=99), fixed_ed25519("x")).hex(),
                               "attestation_report": rep.hex()}))
    forged = run(str(bad), "--allow-dev-tee")
    assert forged.returncode == 1 and "DOES NOT VERIFY (signature)" in forged.stdout
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    assert run(str(junk)).returncode == 2
