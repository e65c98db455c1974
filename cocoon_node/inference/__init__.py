"""Inference: OpenAI chat requests, the model backends a worker serves from, and the direct inference stream.

- :mod:`.chat`: chat-completions request validation (:func:`parse_chat_request`);
- :mod:`.backend` (the interface), :mod:`.factory` (one from config), and the backends: :mod:`.synthetic`,
  :mod:`.torch_cpu`, :mod:`.exllama`, :mod:`.upstream`;
- :mod:`.stream`, the stream ``/cocoon/inference/1.0.0`` as one import: :mod:`.port` (protocol id, limits,
  the meter protocols and errors both ends and payments share; payments imports this module only),
  :mod:`.server` (the worker's end), :mod:`.client` (the requester's end);
- :mod:`.requester` (choose a worker, retry before the first token; ranked by :mod:`.selection`),
  :mod:`.admission` (the bounded, fair queue a request waits in for a free slot),
  :mod:`.warm` (idle negotiated streams), :mod:`.audit` (the requester's own token count),
  :mod:`.tokencount` (tokenizers named by hash).

Backend modules with heavy dependencies (torch, transformers, exllamav2) import them only when a model is
loaded, so importing this package is cheap.
"""

from cocoon_node.inference.admission import AdmissionQueue, QueueRejected, client_key
from cocoon_node.inference.backend import (
    Backend,
    BackendError,
    ContextLengthError,
    TokenDelta,
)
from cocoon_node.inference.chat import (
    ChatMessage,
    ChatRequest,
    RequestValidationError,
    parse_chat_request,
)
from cocoon_node.inference.client import RequestTooLarge, check_sendable
from cocoon_node.inference.exllama import ExLlamaV2Backend, exllamav2_available
from cocoon_node.inference.extras import ToolCallAccumulator, merge_tool_calls
from cocoon_node.inference.factory import BACKEND_KINDS, make_backend
from cocoon_node.inference.requester import (
    CapabilityUnavailable,
    ContextTooLong,
    Event,
    ModelNotFound,
    NoWorkerAvailable,
    Requester,
    StreamStart,
)
from cocoon_node.inference.stream import (
    PROTOCOL_ID,
    CheckedReceipt,
    Delta,
    Final,
    InferenceServer,
    ReceiptSigner,
    ServedRequest,
    WorkerFailure,
    WorkerMeter,
    WorkerTerms,
)
from cocoon_node.inference.synthetic import SyntheticBackend
from cocoon_node.inference.tokencount import TokenizerRegistry
from cocoon_node.inference.torch_cpu import ModelNotFoundError, TorchBackend, default_model_path
from cocoon_node.inference.upstream import OpenAIUpstreamBackend
from cocoon_node.inference.warm import WarmStreams

__all__ = [
    "BACKEND_KINDS",
    "PROTOCOL_ID",
    "AdmissionQueue",
    "Backend",
    "BackendError",
    "CapabilityUnavailable",
    "ChatMessage",
    "ChatRequest",
    "CheckedReceipt",
    "ContextLengthError",
    "ContextTooLong",
    "Delta",
    "Event",
    "ExLlamaV2Backend",
    "Final",
    "InferenceServer",
    "ModelNotFound",
    "ModelNotFoundError",
    "NoWorkerAvailable",
    "OpenAIUpstreamBackend",
    "QueueRejected",
    "ReceiptSigner",
    "RequestTooLarge",
    "RequestValidationError",
    "Requester",
    "ServedRequest",
    "StreamStart",
    "SyntheticBackend",
    "TokenDelta",
    "TokenizerRegistry",
    "ToolCallAccumulator",
    "TorchBackend",
    "WarmStreams",
    "WorkerFailure",
    "WorkerMeter",
    "WorkerTerms",
    "check_sendable",
    "client_key",
    "default_model_path",
    "exllamav2_available",
    "make_backend",
    "merge_tool_calls",
    "parse_chat_request",
]
