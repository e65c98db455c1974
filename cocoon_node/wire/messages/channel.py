"""``protocols/channel.toml``: cooperative channel close between payer and payee, a tagged union on ``t``."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final

from msgspec import Meta

from cocoon_node.wire.typed import FrameCodec, Message, Uint, utf8_max

PROTOCOL_ID: Final = "/cocoon/channel/1.0.0"
MAX_FRAME_BYTES: Final = 4096

Signature = Annotated[bytes, Meta(min_length=64, max_length=64)]


class _Frame(Message, frozen=True, tag_field="t"):
    """Base of the channel-control frames: the type travels in ``t``."""


class CloseRequest(_Frame, frozen=True, tag="close_request"):
    """The payer's signed close terms, for the payee to co-sign."""

    MAX_BYTES: ClassVar[int] = 1024

    channel: Annotated[str, utf8_max(128)]
    channel_id: Annotated[bytes, Meta(min_length=32, max_length=32)]
    cumulative: Uint
    payer_sig: Signature


class CloseReply(_Frame, frozen=True, tag="close_reply"):
    MAX_BYTES: ClassVar[int] = 256

    payee_sig: Signature


class CloseRefused(_Frame, frozen=True, tag="close_refused"):
    MAX_BYTES: ClassVar[int] = 1024

    reason: Annotated[str, utf8_max(512)]


ChannelFrame = CloseRequest | CloseReply | CloseRefused

#: Encodes and decodes (validating) every frame of the protocol.
CODEC: FrameCodec[ChannelFrame] = FrameCodec(ChannelFrame, max_frame=MAX_FRAME_BYTES)

PROTOCOL = "channel"
MESSAGES: dict[str, type[Message]] = {
    "close_request": CloseRequest,
    "close_reply": CloseReply,
    "close_refused": CloseRefused,
}
