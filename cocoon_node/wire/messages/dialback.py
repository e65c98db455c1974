"""``protocols/dialback.toml``: reachability by dial-back (cocoon_node/mesh/reach.py), msgpack frames tagged ``t``.

:data:`CODEC` decodes and validates a frame body into one of these types in one pass. The dial-back code
(cocoon_node/mesh/reach.py) reads and writes these types through a FrameStream on this codec; the types are
held to the TOML by tests/wire/test_types_match_toml.py and decode the golden vectors byte for byte.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal

from msgspec import Meta

from cocoon_node.wire.typed import FrameCodec, Message, utf8_max

PROTOCOL_ID: Final = "/cocoon/dialback/1.0.0"
MAX_FRAME_BYTES: Final = 4096
Nonce = Annotated[bytes, Meta(min_length=16, max_length=16)]
Addr = Annotated[str, utf8_max(256)]


class DialbackFrame(Message, frozen=True, tag_field="t"):
    """Base of the frames: ``t`` names the message."""


class DialRequest(DialbackFrame, frozen=True, tag="dial_request"):
    """Client -> server: dial these candidate addresses of mine back, each on a NEW connection."""

    MAX_BYTES: ClassVar[int] = MAX_FRAME_BYTES

    v: Literal[1]
    nonce: Nonce                                        # random per request, echoed in dial_back
    addrs: Annotated[list[str], Meta(max_length=8)]     # each at most 256 bytes (the server skips longer ones)


class DialResult(Message, frozen=True):
    """What the server says it did with one address (informational: the client trusts only dial_backs)."""

    MAX_BYTES: ClassVar[int] = 512

    addr: Addr
    status: Literal["ok", "dial_error", "refused"]
    reason: Annotated[str, utf8_max(128)]


class DialResponse(DialbackFrame, frozen=True, tag="dial_response"):
    MAX_BYTES: ClassVar[int] = MAX_FRAME_BYTES

    observed: Addr                                      # where the server saw the request come from ("" unknown)
    results: Annotated[list[DialResult], Meta(max_length=8)]


class DialBack(DialbackFrame, frozen=True, tag="dial_back"):
    """Server -> client, on the fresh connection: the request's nonce and the address it dialled."""

    MAX_BYTES: ClassVar[int] = 512

    nonce: Nonce
    addr: Addr


class DialBackOk(DialbackFrame, frozen=True, tag="dial_back_ok"):
    MAX_BYTES: ClassVar[int] = 64


Frame = DialRequest | DialResponse | DialBack | DialBackOk
CODEC: FrameCodec[Frame] = FrameCodec(Frame, max_frame=MAX_FRAME_BYTES)

PROTOCOL = "dialback"
MESSAGES: dict[str, type[Message]] = {
    "dial_request": DialRequest,
    "dial_response": DialResponse,
    "dial_result": DialResult,
    "dial_back": DialBack,
    "dial_back_ok": DialBackOk,
}
