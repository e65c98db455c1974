"""``protocols/envelope.toml``: the domain-bound signed envelope (libp2p RFC 0002 style) of signed records."""

from __future__ import annotations

from typing import Annotated, ClassVar

from msgspec import Meta

from cocoon_node.wire.typed import Message, utf8_max


class SignedEnvelope(Message, frozen=True):
    """``sig`` = signature by ``key`` over canonical CBOR of [signing context, domain, payload]."""

    MAX_BYTES: ClassVar[int] = 32768

    domain: Annotated[str, utf8_max(64)]
    key: Annotated[bytes, Meta(max_length=128)]
    payload: Annotated[bytes, Meta(max_length=32000)]
    sig: Annotated[bytes, Meta(max_length=128)]


PROTOCOL = "envelope"
MESSAGES: dict[str, type[Message]] = {"envelope": SignedEnvelope}
