"""OpenAI chat-completions request validation.

A request crosses three trust boundaries (HTTP client -> requester, requester -> worker over the stream
protocol, worker -> backend), so it is parsed once into an immutable :class:`ChatRequest` and re-validated
whenever it is rebuilt from the wire. Validation follows the OpenAI API closely enough that ordinary
clients work, and is strict where laxness would cost a paid worker: unknown fields, wrong types (a bool is
never an int), out-of-range values and oversized bodies are rejected with the offending field named in a
JSON-path-ish form (``messages[2].content``, ``temperature``; ``$`` is the body itself).

Decisions worth knowing:

- ``null`` is accepted for every optional field and means "absent", as in the OpenAI API.
- ``max_tokens`` (legacy) and ``max_completion_tokens`` are aliases; when both are given they must agree.
- Text content parts are joined with ``"\\n"`` into a single string; other part types are rejected.
- ``user`` is accepted and dropped (it never reaches a worker); ``n`` may only be 1.
- Optional features (tools, ``response_format``, logprobs, seed) are validated for shape here
  (:mod:`cocoon_node.inference.features`); whether a backend supports them is the worker's decision.
  ``tool`` messages and assistant ``tool_calls`` belong to the ``tools`` feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cocoon_node.inference.features import FIELDS as _FEATURE_FIELDS
from cocoon_node.inference.features import (
    FeatureError,
    Features,
    capabilities_used,
    parse_features,
    parse_tool_calls,
    tool_call_id,
)

ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant", "tool"})
DEFAULT_MAX_REQUEST_BYTES = 1_000_000
DEFAULT_MAX_MESSAGES = 256
DEFAULT_MAX_TOKENS_LIMIT = 4096
MAX_STOP_SEQUENCES = 4
_SEED_MIN = -(2**63)
_SEED_MAX = 2**63 - 1
_NO_FEATURES = Features()

_TOP_LEVEL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "n",
        "user",
    }
) | _FEATURE_FIELDS
_MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


class RequestValidationError(ValueError):
    """A chat request is malformed; ``field`` names the offending field (``$`` is the whole body)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message; ``content`` is already flattened to text (empty for an assistant turn that only called
    tools). ``tool_calls`` (assistant) and ``tool_call_id`` (role ``tool``) are in their wire form."""

    role: str
    content: str
    name: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat-completions request; ``max_tokens`` is None when the client set no limit."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    features: Features = _NO_FEATURES

    def capabilities_used(self) -> dict[str, str]:
        """Backend capabilities this request needs -> the field that needs it (see inference.features)."""
        tool_messages = next((f"messages[{i}]" for i, m in enumerate(self.messages)
                              if m.tool_calls or m.role == "tool"), None)
        return capabilities_used(self.features, seed=self.seed, tool_messages=tool_messages)

    def to_wire(self) -> dict[str, Any]:
        """A plain (msgpack/JSON-able) OpenAI-shaped dict that :meth:`from_wire` accepts again."""
        messages: list[dict[str, Any]] = []
        for m in self.messages:
            item: dict[str, Any] = {"role": m.role, "content": m.content if m.content or not m.tool_calls else None}
            if m.name is not None:
                item["name"] = m.name
            if m.tool_calls:
                item["tool_calls"] = [dict(c) for c in m.tool_calls]
            if m.tool_call_id is not None:
                item["tool_call_id"] = m.tool_call_id
            messages.append(item)
        out: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
        if self.max_tokens is not None:
            out["max_completion_tokens"] = self.max_tokens
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.stop:
            out["stop"] = list(self.stop)
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stream:
            out["stream_options"] = {"include_usage": self.include_usage}
        out.update(self.features.to_wire())
        return out

    @classmethod
    def from_wire(
        cls,
        obj: Any,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    ) -> ChatRequest:
        """Rebuild from :meth:`to_wire` output; re-validates, because the dict came from a peer."""
        return parse_chat_request(
            obj,
            max_request_bytes=max_request_bytes,
            max_messages=max_messages,
            max_tokens_limit=max_tokens_limit,
        )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _expect_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RequestValidationError(field, f"expected a string, got {_type_name(value)}")
    return value


def _expect_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestValidationError(field, f"expected an integer, got {_type_name(value)}")
    return value


def _expect_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise RequestValidationError(field, f"expected a boolean, got {_type_name(value)}")
    return value


def _expect_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestValidationError(field, f"expected a number, got {_type_name(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise RequestValidationError(field, "must be a finite number")
    return number


def _expect_object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RequestValidationError(field, f"expected an object, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise RequestValidationError(field, "object keys must be strings")
    return value


def _reject_unknown(obj: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            raise RequestValidationError(f"{prefix}{key}", "unknown field")


def _parse_content(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RequestValidationError(field, f"expected a string or an array of content parts, got {_type_name(value)}")
    if not value:
        raise RequestValidationError(field, "must contain at least one content part")
    texts: list[str] = []
    for i, part in enumerate(value):
        pfield = f"{field}[{i}]"
        part = _expect_object(part, pfield)
        if "type" not in part:
            raise RequestValidationError(f"{pfield}.type", "required")
        ptype = _expect_str(part["type"], f"{pfield}.type")
        if ptype != "text":
            raise RequestValidationError(f"{pfield}.type", f"unsupported content part type {ptype!r}")
        _reject_unknown(part, frozenset({"type", "text"}), f"{pfield}.")
        if "text" not in part:
            raise RequestValidationError(f"{pfield}.text", "required")
        texts.append(_expect_str(part["text"], f"{pfield}.text"))
    return "\n".join(texts)


def _parse_messages(value: Any, max_messages: int, max_request_bytes: int) -> tuple[ChatMessage, ...]:
    if value is None:
        raise RequestValidationError("messages", "required")
    if not isinstance(value, list):
        raise RequestValidationError("messages", f"expected an array, got {_type_name(value)}")
    if not value:
        raise RequestValidationError("messages", "must contain at least one message")
    if len(value) > max_messages:
        raise RequestValidationError("messages", f"too many messages ({len(value)} > {max_messages})")
    total_bytes = 0
    messages: list[ChatMessage] = []
    for i, raw in enumerate(value):
        field = f"messages[{i}]"
        msg = _expect_object(raw, field)
        _reject_unknown(msg, _MESSAGE_FIELDS, f"{field}.")
        if "role" not in msg:
            raise RequestValidationError(f"{field}.role", "required")
        role = _expect_str(msg["role"], f"{field}.role")
        if role not in ROLES:
            raise RequestValidationError(
                f"{field}.role", f"unsupported role {role!r} (expected one of {', '.join(sorted(ROLES))})"
            )
        tool_calls: tuple[dict[str, Any], ...] = ()
        call_id: str | None = None
        try:
            if msg.get("tool_calls") is not None:
                if role != "assistant":
                    raise FeatureError(f"{field}.tool_calls", "only assistant messages carry tool calls")
                tool_calls = parse_tool_calls(msg["tool_calls"], f"{field}.tool_calls")
            if role == "tool":
                call_id = tool_call_id(msg.get("tool_call_id"), f"{field}.tool_call_id")
            elif msg.get("tool_call_id") is not None:
                raise FeatureError(f"{field}.tool_call_id", "only tool messages carry a tool_call_id")
        except FeatureError as exc:
            raise RequestValidationError(exc.field, exc.message) from None
        if msg.get("content") is None and not tool_calls:
            raise RequestValidationError(f"{field}.content", "required")
        content = "" if msg.get("content") is None else _parse_content(msg["content"], f"{field}.content")
        name = msg.get("name")
        if name is not None:
            name = _expect_str(name, f"{field}.name")
            if not name or len(name) > 64:
                raise RequestValidationError(f"{field}.name", "must be 1 to 64 characters")
        total_bytes += len(content.encode("utf-8", "surrogatepass"))
        total_bytes += sum(len(c["function"]["arguments"].encode("utf-8", "surrogatepass")) + len(c["id"])
                           for c in tool_calls)
        if total_bytes > max_request_bytes:
            raise RequestValidationError(f"{field}.content", f"request content exceeds {max_request_bytes} bytes")
        messages.append(ChatMessage(role=role, content=content, name=name, tool_calls=tool_calls,
                                    tool_call_id=call_id))
    return tuple(messages)


def _parse_max_tokens(value: Any, field: str, limit: int) -> int:
    n = _expect_int(value, field)
    if n < 1:
        raise RequestValidationError(field, "must be at least 1")
    if n > limit:
        raise RequestValidationError(field, f"must be at most {limit}")
    return n


def _parse_stop(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[Any] = [value]
        fields = ["stop"]
    elif isinstance(value, list):
        if len(value) > MAX_STOP_SEQUENCES:
            raise RequestValidationError("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        items = value
        fields = [f"stop[{i}]" for i in range(len(value))]
    else:
        raise RequestValidationError("stop", f"expected a string or an array of strings, got {_type_name(value)}")
    out: list[str] = []
    for item, field in zip(items, fields, strict=True):
        s = _expect_str(item, field)
        if not s:
            raise RequestValidationError(field, "stop sequences must not be empty")
        out.append(s)
    return tuple(out)


def parse_chat_request(
    obj: Any,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
) -> ChatRequest:
    """Validate a decoded JSON body; raises :class:`RequestValidationError` naming the first bad field.

    ``max_request_bytes`` bounds the UTF-8 size of all message contents and stop strings together,
    ``max_messages`` the message count and ``max_tokens_limit`` the largest completion-token limit allowed.
    """
    body = _expect_object(obj, "$")
    _reject_unknown(body, _TOP_LEVEL_FIELDS, "")

    if body.get("model") is None:
        raise RequestValidationError("model", "required")
    model = _expect_str(body["model"], "model")
    if not model:
        raise RequestValidationError("model", "must not be empty")

    messages = _parse_messages(body.get("messages"), max_messages, max_request_bytes)

    max_tokens: int | None = None
    legacy = body.get("max_tokens")
    current = body.get("max_completion_tokens")
    if legacy is not None:
        max_tokens = _parse_max_tokens(legacy, "max_tokens", max_tokens_limit)
    if current is not None:
        value = _parse_max_tokens(current, "max_completion_tokens", max_tokens_limit)
        if max_tokens is not None and value != max_tokens:
            raise RequestValidationError("max_completion_tokens", "conflicts with max_tokens")
        max_tokens = value

    temperature: float | None = None
    if body.get("temperature") is not None:
        temperature = _expect_number(body["temperature"], "temperature")
        if not 0.0 <= temperature <= 2.0:
            raise RequestValidationError("temperature", "must be between 0 and 2")

    top_p: float | None = None
    if body.get("top_p") is not None:
        top_p = _expect_number(body["top_p"], "top_p")
        if not 0.0 < top_p <= 1.0:
            raise RequestValidationError("top_p", "must be greater than 0 and at most 1")

    stop: tuple[str, ...] = ()
    if body.get("stop") is not None:
        stop = _parse_stop(body["stop"])
        stop_bytes = sum(len(s.encode("utf-8", "surrogatepass")) for s in stop)
        content_bytes = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in messages)
        if content_bytes + stop_bytes > max_request_bytes:
            raise RequestValidationError("stop", f"request content exceeds {max_request_bytes} bytes")

    seed: int | None = None
    if body.get("seed") is not None:
        seed = _expect_int(body["seed"], "seed")
        if not _SEED_MIN <= seed <= _SEED_MAX:
            raise RequestValidationError("seed", "must fit in a signed 64-bit integer")

    stream = False
    if body.get("stream") is not None:
        stream = _expect_bool(body["stream"], "stream")

    include_usage = False
    if body.get("stream_options") is not None:
        if not stream:
            raise RequestValidationError("stream_options", "only allowed when stream is true")
        options = _expect_object(body["stream_options"], "stream_options")
        _reject_unknown(options, frozenset({"include_usage"}), "stream_options.")
        if options.get("include_usage") is not None:
            include_usage = _expect_bool(options["include_usage"], "stream_options.include_usage")

    if body.get("n") is not None:
        n = _expect_int(body["n"], "n")
        if n != 1:
            raise RequestValidationError("n", "n other than 1 is not supported")

    if body.get("user") is not None:
        _expect_str(body["user"], "user")

    try:
        features = parse_features(body)
    except FeatureError as exc:
        raise RequestValidationError(exc.field, exc.message) from None
    content_bytes = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in messages)
    if content_bytes + features.wire_bytes() > max_request_bytes:
        raise RequestValidationError("tools" if features.tools else "response_format",
                                     f"request content exceeds {max_request_bytes} bytes")

    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        features=features,
    )
