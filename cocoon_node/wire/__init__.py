"""Wire formats shared by every concern: canonical CBOR records, signed envelopes, msgpack stream frames.

The field tables live as data in ``protocols/*.toml``; this package loads them and enforces them, so a
message that does not match its published schema never reaches the code that acts on it.
"""

from cocoon_node.wire.cbor import CborError, canonical_dumps, canonical_loads
from cocoon_node.wire.envelope import Envelope, EnvelopeError, open_envelope, seal_envelope
from cocoon_node.wire.frames import FrameError, FrameStream, decode_frame, encode_frame
from cocoon_node.wire.schema import SchemaError, load_protocol, protocols_dir, validate

__all__ = [
    "CborError",
    "Envelope",
    "EnvelopeError",
    "FrameError",
    "FrameStream",
    "SchemaError",
    "canonical_dumps",
    "canonical_loads",
    "decode_frame",
    "encode_frame",
    "load_protocol",
    "open_envelope",
    "protocols_dir",
    "seal_envelope",
    "validate",
]
