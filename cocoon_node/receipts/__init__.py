"""Signed receipts: proof a client can keep of which attested worker answered which request, at what price.

:func:`sign_receipt` (worker), :func:`verify_receipt` (anyone, offline, given the worker's attestation report).
"""

from .receipt import (
    RECEIPT_DOMAIN,
    ReceiptCheck,
    ReceiptError,
    check_receipt_signature,
    decode_receipt,
    output_digest,
    request_digest,
    sign_receipt,
    verify_receipt,
)

__all__ = ["RECEIPT_DOMAIN", "ReceiptCheck", "ReceiptError", "check_receipt_signature", "decode_receipt",
           "output_digest", "request_digest", "sign_receipt", "verify_receipt"]
