"""``protocols/inference.toml``: the frames of a direct inference stream, a tagged union on ``t``.

The request's ``chat`` stays a free-form map: it is an OpenAI chat request, which
:mod:`cocoon_node.inference.chat` validates (with OpenAI's error messages) once the frame is decoded.
Fields are declared in the order the golden vectors have them (msgpack writes them in declaration order).
Type names end in ``Frame`` so they never clash with the requester's ``Delta`` / ``Final`` results.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import Meta

from cocoon_node.wire.typed import FrameCodec, Message, Uint, utf8_max

PROTOCOL_ID: Final = "/cocoon/inference/1.0.0"
MAX_FRAME_BYTES: Final = 262144

RequestId = Annotated[str, utf8_max(64)]
Millis = Annotated[float, Meta(ge=0)]
RejectCode = Literal["overloaded", "invalid_request", "model_mismatch", "price_mismatch", "payment_required",
                     "context_length", "internal"]
ErrorCode = Literal["backend", "timeout", "protocol", "payment", "internal", "context_length"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]
Logprob = Annotated[float, Meta(ge=-9999, le=0)]  # clamped; -9999 stands for log 0


class _Frame(Message, frozen=True, tag_field="t"):
    """Base of the inference frames: the type travels in ``t``."""


class PaymentRef(Message, frozen=True):
    """The request's ``payment``: which channel pays (vouchers are bound to ``channel_id``)."""

    MAX_BYTES: ClassVar[int] = 1024

    channel: Annotated[str, utf8_max(128)]
    channel_id: Annotated[bytes, Meta(min_length=32, max_length=32)]


class RequestFrame(_Frame, frozen=True, kw_only=True, tag="request"):
    MAX_BYTES: ClassVar[int] = 262144

    v: Literal[1]
    id: RequestId
    chat: dict[str, Any]
    price_prompt: Uint
    price_completion: Uint
    payment: PaymentRef | msgspec.UnsetType = msgspec.UNSET


class AcceptFrame(_Frame, frozen=True, kw_only=True, tag="accept"):
    MAX_BYTES: ClassVar[int] = 256

    id: RequestId
    prompt_tokens: Uint
    credit_window: Uint
    keep_open: bool = False


class RejectFrame(_Frame, frozen=True, kw_only=True, tag="reject"):
    MAX_BYTES: ClassVar[int] = 2048

    id: RequestId
    code: RejectCode
    field: Annotated[str, utf8_max(128)] = ""
    message: Annotated[str, utf8_max(1024)]


class ToolCallPiece(Message, frozen=True, kw_only=True):
    """A piece of tool call ``index`` (OpenAI's ``delta.tool_calls[i]``, flattened): its first piece carries
    ``id`` and ``name``, later ``arguments`` pieces are appended. Empty means absent (omitted)."""

    MAX_BYTES: ClassVar[int] = 33280

    index: Annotated[int, Meta(ge=0, le=127)]
    id: Annotated[str, utf8_max(256)] = ""
    name: Annotated[str, utf8_max(64)] = ""
    arguments: Annotated[str, utf8_max(32768)] = ""


class TopLogprob(Message, frozen=True, kw_only=True):
    """One alternative at a generated token's position."""

    MAX_BYTES: ClassVar[int] = 560

    token: Annotated[str, utf8_max(256)]
    logprob: Logprob
    # the token's raw bytes (may be part of a character); empty: not given. ``bytes`` on the wire.
    raw: Annotated[bytes, Meta(max_length=256)] = msgspec.field(default=b"", name="bytes")


class TokenLogprob(Message, frozen=True, kw_only=True):
    """One generated token's log-probability and its ``top`` alternatives."""

    MAX_BYTES: ClassVar[int] = 12288

    token: Annotated[str, utf8_max(256)]
    logprob: Logprob
    raw: Annotated[bytes, Meta(max_length=256)] = msgspec.field(default=b"", name="bytes")
    top: Annotated[list[TopLogprob], Meta(max_length=20)]


class DeltaFrame(_Frame, frozen=True, tag="delta"):
    MAX_BYTES: ClassVar[int] = 65536

    id: RequestId
    text: Annotated[str, utf8_max(60000)]
    tokens: Uint
    # Optional (minor extension): only for a request that asked for tools / logprobs; omitted when empty,
    # so a plain delta is byte for byte what it was before.
    tool_calls: Annotated[list[ToolCallPiece], Meta(max_length=64)] = []
    logprobs: Annotated[list[TokenLogprob], Meta(max_length=256)] = []


class UsageFrame(_Frame, frozen=True, tag="usage"):
    MAX_BYTES: ClassVar[int] = 256

    id: RequestId
    prompt_tokens: Uint
    completion_tokens: Uint


class FinalFrame(_Frame, frozen=True, tag="final"):
    MAX_BYTES: ClassVar[int] = 512

    id: RequestId
    finish_reason: FinishReason
    prompt_tokens: Uint
    completion_tokens: Uint
    total_tokens: Uint
    ttft_ms: Millis
    generation_ms: Millis
    tokens_per_second: Annotated[float, Meta(ge=0)]


class ErrorFrame(_Frame, frozen=True, tag="error"):
    MAX_BYTES: ClassVar[int] = 2048

    id: RequestId
    code: ErrorCode
    message: Annotated[str, utf8_max(1024)]


class CancelFrame(_Frame, frozen=True, tag="cancel"):
    MAX_BYTES: ClassVar[int] = 128

    id: RequestId


class VoucherFrame(_Frame, frozen=True, tag="voucher"):
    MAX_BYTES: ClassVar[int] = 4096

    id: RequestId
    voucher: Annotated[bytes, Meta(max_length=2048)]


class ReceiptRequestFrame(_Frame, frozen=True, tag="receipt_request"):
    """After ``final``: "sign me a receipt", with the voucher that paid the request (empty: unpaid)."""

    MAX_BYTES: ClassVar[int] = 4096

    id: RequestId
    voucher: Annotated[bytes, Meta(max_length=2048)] = b""


class ReceiptFrame(_Frame, frozen=True, tag="receipt"):
    """The worker's signed receipt envelope (``protocols/receipt.toml``)."""

    MAX_BYTES: ClassVar[int] = 4096

    id: RequestId
    receipt: Annotated[bytes, Meta(max_length=3072)]


InferenceFrame = (RequestFrame | AcceptFrame | RejectFrame | DeltaFrame | UsageFrame | FinalFrame | ErrorFrame
                  | CancelFrame | VoucherFrame | ReceiptRequestFrame | ReceiptFrame)

#: Encodes and decodes (validating) every frame of the protocol.
CODEC: FrameCodec[InferenceFrame] = FrameCodec(InferenceFrame, max_frame=MAX_FRAME_BYTES)

PROTOCOL = "inference"
MESSAGES: dict[str, type[Message]] = {
    "request": RequestFrame,
    "payment_ref": PaymentRef,
    "accept": AcceptFrame,
    "reject": RejectFrame,
    "delta": DeltaFrame,
    "tool_call_piece": ToolCallPiece,
    "token_logprob": TokenLogprob,
    "top_logprob": TopLogprob,
    "usage": UsageFrame,
    "final": FinalFrame,
    "error": ErrorFrame,
    "cancel": CancelFrame,
    "voucher": VoucherFrame,
    "receipt_request": ReceiptRequestFrame,
    "receipt": ReceiptFrame,
}
