"""Golden vectors: decode each to its value and re-encode to the identical bytes; generation is reproducible."""

from __future__ import annotations

import json
import struct
import types

import cbor2
import msgpack
import pytest

from cocoon_node.mesh import Announcement, decode_announcement
from cocoon_node.wire import (
    FrameError,
    canonical_dumps,
    canonical_loads,
    decode_frame,
    encode_frame,
    open_envelope,
    to_builtins,
)
from cocoon_node.wire.messages import attest, channel, dialback, inference

from .make_vectors import VECTOR_DIR, build, from_json_value


def load(rel: str) -> list[dict]:
    return json.loads((VECTOR_DIR / rel).read_text(encoding="utf-8"))


def test_generation_is_reproducible() -> None:
    for rel, vectors in build().items():
        assert load(rel) == vectors, f"{rel} differs from a fresh build: regenerate with make_vectors"


def test_announcement_payload_round_trip() -> None:
    for vec in load("announce/announcement.json"):
        raw = bytes.fromhex(vec["hex"])
        value = from_json_value(vec["value"])
        decoded = canonical_loads(raw, max_bytes=4096)
        assert decoded == value
        assert canonical_dumps(Announcement.from_wire(decoded).to_wire()) == raw
        typed = Announcement.from_payload(raw)  # bytes -> the msgspec type, validated -> the same bytes
        assert typed.v == value["v"] and typed.to_payload() == raw


def test_envelope_round_trip_and_verifies() -> None:
    for vec in load("envelope/envelope.json"):
        raw = bytes.fromhex(vec["hex"])
        assert cbor2.loads(raw) == from_json_value(vec["value"])
        assert canonical_dumps(from_json_value(vec["value"])) == raw
        env = open_envelope(raw, expected_domain="cocoon/announce/v1")
        ann, signer = decode_announcement(raw)
        assert signer == env.peer_id and ann.peer_id == signer.to_bytes()


FRAME_VECTORS = [(inference, v) for v in load("inference/frames.json")] + [
    (channel, v) for v in load("channel/frames.json")] + [(dialback, v) for v in load("dialback/frames.json")] + [
    (attest, v) for v in load("attest/frames.json")]


@pytest.mark.parametrize(("module", "vec"), FRAME_VECTORS,
                         ids=lambda x: x["name"] if isinstance(x, dict) else x.PROTOCOL)
def test_stream_frames_round_trip(module: types.ModuleType, vec: dict) -> None:
    """Each golden frame decodes into its declared type with the vector's values and re-encodes to the
    identical bytes (field order, omitted defaults, float64 kept)."""
    raw = bytes.fromhex(vec["hex"])
    value = from_json_value(vec["value"])
    length = int.from_bytes(raw[:4], "big")
    assert length == len(raw) - 4
    frame = module.CODEC.decode(raw[4:])
    assert type(frame) is module.MESSAGES[value["t"]]
    assert list(to_builtins(frame).items()) == list(value.items())  # same fields, same order
    assert module.CODEC.encode(frame) == raw
    assert len(raw) - 4 <= frame.MAX_BYTES
    # the schema's dict path (still used for the vectors' generation) agrees
    assert decode_frame(module.PROTOCOL, raw[4:]) == value
    assert encode_frame(module.PROTOCOL, value) == raw


def test_final_frame_floats_from_a_peer() -> None:
    """A peer may write a float field as an integer (the TOML's float accepts one): it decodes to a float,
    and what we write is float64 as in the vectors."""
    body = msgpack.packb({"t": "final", "id": "r1", "finish_reason": "stop", "prompt_tokens": 31,
                          "completion_tokens": 5, "total_tokens": 36, "ttft_ms": 12, "generation_ms": 200,
                          "tokens_per_second": 0})
    frame = inference.CODEC.decode(body)
    assert isinstance(frame, inference.FinalFrame)
    assert (frame.ttft_ms, frame.generation_ms, frame.tokens_per_second) == (12.0, 200.0, 0.0)
    assert all(isinstance(x, float) for x in (frame.ttft_ms, frame.generation_ms, frame.tokens_per_second))
    again = msgpack.unpackb(inference.CODEC.encode(frame)[4:])
    assert again["ttft_ms"] == 12.0 and isinstance(again["ttft_ms"], float)
    assert b"\xcb" + struct.pack(">d", 200.0) in inference.CODEC.encode(frame)  # float64, not float32 or int
    with pytest.raises(FrameError, match="ttft_ms"):
        inference.CODEC.decode(msgpack.packb({**msgpack.unpackb(body), "ttft_ms": -1}))
