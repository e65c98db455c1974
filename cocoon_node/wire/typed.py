"""Typed wire messages: one ``msgspec.Struct`` per message of ``protocols/*.toml``, validated while decoding.

A message type is a :class:`Message` subclass whose annotations carry the field table's constraints
(``Uint``, ``Annotated[bytes, Meta(max_length=...)]``, ``Literal[...]`` for ``values``, :func:`utf8_max`
for ``str`` limits, which our TOML counts in UTF-8 bytes). ``tests/wire/test_types_match_toml.py`` checks
every declared type against its TOML entry field by field, so the two cannot drift apart.

Two encodings, one set of types:

- canonical CBOR records (:func:`decode_cbor` / :func:`encode_cbor`): msgspec speaks no CBOR, so the bytes
  go through :mod:`cocoon_node.wire.cbor` (canonical, decode-re-encode check) and the decoded builtins are
  converted into the type with ``msgspec.convert(strict=True)``;
- msgpack stream frames (:class:`FrameCodec`): a tagged union on the ``t`` field, decoded and validated in
  one pass by ``msgspec.msgpack.Decoder``.

How to declare (see :mod:`cocoon_node.wire.messages` for examples):

- ``class Accept(Frame, frozen=True, kw_only=True, tag="accept")``: repeat ``frozen=True`` (msgspec inherits
  it, mypy wants it said) and ``kw_only=True`` where an optional field precedes a required one (msgspec does
  not inherit that one);
- TOML ``uint`` -> :data:`Uint`; a bounded one -> ``Annotated[int, Meta(ge=1, le=4096)]``; ``values`` ->
  ``Literal[...]``; bytes ``size`` -> ``Meta(min_length=n, max_length=n)``; str ``max`` -> :func:`utf8_max`;
- ``required = false`` -> a default (omitted when encoding, as ``omit_defaults`` says), or
  ``X | msgspec.UnsetType = msgspec.UNSET`` for a nested message: never ``X | None`` (that accepts nil);
- msgpack writes a Struct's fields in declaration order (``t`` first), so declare them in the order the
  golden vectors have them; canonical CBOR sorts keys, so there the order is free.

Errors keep the contracts callers already rely on: :class:`CborError` for bytes that are not a canonical
record, :class:`SchemaError` (with the offending field's path in ``field``) for a record that does not
match its type, :class:`FrameError` for a bad frame. The constructor checks only the UTF-8 and uint64
limits (in ``__post_init__``); :func:`check` validates a message built in code before it is sent.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec
from msgspec import Meta

from cocoon_node.wire.cbor import CborError, canonical_dumps, canonical_loads
from cocoon_node.wire.frames import _LENGTH, DEFAULT_MAX_FRAME, FrameError
from cocoon_node.wire.schema import SchemaError

UINT64_MAX = 2**64 - 1
# Keys of ``Meta(extra=...)`` that msgspec does not enforce itself; Message.__post_init__ does.
MAX_UTF8_BYTES = "max_utf8_bytes"
UINT64 = "uint64"

#: TOML ``uint``: 0 .. 2^64-1, never a bool (msgspec refuses bools for ints). msgspec cannot bound an int
#: above int64, so the upper bound is checked in ``__post_init__``.
Uint = Annotated[int, Meta(ge=0, extra={UINT64: True})]

#: Bytes that travel as they are: no base64 text accepted in their place.
_BUILTIN = (bytes,)


def utf8_max(limit: int) -> Meta:
    """Constraint for a TOML ``str`` with ``max = limit``: at most ``limit`` UTF-8 bytes.

    msgspec's ``max_length`` counts characters; it is kept as a cheap first bound (a string of more than
    ``limit`` characters has more than ``limit`` bytes) and the exact byte count is checked afterwards.
    """
    return Meta(max_length=limit, extra={MAX_UTF8_BYTES: limit})


def utf8_clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character: free text (an error's
    message) made to fit a :func:`utf8_max` field."""
    if len(text) <= limit and text.isascii():
        return text
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


class Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every wire message: immutable, no unknown fields, optional fields omitted at their default.

    ``MAX_BYTES`` is the message's ``max_bytes`` in its TOML; decoding refuses larger input.
    """

    MAX_BYTES: ClassVar[int] = 1 << 20

    def __post_init__(self) -> None:
        utf8, uints = _extra_limits(type(self))
        for name, limit in utf8:
            value = getattr(self, name)
            if isinstance(value, str) and not value.isascii():  # ASCII: max_length already counted bytes
                size = len(value.encode("utf-8"))
                if size > limit:
                    raise ValueError(f"field `{name}` is {size} UTF-8 bytes, longer than the limit of {limit}")
        for name in uints:
            value = getattr(self, name)
            if isinstance(value, int) and value > UINT64_MAX:
                raise ValueError(f"field `{name}` must be <= 2^64-1")


M = TypeVar("M", bound=Message)
_Limits = tuple[tuple[tuple[str, int], ...], tuple[str, ...]]
_EXTRA_LIMITS: dict[type, _Limits] = {}


def _extra_limits(cls: type) -> _Limits:
    """A class's (field, UTF-8 byte limit) pairs and uint64 fields, read from its annotations once."""
    found = _EXTRA_LIMITS.get(cls)
    if found is None:
        utf8: list[tuple[str, int]] = []
        uints: list[str] = []
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            for meta in _metas(hint):
                extra = meta.extra or {}
                if MAX_UTF8_BYTES in extra:
                    utf8.append((name, int(extra[MAX_UTF8_BYTES])))
                if extra.get(UINT64):
                    uints.append(name)
        found = _EXTRA_LIMITS[cls] = (tuple(utf8), tuple(uints))
    return found


def _metas(hint: Any) -> list[Meta]:
    """The ``Meta`` annotations on a field's type, looking through ``X | None``."""
    if typing.get_origin(hint) is Annotated:
        return [m for m in typing.get_args(hint)[1:] if isinstance(m, Meta)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(hint) for m in _metas(arg)]
    return []


_AT = re.compile(r" - at `(?:key` in `)?\$(?P<path>[^`]*)`$")
_FIELD = re.compile(r"field `(?P<name>[^`]+)`")


def schema_error(exc: msgspec.ValidationError) -> SchemaError:
    """A msgspec validation error as our :class:`SchemaError`, ``field`` being the path ("a.b", "a[0]")."""
    text = str(exc)
    path = ""
    at = _AT.search(text)
    if at:
        text = text[: at.start()]
        path = at.group("path").removeprefix(".")
    named = _FIELD.search(text)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return SchemaError(path, text)


def frame_tag(message: object) -> str:
    """The tag (``t``) of a tagged-union message, for messages in logs and errors."""
    config = getattr(type(message), "__struct_config__", None)
    tag = getattr(config, "tag", None)
    return tag if isinstance(tag, str) else type(message).__name__


def from_builtins(value: Any, typ: type[M]) -> M:
    """Convert decoded builtins (a dict from CBOR) into ``typ``, validating; raises :class:`SchemaError`."""
    try:
        return msgspec.convert(value, typ, strict=True, builtin_types=_BUILTIN)
    except msgspec.ValidationError as exc:
        raise schema_error(exc) from exc


def to_builtins(message: Message) -> dict[str, Any]:
    """The message as a plain dict (bytes kept as bytes, defaults of optional fields left out)."""
    out: dict[str, Any] = msgspec.to_builtins(message, builtin_types=_BUILTIN)
    return out


def check(message: M) -> M:
    """Validate a message built in code (constructors skip most constraints); raises :class:`SchemaError`."""
    from_builtins(to_builtins(message), type(message))
    return message


def decode_cbor(data: bytes, typ: type[M], *, max_bytes: int | None = None) -> M:
    """Decode a canonical CBOR record into ``typ``: :class:`CborError` for the bytes, :class:`SchemaError`
    for the content. ``max_bytes`` defaults to the type's ``MAX_BYTES``."""
    return from_builtins(canonical_loads(data, max_bytes=typ.MAX_BYTES if max_bytes is None else max_bytes), typ)


def encode_cbor(message: Message) -> bytes:
    """Validate ``message`` and return its canonical CBOR; a record over ``MAX_BYTES`` is a :class:`CborError`."""
    value = to_builtins(message)
    from_builtins(value, type(message))
    data = canonical_dumps(value)
    if len(data) > message.MAX_BYTES:
        raise CborError(f"{type(message).__name__} of {len(data)} bytes exceeds the {message.MAX_BYTES}-byte limit")
    return data


F = TypeVar("F")


class FrameCodec(Generic[F]):
    """Length-prefixed msgpack frames of one protocol, typed by a tagged union of :class:`Message` types.

    ``frame_type`` is e.g. ``Request | Accept | Delta``, each declared with ``tag="request"`` etc. on a base
    with ``tag_field="t"``; decoding picks the type from ``t`` and validates the frame in the same pass.
    """

    def __init__(self, frame_type: Any, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.frame_type = frame_type
        self._decoder: msgspec.msgpack.Decoder[F] = msgspec.msgpack.Decoder(frame_type)
        self._encoder = msgspec.msgpack.Encoder()

    def decode(self, body: bytes) -> F:
        """One frame body (without its length prefix); raises :class:`FrameError` with the field's path.

        A frame larger than its message's ``MAX_BYTES`` (``max_bytes`` in the TOML) is refused too."""
        if len(body) > self.max_frame:
            raise FrameError(f"frame of {len(body)} bytes exceeds the {self.max_frame}-byte limit")
        try:
            frame = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            err = schema_error(exc)
            raise FrameError(f"invalid frame: {err}") from err
        except msgspec.DecodeError as exc:
            raise FrameError(f"malformed msgpack frame: {exc}") from exc
        _check_size(frame, len(body))
        return frame

    def encode(self, frame: F) -> bytes:
        """Validate ``frame`` (by decoding what would be sent) and return its length-prefixed bytes."""
        body = self._encoder.encode(frame)
        if len(body) > self.max_frame:
            raise FrameError(f"frame of {len(body)} bytes exceeds the {self.max_frame}-byte limit")
        try:
            self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            err = schema_error(exc)
            raise FrameError(f"refusing to send invalid frame: {err}") from err
        _check_size(frame, len(body))
        return _LENGTH.pack(len(body)) + body


def _check_size(frame: object, size: int) -> None:
    limit: int = getattr(frame, "MAX_BYTES", size)
    if size > limit:
        raise FrameError(f"{type(frame).__name__} of {size} bytes exceeds its {limit}-byte limit")
