"""The direct inference stream ``/cocoon/inference/1.0.0``, as one import: port, worker's server, requester's client.

- :mod:`.port`: protocol id and limits, the meter protocols and errors both ends and payments share;
- :mod:`.server`: the worker's :class:`InferenceServer` (one accepted request is a ``_Generation``);
- :mod:`.client`: the requester's :func:`call_worker` and :class:`InferenceCall`.

The frames are typed in :mod:`cocoon_node.wire.messages.inference`. Payments imports :mod:`.port` only.
"""

from cocoon_node.inference.client import CheckedReceipt, Delta, Final, InferenceCall, WorkerFailure, call_worker
from cocoon_node.inference.port import (
    MAX_FRAME,
    PROTOCOL_ID,
    MeterError,
    PaymentRequired,
    ReceiptSigner,
    RequesterMeter,
    ServedRequest,
    WorkerMeter,
    open_frames,
    sole_exception,
)
from cocoon_node.inference.receipting import ReportLookup
from cocoon_node.inference.server import InferenceServer, WorkerStats, WorkerTerms

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_ID",
    "CheckedReceipt",
    "Delta",
    "Final",
    "InferenceCall",
    "InferenceServer",
    "MeterError",
    "PaymentRequired",
    "ReceiptSigner",
    "ReportLookup",
    "RequesterMeter",
    "ServedRequest",
    "WorkerFailure",
    "WorkerMeter",
    "WorkerStats",
    "WorkerTerms",
    "call_worker",
    "open_frames",
    "sole_exception",
]
