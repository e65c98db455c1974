"""Wire formats shared by every concern: canonical CBOR records, signed envelopes, msgpack stream frames.

The field tables live as data in ``protocols/*.toml``; messages are declared as typed ``msgspec`` Structs
that a test holds to those tables field by field, and they are validated while decoding, so a message
that does not match its published schema never reaches the code that acts on it.

- :mod:`.cbor`: canonical CBOR bytes (one encoding per value, checked by re-encoding);
- :mod:`.typed`: the :class:`Message` base, CBOR records and msgpack frames into and out of types;
- :mod:`.messages`: the declared types, one module per protocol;
- :mod:`.envelope`: the two signed-envelope shapes (domain envelope, prefixed envelope);
- :mod:`.frames`: length-prefixed msgpack frames over a stream;
- :mod:`.schema`: the TOML loader (protocol metadata) and a dict validator, which only the tests' golden
  vectors still use (every protocol is declared as types).
"""

from cocoon_node.wire.cbor import CborError, canonical_dumps, canonical_loads
from cocoon_node.wire.envelope import (
    Envelope,
    EnvelopeError,
    Signer,
    decode_prefixed,
    open_envelope,
    prefixed_signature_ok,
    seal_envelope,
    seal_prefixed,
)
from cocoon_node.wire.frames import Codec, FrameError, FrameStream, SchemaCodec, decode_frame, encode_frame
from cocoon_node.wire.schema import SchemaError, load_protocol, protocols_dir, validate
from cocoon_node.wire.typed import (
    FrameCodec,
    Message,
    Uint,
    check,
    decode_cbor,
    encode_cbor,
    frame_tag,
    from_builtins,
    to_builtins,
    utf8_clip,
    utf8_max,
)

__all__ = [
    "CborError",
    "Codec",
    "Envelope",
    "EnvelopeError",
    "FrameCodec",
    "FrameError",
    "FrameStream",
    "Message",
    "SchemaCodec",
    "SchemaError",
    "Signer",
    "Uint",
    "canonical_dumps",
    "canonical_loads",
    "check",
    "decode_cbor",
    "decode_frame",
    "decode_prefixed",
    "encode_cbor",
    "encode_frame",
    "frame_tag",
    "from_builtins",
    "load_protocol",
    "open_envelope",
    "prefixed_signature_ok",
    "protocols_dir",
    "seal_envelope",
    "seal_prefixed",
    "to_builtins",
    "utf8_clip",
    "utf8_max",
    "validate",
]
