"""Hostile bytes on the wire produce clear errors, never crashes or unbounded buffering."""

from __future__ import annotations

import struct
from typing import ClassVar

import cbor2
import msgpack
import pytest
import trio
import trio.testing

from cocoon_node.wire import (
    CborError,
    FrameCodec,
    FrameError,
    FrameStream,
    Message,
    SchemaError,
    canonical_dumps,
    canonical_loads,
    decode_frame,
    validate,
)
from cocoon_node.wire.messages import inference


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
        decode_frame("dialback", b"\xc1")
    with pytest.raises(FrameError, match="'t'"):
        decode_frame("inference", msgpack.packb([1, 2]))
    with pytest.raises(FrameError, match=r"no message|frame"):
        decode_frame("inference", msgpack.packb({"t": "nonsense", "id": "x"}))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\xc1", "malformed"),
        (msgpack.packb([1, 2]), "invalid frame"),
        (msgpack.packb({"t": "nonsense", "id": "x"}), "Invalid value 'nonsense'"),
        (msgpack.packb({"t": "accept", "id": "x", "prompt_tokens": 1}), "credit_window"),
        (msgpack.packb({"t": "request", "v": 2, "id": "x", "chat": {}, "price_prompt": 1, "price_completion": 1}),
         "v: Invalid enum value 2"),
        (msgpack.packb({"t": "request", "v": 1, "id": "x", "chat": [], "price_prompt": 1, "price_completion": 1}),
         "chat: Expected `object`"),
        (msgpack.packb({"t": "request", "v": 1, "id": "x", "chat": {}, "price_prompt": 1, "price_completion": 1,
                        "payment": None}), "payment"),  # optional is not nullable
        (msgpack.packb({"t": "request", "v": 1, "id": "x", "chat": {}, "price_prompt": 1, "price_completion": 1,
                        "payment": {"channel": "c", "channel_id": b"\x00" * 31}}), "payment.channel_id"),
        (msgpack.packb({"t": "voucher", "id": "x", "voucher": "AAEC"}), "Expected `bytes`"),
        (msgpack.packb({"t": "delta", "id": "é" * 33, "text": "", "tokens": 0}), "UTF-8"),  # 66 bytes > 64
        (msgpack.packb({"t": "cancel", "id": "x"}) + b"\x00", "malformed"),  # trailing bytes
    ],
    ids=["not-msgpack", "not-a-map", "unknown-type", "missing-field", "minor-version", "chat-not-a-map",
         "nil-payment", "short-channel-id", "text-for-bytes", "id-over-64-bytes", "trailing-bytes"],
)
def test_malformed_inference_frames_are_frame_errors(body: bytes, words: str) -> None:
    with pytest.raises(FrameError, match=r"malformed|invalid") as ei:
        inference.CODEC.decode(body)
    assert words in str(ei.value)


class _Note(Message, frozen=True, tag_field="t", tag="note"):
    MAX_BYTES: ClassVar[int] = 32
    text: str


def test_a_frame_over_its_message_limit_is_refused() -> None:
    """The frame limit bounds buffering; each message's own ``max_bytes`` bounds that message further."""
    codec: FrameCodec[_Note] = FrameCodec(_Note, max_frame=1024)
    assert codec.decode(msgpack.packb({"t": "note", "text": "x" * 16})) == _Note(text="x" * 16)
    with pytest.raises(FrameError, match="exceeds its 32-byte limit"):
        codec.decode(msgpack.packb({"t": "note", "text": "x" * 40}))
    with pytest.raises(FrameError, match="exceeds its 32-byte limit"):
        codec.encode(_Note(text="x" * 40))
    # the real limits hold the largest valid frames (a lone cancel with a 64-byte id is 79 of its 128 bytes)
    assert len(inference.CODEC.encode(inference.CancelFrame(id="x" * 64))) - 4 <= inference.CancelFrame.MAX_BYTES


def test_typed_protocols_refuse_the_dict_path() -> None:
    with pytest.raises(ValueError, match="typed"):
        FrameStream(Adapter(trio.testing.memory_stream_pair()[0]), "inference")


async def test_oversized_frame_refused_before_buffering() -> None:
    left, right = trio.testing.memory_stream_pair()
    reader = FrameStream(Adapter(right), FrameCodec(inference.InferenceFrame, max_frame=1024))
    await left.send_all(struct.pack(">I", 10_000_000))
    with trio.fail_after(5), pytest.raises(FrameError, match="limit"):
        await reader.receive()


async def test_truncated_frame_is_an_error_and_clean_eof_is_none() -> None:
    left, right = trio.testing.memory_stream_pair()
    reader = FrameStream(Adapter(right), inference.CODEC)
    await left.send_all(struct.pack(">I", 50) + b"\x81")
    await left.aclose()
    with trio.fail_after(5), pytest.raises(FrameError, match="ended inside a frame"):
        await reader.receive()
    l2, r2 = trio.testing.memory_stream_pair()
    await l2.aclose()
    with trio.fail_after(5):
        assert await FrameStream(Adapter(r2), inference.CODEC).receive() is None
