"""Inference: OpenAI chat request validation and the model backends a worker serves from.

Backend modules with heavy dependencies (torch, transformers, exllamav2) import them only when a model is
loaded, so importing this package is cheap.
"""

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
from cocoon_node.inference.exllama import ExLlamaV2Backend, exllamav2_available
from cocoon_node.inference.factory import BACKEND_KINDS, make_backend
from cocoon_node.inference.synthetic import SyntheticBackend
from cocoon_node.inference.torch_cpu import ModelNotFoundError, TorchBackend, default_model_path
from cocoon_node.inference.upstream import OpenAIUpstreamBackend

__all__ = [
    "BACKEND_KINDS",
    "Backend",
    "BackendError",
    "ChatMessage",
    "ChatRequest",
    "ContextLengthError",
    "ExLlamaV2Backend",
    "ModelNotFoundError",
    "OpenAIUpstreamBackend",
    "RequestValidationError",
    "SyntheticBackend",
    "TokenDelta",
    "TorchBackend",
    "default_model_path",
    "exllamav2_available",
    "make_backend",
    "parse_chat_request",
]
