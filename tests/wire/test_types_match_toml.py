"""The declared message types agree with ``protocols/*.toml`` field by field.

Table-driven: ``CONVERTED`` lists the modules of :mod:`cocoon_node.wire.messages` that declare a protocol's
messages (``PROTOCOL``, ``MESSAGES``). Converting another protocol means adding its module here; from then
on every message of its TOML must have a type, and every type a message. Compared per field: name, type,
required, nullable, max / size (UTF-8 bytes for str), values, min_value / max_value, list items and nested
messages; per message: ``max_bytes``, the tag field (``t``) and unknown fields being refused.
"""

from __future__ import annotations

import tomllib
import types
import typing
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import msgspec.inspect as mi
import pytest
from msgspec import Meta

from cocoon_node.wire import Message, Uint, protocols_dir, utf8_max
from cocoon_node.wire.messages import (
    TYPED_FRAME_PROTOCOLS,
    announce,
    attest,
    attestation,
    channel,
    dialback,
    envelope,
    inference,
    receipt,
)
from cocoon_node.wire.typed import MAX_UTF8_BYTES, UINT64, UINT64_MAX

CONVERTED: list[types.ModuleType] = [attestation, envelope, inference, channel, dialback, attest, receipt, announce]


def _toml(protocol: str) -> dict[str, Any]:
    with (protocols_dir() / f"{protocol}.toml").open("rb") as fh:
        return tomllib.load(fh)


def toml_shape(spec: dict[str, Any]) -> dict[str, Any]:
    """A TOML field entry in the normal form both sides are compared in."""
    kind = spec["type"]
    out: dict[str, Any] = {"type": kind, "required": spec.get("required", True),
                           "nullable": spec.get("nullable", False)}
    out.update(_toml_constraints(spec))
    return out


def _toml_constraints(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["type"]
    out: dict[str, Any] = {k: spec[k] for k in ("max", "size", "values", "min_value", "max_value") if k in spec}
    if "values" in out:
        out["values"] = sorted(out["values"], key=repr)  # an enumeration's order means nothing
    if "values" in out and kind == "str" and "max" in out:
        # a str enumeration within its max: the max adds nothing a Literal does not already say
        if all(len(v.encode("utf-8")) <= out["max"] for v in out["values"]):
            del out["max"]
    if kind == "uint":
        out["min_value"] = out.get("min_value", 0)
        out["max_value"] = out.get("max_value", UINT64_MAX)
        if "values" in out:
            del out["min_value"], out["max_value"]
    if kind == "list" and "items" in spec:
        items = spec["items"]
        if isinstance(items, dict):
            out["items"] = {"type": items["type"], **_toml_constraints(items)}
        elif items.startswith("message:"):
            out["items"] = {"type": "map", "message": items.removeprefix("message:")}
        else:
            out["items"] = {"type": items}
    if kind == "map" and "message" in spec:
        out["message"] = spec["message"]
    return out


def type_shape(field: mi.Field, names: dict[type, str]) -> dict[str, Any]:
    """A Struct field, from ``msgspec.inspect``, in the same normal form."""
    t = field.type
    nullable = False
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        nullable = len(members) < len(t.types)
        t = members[0] if len(members) == 1 else t
    return {"required": field.required, "nullable": nullable, **_type_constraints(t, names)}


def _type_constraints(t: mi.Type, names: dict[type, str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if isinstance(t, mi.Metadata):
        extra = dict(t.extra or {})
        t = t.type
    if isinstance(t, mi.IntType):
        if t.gt is not None or t.lt is not None or t.multiple_of is not None:
            return {"type": "int", "unsupported": repr(t)}
        if t.ge is not None and t.ge >= 0 and (extra.get(UINT64) or t.le is not None):
            return {"type": "uint", "min_value": t.ge, "max_value": UINT64_MAX if t.le is None else t.le}
        return {"type": "int", **_bounds(t)}
    if isinstance(t, mi.FloatType):
        return {"type": "float", **_bounds(t)}
    if isinstance(t, mi.BoolType):
        return {"type": "bool"}
    if isinstance(t, mi.StrType):
        out: dict[str, Any] = {"type": "str"}
        if t.min_length is not None or t.pattern is not None:
            out["unsupported"] = repr(t)
        if t.max_length is not None or MAX_UTF8_BYTES in extra:
            # TOML counts UTF-8 bytes: the limit must come from utf8_max (chars bound == bytes bound)
            out["max"] = extra.get(MAX_UTF8_BYTES, ("characters", t.max_length))
            if t.max_length != extra.get(MAX_UTF8_BYTES):
                out["max_length"] = t.max_length
        return out
    if isinstance(t, mi.LiteralType):
        values = sorted(t.values, key=repr)
        if all(isinstance(v, str) for v in values):
            kind = "str"
        elif all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            kind = "uint"
        else:
            kind = "int"
        return {"type": kind, "values": values}
    if isinstance(t, mi.BytesType):
        if t.min_length is not None and t.min_length == t.max_length:
            return {"type": "bytes", "size": t.max_length}
        out = {"type": "bytes"}
        if t.min_length is not None:
            out["unsupported"] = repr(t)
        if t.max_length is not None:
            out["max"] = t.max_length
        return out
    if isinstance(t, (mi.ListType, mi.VarTupleType)):  # a tuple[X, ...] travels as a list
        out = {"type": "list", "items": _type_constraints(t.item_type, names)}
        if t.max_length is not None:
            out["max"] = t.max_length
        if t.min_length is not None:
            out["unsupported"] = repr(t)
        if out["items"] == {"type": "any"}:
            del out["items"]
        return out
    if isinstance(t, mi.DictType):
        if not isinstance(t.key_type, mi.StrType) or not isinstance(t.value_type, mi.AnyType):
            return {"type": "map", "unsupported": repr(t)}
        return {"type": "map"}
    if isinstance(t, mi.StructType):
        return {"type": "map", "message": names.get(t.cls, f"<undeclared {t.cls.__name__}>")}
    if isinstance(t, mi.AnyType):
        return {"type": "any"}
    return {"type": "unsupported", "repr": repr(t)}


def _bounds(t: mi.IntType | mi.FloatType) -> dict[str, Any]:
    out = {}
    if t.ge is not None:
        out["min_value"] = t.ge
    if t.le is not None:
        out["max_value"] = t.le
    return out


def message_mismatches(spec: dict[str, Any], typ: type, names: dict[type, str]) -> list[str]:
    """Every way ``typ`` disagrees with the TOML message ``spec`` (empty when they agree)."""
    problems: list[str] = []
    info = mi.type_info(typ)
    assert isinstance(info, mi.StructType)
    if not issubclass(typ, Message):
        problems.append(f"{typ.__name__} is not a wire Message")
    if not info.forbid_unknown_fields:
        problems.append(f"{typ.__name__} accepts unknown fields")
    if getattr(typ, "MAX_BYTES", None) != spec.get("max_bytes", 1 << 20):
        problems.append(f"MAX_BYTES {getattr(typ, 'MAX_BYTES', None)} != max_bytes {spec.get('max_bytes')}")
    actual = {f.encode_name: type_shape(f, names) for f in info.fields}
    if info.tag_field is not None:
        actual[info.tag_field] = {"type": "str", "required": True, "nullable": False, "values": [info.tag]}
    expected = {name: toml_shape(f) for name, f in spec.get("fields", {}).items()}
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"field {name}: in the TOML, not in {typ.__name__}")
        elif name not in expected:
            problems.append(f"field {name}: in {typ.__name__}, not in the TOML")
        elif expected[name] != actual[name]:
            problems.append(f"field {name}: TOML {expected[name]} != type {actual[name]}")
    return problems


def protocol_mismatches(module: types.ModuleType, toml: dict[str, Any]) -> list[str]:
    messages: dict[str, type] = module.MESSAGES
    names = {typ: name for name, typ in messages.items()}
    declared = toml.get("messages", {})
    problems = [f"message {m}: in the TOML, no type declared" for m in sorted(set(declared) - set(messages))]
    problems += [f"message {m}: declared, not in the TOML" for m in sorted(set(messages) - set(declared))]
    for name in sorted(set(declared) & set(messages)):
        problems += [f"{name}: {p}" for p in message_mismatches(declared[name], messages[name], names)]
    return problems


@pytest.mark.parametrize("module", CONVERTED, ids=lambda m: m.PROTOCOL)
def test_types_match_toml(module: types.ModuleType) -> None:
    assert protocol_mismatches(module, _toml(module.PROTOCOL)) == []


FRAMED = [m for m in CONVERTED if hasattr(m, "CODEC")]


@pytest.mark.parametrize("module", FRAMED, ids=lambda m: m.PROTOCOL)
def test_frame_protocols_match_toml(module: types.ModuleType) -> None:
    """A stream protocol's id and frame limit are the TOML's, and its codec decodes exactly its messages."""
    meta = _toml(module.PROTOCOL)["protocol"]
    assert meta["encoding"] == "msgpack-frames"
    assert (module.PROTOCOL_ID, module.MAX_FRAME_BYTES) == (meta["id"], meta["max_frame_bytes"])
    assert module.CODEC.max_frame == meta["max_frame_bytes"]
    tagged = {typ for typ in module.MESSAGES.values() if mi.type_info(typ).tag is not None}  # type: ignore[attr-defined]
    assert set(typing.get_args(module.CODEC.frame_type)) == tagged
    assert {mi.type_info(t).tag for t in tagged} == {  # type: ignore[attr-defined]
        name for name, spec in _toml(module.PROTOCOL)["messages"].items() if "t" in spec["fields"]}


def test_typed_frame_protocols_have_codecs() -> None:
    """The protocols whose FrameStreams must use the typed codec (their code speaks types) are declared here."""
    assert {"inference", "channel"} <= TYPED_FRAME_PROTOCOLS <= {m.PROTOCOL for m in FRAMED}


# --- the comparison itself catches what it should (so a green run above means something) ---


class _Good(Message, tag_field="t", tag="thing", kw_only=True):
    MAX_BYTES: ClassVar[int] = 512
    n: Uint
    bounded: Annotated[int, Meta(ge=1, le=4096)]
    name: Annotated[str, utf8_max(16)]
    digest: Annotated[bytes, Meta(min_length=32, max_length=32)]
    kind: Literal["a", "b"]
    tags: Annotated[list[str], Meta(max_length=8)]
    flag: bool = False


_GOOD_TOML: dict[str, Any] = {
    "max_bytes": 512,
    "fields": {
        "t": {"type": "str", "values": ["thing"]},
        "n": {"type": "uint"},
        "bounded": {"type": "uint", "min_value": 1, "max_value": 4096},
        "name": {"type": "str", "max": 16},
        "digest": {"type": "bytes", "size": 32},
        "kind": {"type": "str", "max": 8, "values": ["a", "b"]},
        "tags": {"type": "list", "items": "str", "max": 8},
        "flag": {"type": "bool", "required": False},
    },
}


class _CharsNotBytes(Message):
    name: Annotated[str, Meta(max_length=16)]  # counts characters: wrong for our TOML


class _PlainInt(Message):
    n: int  # no lower bound: not a uint


class _Nullable(Message, kw_only=True):
    flag: bool | None = None  # accepts nil, which the TOML does not


def test_agreeing_type_passes() -> None:
    assert message_mismatches(_GOOD_TOML, _Good, {}) == []


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda f: f.pop("flag"), "flag: in _Good, not in the TOML"),
        (lambda f: f.update(extra={"type": "bool"}), "extra: in the TOML"),
        (lambda f: f["n"].update(type="int"), "field n"),
        (lambda f: f["name"].update(max=17), "field name"),
        (lambda f: f["digest"].update(size=31), "field digest"),
        (lambda f: f["kind"].update(values=["a"]), "field kind"),
        (lambda f: f["kind"].update(max=0), "field kind"),
        (lambda f: f["tags"].update(items="bytes"), "field tags"),
        (lambda f: f["flag"].update(required=True), "field flag"),
        (lambda f: f["bounded"].update(max_value=4095), "field bounded"),
        (lambda f: f["t"].update(values=["other"]), "field t"),
    ],
)
def test_disagreeing_toml_is_reported(change: Any, expect: str) -> None:
    spec = {"max_bytes": 512, "fields": {k: dict(v) for k, v in _GOOD_TOML["fields"].items()}}
    change(spec["fields"])
    problems = message_mismatches(spec, _Good, {})
    assert any(expect in p for p in problems), problems


@pytest.mark.parametrize(
    ("typ", "spec"),
    [
        (_CharsNotBytes, {"name": {"type": "str", "max": 16}}),
        (_PlainInt, {"n": {"type": "uint"}}),
        (_Nullable, {"flag": {"type": "bool", "required": False}}),
    ],
    ids=["str-max-in-characters", "int-for-uint", "nullable-optional"],
)
def test_wrong_types_are_reported(typ: type, spec: dict[str, Any]) -> None:
    assert message_mismatches({"fields": spec}, typ, {})


def test_a_toml_message_without_a_type_is_reported() -> None:
    toml = _toml("attestation")
    toml["messages"]["new_record"] = {"fields": {"x": {"type": "uint"}}}
    assert protocol_mismatches(attestation, toml) == ["message new_record: in the TOML, no type declared"]
    spec = toml["messages"]["attestation_claims"]
    assert message_mismatches({**spec, "max_bytes": 1}, attestation.AttestationClaims, {})


class _Inner(Message):
    x: Uint


class _Outer(Message, kw_only=True):
    inner: _Inner | msgspec.UnsetType = msgspec.UNSET  # optional, and refuses nil
    many: list[_Inner]


def test_nested_messages_are_named() -> None:
    spec = {"fields": {"inner": {"type": "map", "message": "inner", "required": False},
                       "many": {"type": "list", "items": "message:inner"}}}
    assert message_mismatches(spec, _Outer, {_Inner: "inner"}) == []
    assert message_mismatches(spec, _Outer, {})  # an undeclared nested type is not "inner"


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda m: m["announcement"]["fields"]["capabilities"]["items"]["values"].remove("tools"), "capabilities"),
        (lambda m: m["announcement"]["fields"]["capabilities"].update(max=9), "capabilities"),
        (lambda m: m["announcement"]["fields"]["addrs"].update(items="bytes"), "addrs"),
        (lambda m: m["announcement"]["fields"]["hardware"].update(required=True), "hardware"),
        (lambda m: m["announcement"]["fields"]["tokenizer"].update(size=31), "tokenizer"),
        (lambda m: m["announcement"]["fields"]["v"].update(values=[1, 2]), "field v"),
        (lambda m: m["announcement"]["fields"]["payout"].update(required=False), "payout"),
        (lambda m: m["hardware"]["fields"]["accelerator_count"].update(max_value=65), "accelerator_count"),
        (lambda m: m["hardware"].update(max_bytes=1024), "MAX_BYTES"),
    ],
)
def test_announcement_disagreements_are_reported(change: Any, expect: str) -> None:
    """The announcement's tuple fields (lists on the wire), optional nested hardware and version enumeration
    are compared too: each change to its TOML is reported."""
    toml = _toml("announce")
    assert protocol_mismatches(announce, toml) == []
    change(toml["messages"])
    problems = protocol_mismatches(announce, toml)
    assert any(expect in p for p in problems), problems
