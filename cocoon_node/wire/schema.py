"""Field tables from ``protocols/*.toml``: the loader every protocol reads its metadata through, and a dict
validator that holds a plain map to its table.

Every protocol is declared as types (:mod:`cocoon_node.wire.messages`: attestation, envelope, announce,
inference, channel, dialback, attest, receipt) and validated by them, so at run time only the loader
(:func:`load_protocol`: topics, domains, limits) and :class:`SchemaError` are used. The dict validator
(:func:`validate`) has no run-time user left; the golden-vector generator and the vector tests still read
the tables through it, as a second reading of the TOML beside the types.

The schema files are the single source of truth for our wire formats: documentation, golden-vector tests
and runtime validation all read the same table. A field entry looks like
``name = { type = "bytes", size = 32 }`` with these attributes:

- ``type``: ``uint``, ``int``, ``float``, ``bool``, ``str``, ``bytes``, ``list``, ``map`` or ``any``;
- ``required`` (default true), ``max`` (length of str/bytes/list/map), ``size`` (exact length),
  ``min_value`` / ``max_value`` (numbers), ``values`` (an enumeration);
- ``items`` for lists (a scalar type name or ``message:NAME``), ``message`` for a map that is itself a
  message of the same protocol.

Unknown fields are errors: a peer speaking a newer minor version must say so through the version field,
never by slipping in extra keys that an old node would silently ignore.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCALAR_TYPES = {"uint", "int", "float", "bool", "str", "bytes", "list", "map", "any"}


class SchemaError(ValueError):
    """A message does not match its field table; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class MessageSchema:
    """One message type of a protocol: its size limit and field table."""

    protocol: str
    name: str
    max_bytes: int
    fields: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Protocol:
    """A parsed ``protocols/NAME.toml``."""

    name: str
    meta: dict[str, Any]
    messages: dict[str, MessageSchema]

    def message(self, name: str) -> MessageSchema:
        try:
            return self.messages[name]
        except KeyError:
            raise SchemaError("", f"protocol {self.name!r} has no message {name!r}") from None


def protocols_dir() -> Path:
    """Where the schema files live: ``protocols/`` at the repository root (the package is installed editable)."""
    return Path(__file__).resolve().parents[2] / "protocols"


@functools.cache
def load_protocol(name: str) -> Protocol:
    """Load and sanity-check ``protocols/NAME.toml`` once per process."""
    path = protocols_dir() / f"{name}.toml"
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    meta = dict(raw.get("protocol", {}))
    messages: dict[str, MessageSchema] = {}
    for msg_name, spec in raw.get("messages", {}).items():
        fields = dict(spec.get("fields", {}))
        for field_name, field in fields.items():
            if field.get("type") not in _SCALAR_TYPES:
                raise SchemaError(f"{name}.{msg_name}.{field_name}", f"unknown type {field.get('type')!r}")
        messages[msg_name] = MessageSchema(name, msg_name, int(spec.get("max_bytes", 1 << 20)), fields)
    return Protocol(name, meta, messages)


def validate(protocol: str, message: str, value: Any) -> dict[str, Any]:
    """Check ``value`` against the field table of ``protocol.message``; returns it typed as a dict."""
    proto = load_protocol(protocol)
    return _check_message(proto, proto.message(message), value, "")


def _check_message(proto: Protocol, schema: MessageSchema, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected a map for {schema.name}, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise SchemaError(path, f"map keys must be strings, got {type(key).__name__}")
        if key not in schema.fields:
            raise SchemaError(_join(path, key), "unknown field")
    for field_name, spec in schema.fields.items():
        where = _join(path, field_name)
        if field_name not in value:
            if spec.get("required", True):
                raise SchemaError(where, "missing required field")
            continue
        _check_value(proto, spec, value[field_name], where)
    return value


def _check_value(proto: Protocol, spec: dict[str, Any], value: Any, where: str) -> None:
    kind = spec["type"]
    if value is None and spec.get("nullable", False):
        return
    _check_type(kind, value, where)
    if "values" in spec and value not in spec["values"]:
        raise SchemaError(where, f"must be one of {spec['values']!r}")
    if kind in {"uint", "int", "float"}:
        if "min_value" in spec and value < spec["min_value"]:
            raise SchemaError(where, f"must be >= {spec['min_value']}")
        if "max_value" in spec and value > spec["max_value"]:
            raise SchemaError(where, f"must be <= {spec['max_value']}")
    if kind in {"str", "bytes", "list", "map"}:
        length = len(value.encode()) if isinstance(value, str) else len(value)
        if "size" in spec and length != spec["size"]:
            raise SchemaError(where, f"must be exactly {spec['size']} long, got {length}")
        if "max" in spec and length > spec["max"]:
            raise SchemaError(where, f"longer than the limit of {spec['max']} (got {length})")
    if kind == "list" and "items" in spec:
        item_spec = _item_spec(spec["items"])
        for index, item in enumerate(value):
            item_where = f"{where}[{index}]"
            if "message" in item_spec:
                _check_message(proto, proto.message(item_spec["message"]), item, item_where)
            else:
                _check_value(proto, item_spec, item, item_where)
    if kind == "map" and "message" in spec:
        _check_message(proto, proto.message(spec["message"]), value, where)


def _item_spec(items: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(items, dict):
        return items
    if items.startswith("message:"):
        return {"type": "map", "message": items.removeprefix("message:")}
    return {"type": items}


def _check_type(kind: str, value: Any, where: str) -> None:
    ok = {
        "uint": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "bytes": isinstance(value, bytes),
        "list": isinstance(value, list),
        "map": isinstance(value, dict),
        "any": True,
    }[kind]
    if not ok:
        expected = "a non-negative integer" if kind == "uint" else kind
        raise SchemaError(where, f"expected {expected}, got {type(value).__name__}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
