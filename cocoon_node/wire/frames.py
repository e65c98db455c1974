"""Length-prefixed msgpack frames for direct streams.

Each frame is a 4-byte big-endian length followed by a msgpack map whose ``t`` field names the message
type of the protocol's field table. The length is checked against the limit *before* any payload byte is
buffered, so a peer cannot make us allocate more than one maximum frame per stream.

A :class:`FrameStream` carries the frames of one protocol through that protocol's codec: a typed
:class:`~cocoon_node.wire.typed.FrameCodec` (every stream protocol: frames are ``Message`` types), or a
protocol's name, which gives dicts checked by ``wire.schema`` (only the golden-vector generator does that).
"""

from __future__ import annotations

import struct
from typing import Any, Generic, Protocol, TypeVar, overload

import msgpack
from libp2p.network.stream.exceptions import StreamError
from libp2p.stream_muxer.exceptions import MuxedStreamError

from cocoon_node.wire.schema import SchemaError, validate

_LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 20
# py-libp2p signals the end of a stream (or a reset/closed one) by raising where trio returns b"".
_END_OF_STREAM = (EOFError, StreamError, MuxedStreamError)


class FrameError(ValueError):
    """A frame is oversized, truncated, not msgpack, or does not match its schema."""


class ByteStream(Protocol):
    """What a frame stream needs from a transport stream (libp2p INetStream fits)."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


def encode_frame(protocol: str, frame: dict[str, Any], *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Validate ``frame`` against ``protocol`` and return its length-prefixed bytes."""
    try:
        validate(protocol, str(frame.get("t")), frame)
    except SchemaError as exc:
        raise FrameError(f"refusing to send invalid {frame.get('t')!r} frame: {exc}") from exc
    body = msgpack.packb(frame, use_bin_type=True)
    if len(body) > max_frame:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {max_frame}-byte limit")
    return _LENGTH.pack(len(body)) + body


def decode_frame(protocol: str, body: bytes) -> dict[str, Any]:
    """Decode one frame body (without its length prefix) and validate it."""
    try:
        frame = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise FrameError(f"malformed msgpack frame: {exc}") from exc
    if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
        raise FrameError("frame is not a map with a string 't' type field")
    try:
        return validate(protocol, frame["t"], frame)
    except SchemaError as exc:
        raise FrameError(f"invalid {frame['t']!r} frame: {exc}") from exc


F = TypeVar("F")


class Codec(Protocol[F]):
    """What a frame stream needs from a protocol's codec (:class:`~cocoon_node.wire.typed.FrameCodec` fits)."""

    max_frame: int

    def decode(self, body: bytes) -> F: ...

    def encode(self, frame: F) -> bytes: ...


class SchemaCodec:
    """Dict frames of a protocol not declared as types, checked against its TOML by ``wire.schema``."""

    def __init__(self, protocol: str, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        from cocoon_node.wire.messages import TYPED_FRAME_PROTOCOLS

        if protocol in TYPED_FRAME_PROTOCOLS:
            raise ValueError(f"{protocol!r} frames are typed: use cocoon_node.wire.messages.{protocol}.CODEC")
        self.protocol = protocol
        self.max_frame = max_frame

    def decode(self, body: bytes) -> dict[str, Any]:
        return decode_frame(self.protocol, body)

    def encode(self, frame: dict[str, Any]) -> bytes:
        return encode_frame(self.protocol, frame, max_frame=self.max_frame)


class FrameStream(Generic[F]):
    """Reads and writes validated frames over one byte stream.

    ``codec`` is the protocol's codec; a protocol name instead means dict frames (:class:`SchemaCodec`).
    """

    @overload
    def __init__(self: FrameStream[dict[str, Any]], stream: ByteStream, codec: str, *,
                 max_frame: int = DEFAULT_MAX_FRAME) -> None: ...

    @overload
    def __init__(self, stream: ByteStream, codec: Codec[F]) -> None: ...

    def __init__(self, stream: ByteStream, codec: Codec[F] | str, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._stream = stream
        self._codec: Codec[Any] = SchemaCodec(codec, max_frame=max_frame) if isinstance(codec, str) else codec
        self._max_frame = self._codec.max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes read from the stream but not yet returned as a frame (a stream handed on must have none)."""
        return len(self._buffer)

    async def send(self, frame: F) -> None:
        await self._stream.write(self._codec.encode(frame))

    async def receive(self) -> F | None:
        """Next frame, or ``None`` on a clean end of stream between frames."""
        header = await self._read_exactly(_LENGTH.size, allow_eof=True)
        if header is None:
            return None
        (length,) = _LENGTH.unpack(header)
        if length > self._max_frame:
            raise FrameError(f"peer announced a frame of {length} bytes; the limit is {self._max_frame}")
        body = await self._read_exactly(length, allow_eof=False)
        assert body is not None
        frame: F = self._codec.decode(body)
        return frame

    async def _read_exactly(self, n: int, *, allow_eof: bool) -> bytes | None:
        while len(self._buffer) < n:
            try:
                chunk = await self._stream.read(max(n - len(self._buffer), 4096))
            except _END_OF_STREAM:
                chunk = b""
            if not chunk:
                if allow_eof and not self._buffer:
                    return None
                raise FrameError(f"stream ended inside a frame ({len(self._buffer)} of {n} bytes)")
            self._buffer.extend(chunk)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out
