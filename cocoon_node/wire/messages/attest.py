"""``protocols/attest.toml``: fresh attestation over a client's nonce, msgpack frames tagged ``t``.

The worker side is :mod:`cocoon_node.node.fresh_attest`; the binding of the evidence to the nonce and the
report is :func:`cocoon_node.attestation.fresh.nonce_report_data`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal

from msgspec import Meta

from cocoon_node.wire.typed import FrameCodec, Message, utf8_max

PROTOCOL_ID: Final = "/cocoon/attest/1.0.0"
MAX_FRAME_BYTES: Final = 65536  # a report with its collateral (49152) + fresh evidence (12288)
NONCE_BYTES: Final = 32


class AttestFrame(Message, frozen=True, tag_field="t"):
    """Base of the frames: ``t`` names the message."""


class AttestRequest(AttestFrame, frozen=True, tag="attest_request"):
    """Requester -> worker: fresh evidence over this nonce, please."""

    MAX_BYTES: ClassVar[int] = 256

    v: Literal[1]
    nonce: Annotated[bytes, Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]


class AttestResponse(AttestFrame, frozen=True, tag="attest_response"):
    """Worker -> requester: its report envelope and fresh evidence over the nonce-bound report data."""

    MAX_BYTES: ClassVar[int] = MAX_FRAME_BYTES

    report: Annotated[bytes, Meta(max_length=49152)]
    evidence: Annotated[bytes, Meta(max_length=12288)]


class AttestError(AttestFrame, frozen=True, tag="attest_error"):
    MAX_BYTES: ClassVar[int] = 512

    code: Literal["unsupported", "busy", "tee", "no_report"]
    message: Annotated[str, utf8_max(256)]


Frame = AttestRequest | AttestResponse | AttestError
CODEC: FrameCodec[Frame] = FrameCodec(Frame, max_frame=MAX_FRAME_BYTES)

PROTOCOL = "attest"
MESSAGES: dict[str, type[Message]] = {
    "attest_request": AttestRequest,
    "attest_response": AttestResponse,
    "attest_error": AttestError,
}
