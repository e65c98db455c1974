"""Receipts on the inference stream (issue 16): the worker signs what it served, the requester checks it.

Worker: :func:`sign_served` answers a ``receipt_request`` (sent after ``final`` with the voucher that paid the
request) once that voucher is taken like any other. Requester: :class:`ReceiptExpectation` is what the
requester itself saw (request and output digests, tokens, prices, channel, voucher); :func:`check_receipt`
compares a receipt with it and with the worker's attested report, field by field, naming both values of
the first mismatch (a worker fault: :class:`ReceiptMismatch`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cocoon_node.inference.port import PaymentRef, PaymentRequired, ReceiptSigner, ServedRequest, WorkerMeter
from cocoon_node.receipts import ReceiptError, check_receipt_signature, decode_receipt, output_digest, request_digest
from cocoon_node.wire.messages.inference import AcceptFrame, ReceiptRequestFrame, RequestFrame
from cocoon_node.wire.messages.receipt import Receipt

__all__ = ["ReceiptExpectation", "ReceiptMismatch", "ReportLookup", "check_receipt", "sign_served"]

#: (worker peer id, report hash) -> that worker's attested report envelope, if it is the one the gate verified
#: (or the newest it can find and verify); None otherwise.
ReportLookup = Callable[[bytes, bytes], Awaitable[bytes | None]]


async def sign_served(signer: ReceiptSigner | None, meter: WorkerMeter | None, request: RequestFrame,
                      accept: AcceptFrame, completion_tokens: int, output: list[str],
                      asked: ReceiptRequestFrame) -> bytes | None:
    """The signed receipt, or None (no signer, or the named voucher is refused: a receipt never names a
    voucher this worker did not accept; a replay of an accepted one is fine)."""
    if signer is None:
        return None
    if asked.voucher and meter is not None:
        try:
            await meter.on_voucher(accept.id, asked.voucher)
        except PaymentRequired:
            return None
    payment = request.payment
    served = ServedRequest(
        request_id=accept.id, chat_wire=request.chat, output="".join(output), prompt_tokens=accept.prompt_tokens,
        completion_tokens=completion_tokens, price_prompt=request.price_prompt,
        price_completion=request.price_completion,
        channel=payment.channel if isinstance(payment, PaymentRef) else "", voucher=asked.voucher)
    try:
        return signer.sign(served)
    except ValueError:
        return None


class ReceiptMismatch(Exception):
    """The worker's receipt disagrees with what the requester saw (``field``: the first that does)."""

    def __init__(self, field: str, ours: Any, theirs: Any) -> None:
        super().__init__(f"receipt {field}: worker signed {_show(theirs)}, requester saw {_show(ours)}")
        self.field, self.ours, self.theirs = field, ours, theirs


def _show(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


@dataclass(frozen=True)
class ReceiptExpectation:
    """What the requester saw of one request, in the receipt's terms."""

    request_id: str
    request_digest: bytes
    output_digest: bytes
    model_name: str
    prompt_tokens: int
    completion_tokens: int
    price_prompt: int
    price_completion: int
    channel: str
    voucher_seqno: int
    voucher_cumulative: int

    @classmethod
    def of(cls, request: RequestFrame, output: str, prompt_tokens: int, completion_tokens: int,
           voucher: tuple[int, int]) -> ReceiptExpectation:
        payment = request.payment
        return cls(request.id, request_digest(request.chat), output_digest(output), str(request.chat.get("model")),
                   prompt_tokens, completion_tokens, request.price_prompt, request.price_completion,
                   payment.channel if isinstance(payment, PaymentRef) else "", *voucher)


async def check_receipt(envelope: bytes, expected: ReceiptExpectation, worker: bytes,
                        reports: ReportLookup) -> tuple[Receipt, bytes]:
    """The receipt and the report it verified against; :class:`ReceiptMismatch` when it is not signed by the
    key the worker's attested report binds, or says anything else than what we saw."""
    try:
        named = decode_receipt(envelope).report_hash
    except ReceiptError as exc:
        raise ReceiptMismatch("format", "a receipt", str(exc)) from None
    report = await reports(worker, named)
    if report is None:
        raise ReceiptMismatch("report_hash", "the worker's attested report", named)
    try:
        receipt = check_receipt_signature(envelope, report)
    except ReceiptError as exc:
        raise ReceiptMismatch(exc.check, "signed by the attested key", str(exc)) from None
    if receipt.worker != worker:
        raise ReceiptMismatch("worker", worker, receipt.worker)
    for name in ReceiptExpectation.__dataclass_fields__:
        ours, theirs = getattr(expected, name), getattr(receipt, name)
        if ours != theirs:
            raise ReceiptMismatch(name, ours, theirs)
    assert hashlib.sha256(report).digest() == receipt.report_hash
    return receipt, report
