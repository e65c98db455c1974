"""``protocols/announce.toml``: a worker's gossiped announcement (canonical CBOR in a domain envelope).

The payload version rules are the TOML's: v1 carries none of the optional fields; v2 carries ``tokenizer``
and/or ``hardware`` (at least one: a worker with neither keeps sending v1, so one offer has one encoding);
v3 carries ``capabilities`` and may carry the v2 fields. ``__post_init__`` enforces them, so they hold both
for an announcement built in code and for one decoded from a peer.

Whether ``capabilities`` is on the wire is the one rule a Struct cannot say by itself: an empty list is the
field's default, which ``omit_defaults`` leaves out. :func:`encode_payload` therefore writes it for every
v3 payload and :func:`decode_payload` checks its presence against ``v`` on the decoded map, before the
conversion into the type.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

import msgspec
from msgspec import Meta

from cocoon_node.wire.cbor import CborError, canonical_dumps, canonical_loads
from cocoon_node.wire.schema import SchemaError
from cocoon_node.wire.typed import Message, Uint, from_builtins, to_builtins, utf8_max

ANNOUNCEMENT_VERSION: Final = 1
#: Version 2 adds two optional fields, ``tokenizer`` (issue 19) and ``hardware`` (issue 15), and carries at least
#: one of them; a worker that announces neither still sends version 1, byte for byte as before.
V2_FIELDS: Final = ("tokenizer", "hardware")
TOKENIZER_VERSION: Final = 2
HARDWARE_VERSION: Final = 2
#: Version 3 adds ``capabilities`` (optional OpenAI features the backend serves, issue 13); it may carry the
#: version-2 fields too. A worker whose backend serves no optional feature keeps sending v1/v2.
CAPABILITIES_VERSION: Final = 3
MAX_PAYLOAD_BYTES: Final = 4096

Version = Literal[1, 2, 3]
Source = Literal["detected", "declared", "unknown"]
Capability = Literal["json_object", "json_schema", "logprobs", "seed", "tools"]
BackendKind = Literal["torch", "exllamav2", "openai-upstream", "synthetic"]
TeeKind = Literal["tdx", "snp", "dev-INSECURE"]
Digest = Annotated[bytes, Meta(min_length=32, max_length=32)]


class Hardware(Message, frozen=True):
    """What serves the model (payload version 2): accelerator kind, count and memory, and the context length
    served. ``*_source`` says whether the worker detected a fact (the backend could tell) or only declared it
    (by flag; nothing checks it); attestation binds neither."""

    MAX_BYTES: ClassVar[int] = 512

    accelerator: Annotated[str, utf8_max(64)]  # e.g. "NVIDIA H200", "cpu"; "" = not known
    accelerator_count: Annotated[int, Meta(ge=0, le=64)]
    accelerator_memory_mib: Annotated[int, Meta(ge=0, le=16_777_216)]  # per accelerator
    hardware_source: Source
    context_length: Annotated[int, Meta(ge=0, le=16_777_216)]  # tokens served; 0 = not known
    context_source: Source

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


class AnnouncementPayload(Message, frozen=True, kw_only=True):
    """A worker's offer, as gossiped (the envelope's payload)."""

    MAX_BYTES: ClassVar[int] = MAX_PAYLOAD_BYTES

    v: Version
    peer_id: Annotated[bytes, Meta(max_length=64)]  # raw libp2p peer id bytes
    addrs: Annotated[tuple[str, ...], Meta(max_length=8)]  # dialable multiaddrs, with /p2p/
    model: Annotated[str, utf8_max(128)]
    model_hash: Digest  # SHA-256 over the model files (attestation binds it)
    backend: BackendKind
    synthetic: bool
    price_prompt: Uint  # nanotons per prompt token
    price_completion: Uint  # nanotons per completion token
    max_concurrent: Annotated[int, Meta(ge=1, le=4096)]
    load: Uint
    protocols: Annotated[tuple[str, ...], Meta(max_length=8)]  # stream protocol ids served
    tee_kind: TeeKind
    payout: Annotated[str, utf8_max(128)]  # worker's TON wallet (channel payee); "" = unpaid
    seqno: Uint
    issued_at: Uint  # unix seconds
    expires_at: Uint
    # SHA-256 naming the tokenizer this worker counts tokens with (inference.tokencount); b"": not announced.
    tokenizer: Digest = b""
    # Optional OpenAI features the backend serves (inference.features names); (): none, or not announced (v1/v2).
    capabilities: Annotated[tuple[Capability, ...], Meta(max_length=8)] = ()
    hardware: Hardware | msgspec.UnsetType = msgspec.UNSET  # versions 2 and 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.capabilities and self.v < CAPABILITIES_VERSION:
            raise ValueError(f"version {self.v} announcements must not carry capabilities")
        present = [name for name in V2_FIELDS if getattr(self, name)]  # b"" and UNSET: not carried
        if self.v < 2 and present:
            raise ValueError(f"version {self.v} announcements must not carry {present[0]}")
        if self.v == 2 and not present:
            raise ValueError(f"version {self.v} announcements carry {' or '.join(V2_FIELDS)}")


P = TypeVar("P", bound=AnnouncementPayload)
_LISTS = ("addrs", "protocols", "capabilities")


def payload_fields(payload: AnnouncementPayload) -> dict[str, Any]:
    """The payload as the map that goes on the wire: optional fields left out at their default, except
    ``capabilities``, which every v3 payload carries (even empty)."""
    out = to_builtins(payload)
    for name in _LISTS:
        if name in out:
            out[name] = list(out[name])  # msgspec keeps tuples; the map is plain CBOR/JSON data
    if payload.v >= CAPABILITIES_VERSION:
        out.setdefault("capabilities", [])
    return out


def payload_from_fields(fields: Any, typ: type[P]) -> P:
    """A decoded map as ``typ``, validated (field table and version rules); raises :class:`SchemaError`."""
    if isinstance(fields, dict):
        v = fields.get("v")
        if isinstance(v, int) and ("capabilities" in fields) != (v >= CAPABILITIES_VERSION):
            raise SchemaError("capabilities", f"version {v} announcements must "
                              f"{'not ' if v < CAPABILITIES_VERSION else ''}carry capabilities")
    return from_builtins(fields, typ)


def encode_payload(payload: AnnouncementPayload) -> bytes:
    """Validate ``payload`` and return its canonical CBOR (the bytes a worker signs)."""
    fields = payload_fields(payload)
    payload_from_fields(fields, type(payload))
    data = canonical_dumps(fields)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise CborError(f"announcement of {len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    return data


def decode_payload(data: bytes, typ: type[P]) -> P:
    """Canonical CBOR -> ``typ``: :class:`CborError` for the bytes, :class:`SchemaError` for the content."""
    return payload_from_fields(canonical_loads(data, max_bytes=MAX_PAYLOAD_BYTES), typ)


PROTOCOL = "announce"
MESSAGES: dict[str, type[Message]] = {"announcement": AnnouncementPayload, "hardware": Hardware}
