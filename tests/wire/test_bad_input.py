"""Hostile bytes on the wire produce clear errors, never crashes or unbounded buffering."""

from __future__ import annotations

import struct

import cbor2
import msgpack
import pytest
import trio
import trio.testing

from cocoon_node.wire import (
    CborError,
    FrameError,
    FrameStream,
    SchemaError,
    canonical_dumps,
    canonical_loads,
    decode_frame,
    validate,
)


class Adapter:
    """A trio stream presented with the read/write surface of a libp2p stream."""

    def __init__(self, s: trio.abc.Stream) -> None:
        self.s = s

    async def read(self, n: int | None = None) -> bytes:
        return await self.s.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self.s.send_all(data)


def test_non_canonical_cbor_rejected() -> None:
    non_canonical = cbor2.dumps({"b": 1, "a": 2})  # keys not sorted
    assert non_canonical != canonical_dumps({"b": 1, "a": 2})
    with pytest.raises(CborError, match="canonical"):
        canonical_loads(non_canonical, max_bytes=100)
    with pytest.raises(CborError, match=r"trailing|canonical"):
        canonical_loads(canonical_dumps({"a": 1}) + b"\x00", max_bytes=100)
    with pytest.raises(CborError, match="limit"):
        canonical_loads(b"\x00" * 200, max_bytes=100)
    with pytest.raises(CborError, match="malformed"):
        canonical_loads(b"\xff\xff", max_bytes=100)


def test_schema_names_the_field() -> None:
    with pytest.raises(SchemaError) as err:
        validate("inference", "delta", {"t": "delta", "id": "x", "text": 5, "tokens": 1})
    assert err.value.field == "text"
    with pytest.raises(SchemaError) as err:
        validate("inference", "delta", {"t": "delta", "id": "x", "text": "a", "tokens": -1})
    assert err.value.field == "tokens"
    with pytest.raises(SchemaError) as err:
        validate("inference", "cancel", {"t": "cancel", "id": "x", "sneaky": True})
    assert err.value.field == "sneaky" and "unknown" in str(err.value)
    with pytest.raises(SchemaError) as err:
        validate("inference", "accept", {"t": "accept", "id": "x", "prompt_tokens": 1})
    assert err.value.field == "credit_window" and "missing" in str(err.value)


def test_malformed_frames() -> None:
    with pytest.raises(FrameError, match="malformed"):
        decode_frame("inference", b"\xc1")
    with pytest.raises(FrameError, match="'t'"):
        decode_frame("inference", msgpack.packb([1, 2]))
    with pytest.raises(FrameError, match=r"no message|frame"):
        decode_frame("inference", msgpack.packb({"t": "nonsense", "id": "x"}))


async def test_oversized_frame_refused_before_buffering() -> None:
    left, right = trio.testing.memory_stream_pair()
    reader = FrameStream(Adapter(right), "inference", max_frame=1024)
    await left.send_all(struct.pack(">I", 10_000_000))
    with trio.fail_after(5), pytest.raises(FrameError, match="limit"):
        await reader.receive()


async def test_truncated_frame_is_an_error_and_clean_eof_is_none() -> None:
    left, right = trio.testing.memory_stream_pair()
    reader = FrameStream(Adapter(right), "inference")
    await left.send_all(struct.pack(">I", 50) + b"\x81")
    await left.aclose()
    with trio.fail_after(5), pytest.raises(FrameError, match="ended inside a frame"):
        await reader.receive()
    l2, r2 = trio.testing.memory_stream_pair()
    await l2.aclose()
    with trio.fail_after(5):
        assert await FrameStream(Adapter(r2), "inference").receive() is None
