"""The typed-message machinery: validation while decoding, errors in the existing contracts, exact bytes."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

import cbor2
import msgpack
import msgspec
import pytest
from msgspec import Meta

from cocoon_node.wire import (
    CborError,
    FrameCodec,
    FrameError,
    Message,
    SchemaError,
    Uint,
    canonical_dumps,
    check,
    decode_cbor,
    encode_cbor,
    from_builtins,
    utf8_max,
)
from cocoon_node.wire.messages.attestation import AttestationClaims, AttestationReport

from .make_vectors import VECTOR_DIR, from_json_value


class Item(Message):
    MAX_BYTES: ClassVar[int] = 256
    name: Annotated[str, utf8_max(8)]
    count: Uint


class Record(Message, kw_only=True):
    MAX_BYTES: ClassVar[int] = 1024
    digest: Annotated[bytes, Meta(min_length=4, max_length=4)]
    label: Annotated[str, utf8_max(16)]
    kind: Literal["a", "b"]
    items: Annotated[list[Item], Meta(max_length=4)]
    note: Annotated[str, utf8_max(16)] = ""


GOOD: dict[str, Any] = {"digest": b"\x00\x01\x02\x03", "label": "x", "kind": "a", "items": [{"name": "n", "count": 1}]}


def schema_failure(value: Any, typ: type[Message] = Record) -> SchemaError:
    with pytest.raises(SchemaError) as ei:
        from_builtins(value, typ)
    return ei.value


def test_round_trip_keeps_canonical_bytes_and_omits_defaults() -> None:
    rec = from_builtins(GOOD, Record)
    assert rec.items[0] == Item(name="n", count=1) and rec.note == ""
    data = encode_cbor(rec)
    assert data == canonical_dumps(GOOD)  # "note" at its default is left out
    assert decode_cbor(data, Record) == rec
    with_note = encode_cbor(msgspec.structs.replace(rec, note="hi"))
    assert cbor2.loads(with_note)["note"] == "hi"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"label": 5}, "label", "Expected `str`"),
        ({"label": b"x"}, "label", "Expected `str`"),
        ({"digest": "AAECAw=="}, "digest", "Expected `bytes`"),  # base64 text is not bytes
        ({"digest": b"\x00" * 5}, "digest", "length"),
        ({"kind": "c"}, "kind", "Invalid enum value"),
        ({"items": [{"name": "n", "count": True}]}, "items[0].count", "bool"),
        ({"items": [{"name": "n", "count": -1}]}, "items[0].count", ">= 0"),
        ({"items": [{"name": "n", "count": 2**64}]}, "items[0].count", "2^64-1"),
        ({"items": [{"name": "n", "count": 1.0}]}, "items[0].count", "float"),
        ({"items": [{"name": "n", "count": cbor2.CBORTag(1, 5)}]}, "items[0].count", "CBORTag"),
        ({"items": [{"name": "n"}]}, "items[0].count", "missing required field"),
        ({"items": [{"name": "n", "count": 1, "x": 0}]}, "items[0].x", "unknown field"),
        ({"items": [{"name": "n", "count": 1}] * 5}, "items", "length"),
        ({"sneaky": 1}, "sneaky", "unknown field"),
    ],
)
def test_bad_content_names_the_field(change: dict[str, Any], field: str, words: str) -> None:
    err = schema_failure({**GOOD, **change})
    assert err.field == field, str(err)
    assert words in str(err)


def test_missing_field_and_wrong_shapes() -> None:
    err = schema_failure({k: v for k, v in GOOD.items() if k != "label"})
    assert err.field == "label" and "missing" in str(err)
    assert schema_failure([1, 2]).field == ""
    assert schema_failure({**GOOD, 7: 1}).field == ""  # a non-text key


def test_uint_range_edges() -> None:
    assert from_builtins({"name": "n", "count": 2**64 - 1}, Item).count == 2**64 - 1
    assert from_builtins({"name": "n", "count": 0}, Item).count == 0
    # 2^64 arrives from CBOR as a bignum (tag 2) that cbor2 turns into an int; the type still refuses it
    raw = canonical_dumps({"name": "n", "count": 2**64})
    with pytest.raises(SchemaError) as ei:
        decode_cbor(raw, Item)
    assert ei.value.field == "count"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("abcdefgh", True),  # 8 ASCII bytes: at the limit
        ("abcdefghi", False),
        ("éééé", True),  # 4 characters, 8 UTF-8 bytes: at the limit
        ("éééé" + "a", False),  # 5 characters, 9 bytes: only the byte count catches it
        ("😀😀", True),  # 2 characters, 8 bytes
        ("😀😀a", False),  # 3 characters, 9 bytes
    ],
)
def test_str_max_counts_utf8_bytes(text: str, ok: bool) -> None:
    value = {"name": text, "count": 1}
    if ok:
        assert from_builtins(value, Item).name == text
        assert decode_cbor(canonical_dumps(value), Item).name == text
    else:
        err = schema_failure(value, Item)
        assert err.field == "name", str(err)
        assert "UTF-8" in str(err) or "length" in str(err)


def test_multibyte_string_at_the_toml_limit_in_a_real_record() -> None:
    """model_name is max 256 UTF-8 bytes in attestation.toml: 128 two-byte characters pass, one more byte fails."""
    claims = {
        "version": 2, "peer_id": b"\x00" * 38, "public_key": b"\x08" * 36, "model_name": "ß" * 128,
        "model_hash": bytes(32), "node_version": "0", "issued_at": 1, "expires_at": 2, "tee_kind": "tdx",
        "backend": "", "upstream": "",
    }
    assert len(claims["model_name"].encode()) == 256
    assert from_builtins(claims, AttestationClaims).model_name == "ß" * 128
    err = schema_failure({**claims, "model_name": "ß" * 128 + "x"}, AttestationClaims)
    assert err.field == "model_name"
    err = schema_failure({**claims, "model_name": "ß" * 128, "evidence": b""}, AttestationClaims)
    assert err.field == "evidence" and "unknown" in str(err)
    assert from_builtins({**claims, "evidence": b""}, AttestationReport).evidence == b""


def test_bytes_errors_are_cbor_errors() -> None:
    raw = canonical_dumps(GOOD)
    with pytest.raises(CborError, match="canonical"):
        decode_cbor(cbor2.dumps(dict(reversed(list(GOOD.items())))), Record)
    with pytest.raises(CborError, match=r"canonical|trailing"):
        decode_cbor(raw + b"\x00", Record)
    with pytest.raises(CborError, match="limit"):
        decode_cbor(raw, Record, max_bytes=len(raw) - 1)
    with pytest.raises(CborError, match="limit"):
        decode_cbor(bytes(Record.MAX_BYTES + 1), Record)
    with pytest.raises(CborError, match="malformed"):
        decode_cbor(b"\xff\xff", Record)


def test_encode_validates_what_code_built() -> None:
    bad = Record(digest=b"\x00", label="x", kind="a", items=[])  # the constructor checks no lengths
    with pytest.raises(SchemaError) as ei:
        encode_cbor(bad)
    assert ei.value.field == "digest"
    with pytest.raises(SchemaError):
        check(bad)
    with pytest.raises(ValueError, match="UTF-8"):  # byte limits are checked even by the constructor
        Item(name="éééé" + "a", count=1)
    with pytest.raises(CborError, match="limit"):
        encode_cbor(_Tiny(blob=b"x" * 20))
    good = from_builtins(GOOD, Record)
    assert check(good) is good


class _Tiny(Message):
    MAX_BYTES: ClassVar[int] = 16
    blob: bytes


# --- msgpack frames: a tagged union, here with sketches of three inference frames ---


class _Frame(Message, tag_field="t"):
    pass


class _Delta(_Frame, tag="delta"):
    id: Annotated[str, utf8_max(64)]
    text: Annotated[str, utf8_max(60000)]
    tokens: Uint


class _Accept(_Frame, tag="accept", kw_only=True):
    id: Annotated[str, utf8_max(64)]
    prompt_tokens: Uint
    credit_window: Uint
    keep_open: bool = False


class _Cancel(_Frame, tag="cancel"):
    id: Annotated[str, utf8_max(64)]


CODEC: FrameCodec[_Delta | _Accept | _Cancel] = FrameCodec(_Delta | _Accept | _Cancel, max_frame=4096)


def _inference_vectors() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in json.loads((VECTOR_DIR / "inference/frames.json").read_text(encoding="utf-8"))}


@pytest.mark.parametrize("name", ["delta", "accept", "accept-keep-open", "cancel"])
def test_frames_decode_and_reencode_the_golden_bytes(name: str) -> None:
    vec = _inference_vectors()[name]
    raw = bytes.fromhex(vec["hex"])
    frame = CODEC.decode(raw[4:])
    assert type(frame).__name__.lower().lstrip("_") == vec["value"]["t"]
    assert msgspec.to_builtins(frame) == from_json_value(vec["value"])
    assert CODEC.encode(frame) == raw


@pytest.mark.parametrize(
    ("frame", "field", "words"),
    [
        ({"t": "nonsense", "id": "x"}, "t", "Invalid value 'nonsense'"),
        ({"id": "x"}, "t", "missing required field"),
        ({"t": "delta", "id": "x", "text": 5, "tokens": 1}, "text", "Expected `str`"),
        ({"t": "delta", "id": "x", "text": "a", "tokens": True}, "tokens", "got `bool`"),
        ({"t": "delta", "id": "x", "text": "a", "tokens": -1}, "tokens", ">= 0"),
        ({"t": "delta", "id": "x", "text": "a", "tokens": 1, "v": b""}, "v", "unknown field"),
        ({"t": "cancel", "id": "x", "sneaky": True}, "sneaky", "unknown field"),
        ({"t": "accept", "id": "x", "prompt_tokens": 1}, "credit_window", "missing required field"),
    ],
)
def test_bad_frames_are_frame_errors_naming_the_field(frame: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(FrameError, match="invalid frame") as ei:
        CODEC.decode(msgpack.packb(frame, use_bin_type=True))
    cause = ei.value.__cause__
    assert isinstance(cause, SchemaError)
    assert cause.field == field, str(cause)
    assert words in str(ei.value)


def test_frame_errors_for_bytes_and_sizes() -> None:
    with pytest.raises(FrameError, match="malformed"):
        CODEC.decode(b"\xc1")
    with pytest.raises(FrameError, match="malformed"):
        CODEC.decode(msgpack.packb({"t": "cancel", "id": "x"}) + b"\x00")
    with pytest.raises(FrameError, match="invalid"):
        CODEC.decode(msgpack.packb([1, 2]))
    with pytest.raises(FrameError, match="limit"):
        CODEC.encode(_Delta(id="x", text="y" * 5000, tokens=1))
    with pytest.raises(FrameError, match="refusing to send"):
        CODEC.encode(_Delta(id="x" * 65, text="y", tokens=1))
