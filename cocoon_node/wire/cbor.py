"""Canonical CBOR (RFC 8949 §4.2.1 core deterministic encoding) for signed records.

Signatures cover bytes, so a record must have exactly one encoding: decoding re-encodes and refuses input
that is not already canonical, which closes the door on malleable duplicates of a signed record.
"""

from __future__ import annotations

from typing import Any

import cbor2


class CborError(ValueError):
    """The bytes are not a canonical CBOR item of an accepted shape."""


def canonical_dumps(value: Any) -> bytes:
    """Encode ``value`` deterministically (sorted map keys, shortest integer and length forms)."""
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise CborError(f"cannot encode as CBOR: {exc}") from exc


def canonical_loads(data: bytes, *, max_bytes: int) -> Any:
    """Decode ``data``, refusing oversized, trailing-garbage and non-canonical encodings."""
    if len(data) > max_bytes:
        raise CborError(f"record of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise CborError(f"malformed CBOR: {exc}") from exc
    if canonical_dumps(value) != data:
        raise CborError("CBOR is not in canonical form (or has trailing bytes)")
    return value
