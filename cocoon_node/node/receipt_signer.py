"""The worker's receipt signer (issue 16): signs what it served with the key its attestation report binds.

It names the report it runs under by hash (the publisher's current one) and reads the voucher the requester
named as paying the request (``cocoon_node.payments``), which the stream has already taken (verified).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair

from cocoon_node.inference import ServedRequest
from cocoon_node.payments.voucher import SignedVoucher, VoucherError
from cocoon_node.receipts import output_digest, request_digest, sign_receipt
from cocoon_node.wire.messages.receipt import Receipt


class WorkerReceipts:
    """:class:`~cocoon_node.inference.ReceiptSigner` over the node key and the current attestation report."""

    def __init__(self, key_pair: KeyPair, peer_id: bytes, *, model_name: str, model_hash: bytes,
                 report: Callable[[], bytes | None], clock: Callable[[], float] = time.time) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(key_pair.private_key.to_bytes())
        self._peer_id = peer_id
        self._model_name = model_name
        self._model_hash = model_hash
        self._report = report
        self._clock = clock
        self.signed = 0

    def sign(self, served: ServedRequest) -> bytes:
        report = self._report()
        if report is None:
            raise ValueError("no attestation report yet")
        seqno = cumulative = 0
        if served.voucher:
            try:
                v = SignedVoucher.from_boc(served.voucher)
            except VoucherError as exc:
                raise ValueError(f"unreadable voucher: {exc}") from exc
            seqno, cumulative = v.seqno, v.cumulative
        receipt = Receipt(
            v=1, request_id=served.request_id, request_digest=request_digest(served.chat_wire),
            output_digest=output_digest(served.output), model_name=self._model_name, model_hash=self._model_hash,
            prompt_tokens=served.prompt_tokens, completion_tokens=served.completion_tokens,
            price_prompt=served.price_prompt, price_completion=served.price_completion, channel=served.channel,
            voucher_seqno=seqno, voucher_cumulative=cumulative, issued_at=int(self._clock()),
            worker=self._peer_id, report_hash=hashlib.sha256(report).digest())
        self.signed += 1
        return sign_receipt(receipt, self._key)
