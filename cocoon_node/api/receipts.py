"""Receipts on the requester's API (issue 16): kept per completion and shown as ``cocoon.receipt``.

The JSON answer and the final SSE chunk carry ``cocoon: {receipt, receipt_missing}``; ``GET
/v1/cocoon/receipts/{completion id}`` returns the same object later (404 in OpenAI's error shape when
unknown). Its ``receipt`` and ``attestation_report`` (hex) are what ``cocoon-node verify-receipt FILE``
reads: save the answer to a file and check it with no node running.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cocoon_node.api.guard import error_response
from cocoon_node.inference import Final
from cocoon_node.payments.receipt_store import ReceiptStore, StoredReceipt
from cocoon_node.receipts import decode_receipt


def receipt_json(r: StoredReceipt) -> dict[str, Any]:
    fields = decode_receipt(r.receipt)
    return {
        "object": "cocoon.receipt", "completion_id": r.completion_id, "worker": r.worker,
        "receipt": r.receipt.hex(), "attestation_report": r.report.hex(), "verified_by_requester": True,
        "fields": {name: (value.hex() if isinstance(value, bytes) else value)
                   for name in fields.__struct_fields__ for value in (getattr(fields, name),)},
    }


async def keep_receipt(store: ReceiptStore | None, completion_id: str, worker: str, final: Final) -> dict[str, Any]:
    """Store the final's checked receipt (before the answer naming it is sent); the ``cocoon`` object."""
    got = final.receipt
    if got is None:
        return {"receipt": None, "receipt_missing": final.receipt_missing or "no receipt"}
    stored = StoredReceipt(completion_id, decode_receipt(got.envelope).request_id, worker, got.envelope, got.report)
    if store is not None:
        await store.save(stored)
    return {"receipt": receipt_json(stored), "receipt_missing": ""}


def receipt_route(store: ReceiptStore | None, unauthorized: Callable[[Request], JSONResponse | None]) -> Route:
    async def get_receipt(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        cid = request.path_params["completion_id"]
        stored = await store.load(cid) if store is not None else None
        if stored is None:
            return error_response(404, f"no receipt for completion {cid!r}", type_="invalid_request_error",
                                  param="completion_id", code="receipt_not_found")
        return JSONResponse(receipt_json(stored))

    return Route("/v1/cocoon/receipts/{completion_id}", get_receipt, methods=["GET"])
