"""Receipts (``protocols/receipt.toml``): the worker signs, with the key its attestation binds, what it served.

A receipt names the request (digest of the chat request as received), the output (digest of the text exactly
as streamed), the model and weights, the token counts and prices, the channel and the voucher that paid it,
the time, and the attestation report it ran under (by hash). :func:`verify_receipt` checks, with no node
running: the envelope's signature by the report's key, that the report is the one the receipt names, that the
report's evidence verifies under the given policy at the receipt's time, and that the receipt's worker, model
and weights are the report's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.crypto.ed25519 import Ed25519PublicKey

from cocoon_node.attestation import AttestationError, Policy, Verdict, decode_and_verify_envelope, verify_report
from cocoon_node.wire import (
    CborError,
    SchemaError,
    canonical_dumps,
    decode_cbor,
    decode_prefixed,
    encode_cbor,
    prefixed_signature_ok,
    seal_prefixed,
)
from cocoon_node.wire.messages.receipt import Receipt

__all__ = ["RECEIPT_DOMAIN", "ReceiptCheck", "ReceiptError", "check_receipt_signature", "decode_receipt",
           "output_digest", "request_digest", "sign_receipt", "verify_receipt"]

RECEIPT_DOMAIN: Final = b"cocoon/receipt/v1"


class ReceiptError(ValueError):
    """A receipt does not verify; ``check`` names what failed."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


def request_digest(chat_wire: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical CBOR of the chat request map, as the request frame carried it."""
    return hashlib.sha256(canonical_dumps(chat_wire)).digest()


def output_digest(text: str) -> bytes:
    """SHA-256 of the output exactly as streamed (the deltas' texts, concatenated, UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def sign_receipt(receipt: Receipt, key: Ed25519PrivateKey) -> bytes:
    """The signed envelope: Ed25519(key, domain || canonical CBOR of the receipt)."""
    return seal_prefixed(encode_cbor(receipt), key, RECEIPT_DOMAIN)


@dataclass(frozen=True)
class ReceiptCheck:
    """A receipt that verified, and the verdict on the report it ran under."""

    receipt: Receipt
    report: Verdict


def decode_receipt(envelope: bytes) -> Receipt:
    """The receipt inside a signed envelope, signature NOT checked (to find the report it names)."""
    try:
        return decode_cbor(decode_prefixed(bytes(envelope)).payload, Receipt)
    except (CborError, SchemaError) as exc:
        raise ReceiptError("format", f"receipt: {exc}") from exc


def check_receipt_signature(envelope: bytes, report: bytes) -> Receipt:
    """The receipt, checked against the report envelope it names: signed by the key the report binds, for
    the report's worker, model and weights. The report's evidence is not checked here (see
    :func:`verify_receipt`; a requester's gate has verified it already)."""
    try:
        env = decode_prefixed(bytes(envelope))
        receipt = decode_cbor(env.payload, Receipt)
    except (CborError, SchemaError) as exc:
        raise ReceiptError("format", f"receipt: {exc}") from exc
    if hashlib.sha256(bytes(report)).digest() != receipt.report_hash:
        raise ReceiptError("report_hash", "the receipt names another attestation report")
    try:
        rep = decode_and_verify_envelope(report)
        key = Ed25519PublicKey.from_bytes(rep.public_key_raw)
    except (AttestationError, ValueError) as exc:
        raise ReceiptError("report", f"attestation report: {exc}") from exc
    if not prefixed_signature_ok(env, key, RECEIPT_DOMAIN):
        raise ReceiptError("signature", "receipt not signed by the key the attestation report binds")
    c = rep.claims
    if receipt.worker != c.peer_id:
        raise ReceiptError("worker", "receipt names another worker than the report's")
    if (receipt.model_name, receipt.model_hash) != (c.model_name, c.model_hash):
        raise ReceiptError("model", f"receipt's model {receipt.model_name!r} / {receipt.model_hash.hex()} is not "
                                    f"the report's {c.model_name!r} / {c.model_hash.hex()}")
    return receipt


def verify_receipt(envelope: bytes, report: bytes, policy: Policy) -> ReceiptCheck:
    """Verify a receipt against the worker's attestation report envelope; raise :class:`ReceiptError`.

    The report is verified as of the receipt's ``issued_at`` (it must have been valid then), under ``policy``.
    """
    receipt = check_receipt_signature(envelope, report)
    try:
        verdict = verify_report(report, receipt.worker, policy, receipt.issued_at)
    except AttestationError as exc:
        raise ReceiptError("report", f"attestation report at the receipt's time: {exc}") from exc
    return ReceiptCheck(receipt, verdict)
