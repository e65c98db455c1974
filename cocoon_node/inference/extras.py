"""What a completion delta may carry besides text: tool-call pieces and token log-probabilities.

Backends put them on :class:`~cocoon_node.inference.backend.TokenDelta`; the stream protocol carries them in
the optional ``tool_calls`` and ``logprobs`` fields of its ``delta`` frame (``protocols/inference.toml``),
flattened (``index``/``id``/``name``/``arguments``; ``token``/``logprob``/``bytes``/``top``); the API turns
them back into OpenAI's shapes (``choices[0].delta.tool_calls``, ``message.tool_calls``,
``choices[0].logprobs.content``). Everything is clamped to the frame's field limits where it is made, so an
upstream's oddities (a 10 KB "token", ``-inf``) cannot make the worker write a frame the requester refuses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cocoon_node.wire.messages import inference as wire

MAX_TOOL_CALL_INDEX = 127
MAX_TOKEN_BYTES = 256  # a token's text (or bytes) in a logprobs entry; real tokens are far shorter
MAX_TOP = 20
MIN_LOGPROB = -9999.0  # OpenAI's stand-in for log(0)
#: How much text and extras one delta frame may gather when the writer coalesces queued deltas; well
#: under the frame's 65,536-byte limit even after one more worst-case item.
COALESCE_BYTES = 32_768


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call ``index``: the first piece names it (``id``, ``name``), later ones append to
    ``arguments`` (a JSON text, streamed as the model writes it)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_frame(self) -> wire.ToolCallPiece:
        return wire.ToolCallPiece(index=self.index, id=self.id or "", name=self.name or "",
                                  arguments=self.arguments)

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        fn: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            fn["name"] = self.name
        out["function"] = fn
        return out

    def text_bytes(self) -> int:
        """What the model wrote for this piece (the requester's token audit counts it like text)."""
        return len((self.name or "").encode()) + len(self.arguments.encode())


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: bytes | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log-probability and the ``top`` alternatives at its position."""

    token: str
    logprob: float
    bytes: bytes | None = None
    top: tuple[TopLogprob, ...] = ()

    def to_frame(self) -> wire.TokenLogprob:
        return wire.TokenLogprob(token=self.token, logprob=self.logprob, raw=self.bytes or b"",
                                 top=[wire.TopLogprob(token=t.token, logprob=t.logprob, raw=t.bytes or b"")
                                      for t in self.top])

    def to_openai(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "bytes": _byte_list(self.bytes, self.token),
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": _byte_list(t.bytes, t.token)}
                                 for t in self.top]}


def _byte_list(raw: bytes | None, token: str) -> list[int]:
    return list(raw if raw is not None else token.encode("utf-8", "replace"))


def clamp_logprob(value: float) -> float:
    """A finite log-probability in [MIN_LOGPROB, 0] (``-inf`` and NaN become MIN_LOGPROB)."""
    if not math.isfinite(value):
        return MIN_LOGPROB
    return min(0.0, max(MIN_LOGPROB, float(value)))


def clamp_token(text: str) -> str:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= MAX_TOKEN_BYTES:
        return text.encode("utf-8", "replace").decode("utf-8")
    return raw[:MAX_TOKEN_BYTES].decode("utf-8", "ignore")


def clamp_bytes(raw: bytes | None) -> bytes | None:
    return None if raw is None else raw[:MAX_TOKEN_BYTES]


def make_logprob(token: str, logprob: float, raw: bytes | None, top: Iterable[tuple[str, float, bytes | None]]
                 ) -> TokenLogprob:
    """A :class:`TokenLogprob` clamped to the frame's limits."""
    return TokenLogprob(clamp_token(token), clamp_logprob(logprob), clamp_bytes(raw),
                        tuple(TopLogprob(clamp_token(t), clamp_logprob(lp), clamp_bytes(b))
                              for t, lp, b in list(top)[:MAX_TOP]))


def merge_tool_calls(calls: Sequence[ToolCallDelta]) -> list[ToolCallDelta]:
    """Consecutive pieces of the same call joined into one (coalescing several deltas into one frame)."""
    out: list[ToolCallDelta] = []
    for call in calls:
        if out and out[-1].index == call.index and call.id is None and call.name is None:
            prev = out[-1]
            out[-1] = ToolCallDelta(prev.index, prev.id, prev.name, prev.arguments + call.arguments)
        else:
            out.append(call)
    return out


MAX_DELTA_TEXT_BYTES = 60_000  # messages.delta.text max in protocols/inference.toml
MAX_FRAME_TOOL_CALLS = 64
MAX_FRAME_LOGPROBS = 256


def delta_frames(request_id: str, text: str, tokens: int, tool_calls: Sequence[ToolCallDelta],
                 logprobs: Sequence[TokenLogprob]) -> list[wire.DeltaFrame]:
    """One (coalesced) delta as frames within the delta frame's limits.

    A single token may be longer than a frame's text (a 70,000-character word echoed): the text is cut
    into pieces of at most 60,000 UTF-8 bytes, never inside a character, and tool-call pieces and logprobs
    go 64 / 256 at a time within :data:`COALESCE_BYTES`. The token count rides on the last frame, so the
    requester's audit has seen all of their text before it is asked to believe the count.
    """
    texts = _utf8_pieces(text, MAX_DELTA_TEXT_BYTES)
    frames = [wire.DeltaFrame(id=request_id, text=t, tokens=0) for t in texts[:-1]]
    last_text = texts[-1]
    calls: list[wire.ToolCallPiece] = []
    lps: list[wire.TokenLogprob] = []
    size = utf8_len(last_text)  # the extras share the frame of the last text piece while they fit

    def flush() -> None:
        nonlocal last_text, calls, lps, size
        frames.append(wire.DeltaFrame(id=request_id, text=last_text, tokens=0, tool_calls=calls, logprobs=lps))
        last_text, calls, lps, size = "", [], [], 0

    for call in merge_tool_calls(tool_calls):
        cost = extras_bytes((call,), ())
        if (size + cost > COALESCE_BYTES and (size or calls)) or len(calls) == MAX_FRAME_TOOL_CALLS:
            flush()
        calls.append(call.to_frame())
        size += cost
    for entry in logprobs:
        cost = extras_bytes((), (entry,))
        if (size + cost > COALESCE_BYTES and (size or calls or lps)) or len(lps) == MAX_FRAME_LOGPROBS:
            flush()
        lps.append(entry.to_frame())
        size += cost
    frames.append(wire.DeltaFrame(id=request_id, text=last_text, tokens=tokens, tool_calls=calls, logprobs=lps))
    return frames


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _utf8_pieces(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` UTF-8 bytes, cut between characters (at least one piece)."""
    if utf8_len(text) <= limit:
        return [text]
    data = text.encode("utf-8")
    out: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte: back up to a boundary
            end -= 1
        out.append(data[start:end].decode("utf-8"))
        start = end
    return out


def extras_bytes(tool_calls: Sequence[ToolCallDelta], logprobs: Sequence[TokenLogprob]) -> int:
    """A generous estimate of what the extras add to a frame (for the writer's coalescing budget)."""
    size = sum(16 + c.text_bytes() + len(c.id or "") for c in tool_calls)
    for lp in logprobs:
        size += 32 + 2 * len(lp.token.encode()) + sum(32 + 2 * len(t.token.encode()) for t in lp.top)
    return size


def from_frame(frame: wire.DeltaFrame) -> tuple[tuple[ToolCallDelta, ...], tuple[TokenLogprob, ...]]:
    """The extras of a received (validated) ``delta`` frame."""
    calls = tuple(ToolCallDelta(c.index, c.id or None, c.name or None, c.arguments) for c in frame.tool_calls)
    logprobs = tuple(
        TokenLogprob(e.token, e.logprob, e.raw or None, tuple(TopLogprob(t.token, t.logprob, t.raw or None)
                                                              for t in e.top))
        for e in frame.logprobs)
    return calls, logprobs


class ToolCallAccumulator:
    """Builds ``message.tool_calls`` of a non-streamed response from the streamed pieces."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, pieces: Iterable[ToolCallDelta]) -> None:
        for p in pieces:
            call = self._calls.setdefault(p.index, {"id": "", "type": "function",
                                                    "function": {"name": "", "arguments": ""}})
            if p.id is not None:
                call["id"] = p.id
            if p.name is not None:
                call["function"]["name"] += p.name
            call["function"]["arguments"] += p.arguments

    def result(self) -> list[dict[str, Any]]:
        return [self._calls[i] for i in sorted(self._calls)]

    def __bool__(self) -> bool:
        return bool(self._calls)
