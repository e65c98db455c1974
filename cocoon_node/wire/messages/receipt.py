"""``protocols/receipt.toml``: the signed receipt of one completed request (canonical CBOR)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from msgspec import Meta

from cocoon_node.wire.typed import Message, Uint, utf8_max

Digest = Annotated[bytes, Meta(min_length=32, max_length=32)]


class Receipt(Message, frozen=True):
    """What a worker signs for a completed request (the prefixed envelope's payload)."""

    MAX_BYTES: ClassVar[int] = 2048

    v: Literal[1]
    request_id: Annotated[str, utf8_max(64)]
    request_digest: Digest
    output_digest: Digest
    model_name: Annotated[str, utf8_max(256)]
    model_hash: Digest
    prompt_tokens: Uint
    completion_tokens: Uint
    price_prompt: Uint
    price_completion: Uint
    channel: Annotated[str, utf8_max(128)]
    voucher_seqno: Uint
    voucher_cumulative: Uint
    issued_at: Uint
    worker: Annotated[bytes, Meta(max_length=64)]
    report_hash: Digest


PROTOCOL = "receipt"
MESSAGES: dict[str, type[Message]] = {"receipt": Receipt}
