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


def frame_fields(tool_calls: Sequence[ToolCallDelta], logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
    """The optional :class:`~cocoon_node.wire.messages.inference.DeltaFrame` fields for these extras, as
    keyword arguments (none when there are none, so the frame omits them)."""
    out: dict[str, Any] = {}
    if tool_calls:
        out["tool_calls"] = [c.to_frame() for c in merge_tool_calls(tool_calls)]
    if logprobs:
        out["logprobs"] = [lp.to_frame() for lp in logprobs]
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
