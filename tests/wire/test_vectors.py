"""Golden vectors: decode each to its value and re-encode to the identical bytes; generation is reproducible."""

from __future__ import annotations

import json

import cbor2
import pytest

from cocoon_node.mesh import Announcement, decode_announcement
from cocoon_node.wire import canonical_dumps, canonical_loads, decode_frame, encode_frame, open_envelope

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


def test_envelope_round_trip_and_verifies() -> None:
    for vec in load("envelope/envelope.json"):
        raw = bytes.fromhex(vec["hex"])
        assert cbor2.loads(raw) == from_json_value(vec["value"])
        assert canonical_dumps(from_json_value(vec["value"])) == raw
        env = open_envelope(raw, expected_domain="cocoon/announce/v1")
        ann, signer = decode_announcement(raw)
        assert signer == env.peer_id and ann.peer_id == signer.to_bytes()


@pytest.mark.parametrize(
    ("protocol", "vec"),
    [("inference", v) for v in load("inference/frames.json")] + [("channel", v) for v in load("channel/frames.json")]
    + [("dialback", v) for v in load("dialback/frames.json")],
    ids=lambda x: x["name"] if isinstance(x, dict) else x,
)
def test_stream_frames_round_trip(protocol: str, vec: dict) -> None:
    raw = bytes.fromhex(vec["hex"])
    value = from_json_value(vec["value"])
    length = int.from_bytes(raw[:4], "big")
    assert length == len(raw) - 4
    assert decode_frame(protocol, raw[4:]) == value
    assert encode_frame(protocol, value) == raw


@pytest.mark.parametrize("vec", load("dialback/frames.json"), ids=lambda v: v["name"])
def test_dialback_frames_decode_into_their_types_and_reencode_the_golden_bytes(vec: dict) -> None:
    from cocoon_node.wire import to_builtins
    from cocoon_node.wire.messages.dialback import CODEC, MESSAGES

    raw = bytes.fromhex(vec["hex"])
    frame = CODEC.decode(raw[4:])
    assert type(frame) is MESSAGES[vec["value"]["t"]]
    assert to_builtins(frame) == from_json_value(vec["value"])  # the tag ``t`` included
    assert CODEC.encode(frame) == raw
