"""OpenAI request features a backend may or may not support, and their structural validation.

``tools``/``tool_choice``/``parallel_tool_calls`` (with ``tool`` messages and assistant ``tool_calls``),
``response_format`` (``json_object``, ``json_schema``), ``logprobs``/``top_logprobs`` and ``seed`` pass through
the mesh to a backend that declares them in ``Backend.capabilities``. Here they are only checked for shape
and size, never interpreted: what a schema means is the backend's business, but a peer must not be able to
send a structure deeper or larger than the bounds below (JSON Schema objects are free-form, so they get a
nesting-depth and node-count bound instead of a field table).

A request says which capabilities it uses with :func:`capabilities_used`; the worker refuses one its
backend lacks as ``invalid_request`` naming the field (a client's request, never the worker's fault).
Requester-side routing on capabilities is not here: workers do not announce them yet.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Every capability name a backend may declare.
TOOLS = "tools"
JSON_OBJECT = "json_object"
JSON_SCHEMA = "json_schema"
LOGPROBS = "logprobs"
SEED = "seed"
ALL_CAPABILITIES: frozenset[str] = frozenset({TOOLS, JSON_OBJECT, JSON_SCHEMA, LOGPROBS, SEED})

MAX_TOOLS = 128
MAX_TOOL_CALLS = 128  # per assistant message
MAX_JSON_DEPTH = 32  # nesting of a free-form JSON value (a tool's parameters, a response schema)
MAX_JSON_NODES = 10_000
MAX_DESCRIPTION_CHARS = 8192
MAX_TOOL_CALL_ID_CHARS = 256
MAX_TOP_LOGPROBS = 20
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOOL_CHOICE_WORDS = frozenset({"none", "auto", "required"})


class FeatureError(ValueError):
    """Raised with the offending field; :mod:`cocoon_node.inference.chat` turns it into its own error."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Features:
    """The optional features of one request, in their validated wire form (plain JSON values)."""

    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tools:
            out["tools"] = [dict(t) for t in self.tools]
        if self.tool_choice is not None:
            out["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format is not None:
            out["response_format"] = self.response_format
        if self.logprobs:
            out["logprobs"] = True
        if self.top_logprobs is not None:
            out["top_logprobs"] = self.top_logprobs
        return out

    def wire_bytes(self) -> int:
        """UTF-8 size of what these features add to a request (counted against its byte limit)."""
        wire = self.to_wire()
        return len(json.dumps(wire, ensure_ascii=False).encode("utf-8", "surrogatepass")) if wire else 0


FIELDS: frozenset[str] = frozenset(
    {"tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs", "top_logprobs"}
)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _object(value: Any, field: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FeatureError(field, f"expected an object, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise FeatureError(field, "object keys must be strings")
        if key not in allowed:
            raise FeatureError(f"{field}.{key}", "unknown field")
    return value


def _string(value: Any, field: str, max_chars: int | None = None) -> str:
    if not isinstance(value, str):
        raise FeatureError(field, f"expected a string, got {_kind(value)}")
    if max_chars is not None and len(value) > max_chars:
        raise FeatureError(field, f"longer than {max_chars} characters")
    return value


def _name(value: Any, field: str) -> str:
    name = _string(value, field)
    if not _NAME.fullmatch(name):
        raise FeatureError(field, "must be 1 to 64 characters of a-z, A-Z, 0-9, '_' or '-'")
    return name


def _optional_bool(value: Any, field: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise FeatureError(field, f"expected a boolean, got {_kind(value)}")
    return value


def json_value(value: Any, field: str, *, depth: int = MAX_JSON_DEPTH, nodes: list[int] | None = None) -> Any:
    """A copy of a free-form JSON value, refusing non-JSON types, non-finite numbers, nesting deeper than
    ``depth`` and more than :data:`MAX_JSON_NODES` values in all."""
    budget = nodes if nodes is not None else [MAX_JSON_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise FeatureError(field, f"more than {MAX_JSON_NODES} values")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FeatureError(field, "must be a finite number")
        return value
    if isinstance(value, list | tuple | Mapping):
        if depth <= 0:
            raise FeatureError(field, f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise FeatureError(field, "object keys must be strings")
                out[key] = json_value(item, f"{field}.{key}", depth=depth - 1, nodes=budget)
            return out
        return [json_value(item, f"{field}[{i}]", depth=depth - 1, nodes=budget) for i, item in enumerate(value)]
    raise FeatureError(field, f"not a JSON value ({_kind(value)})")


def _schema(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise FeatureError(field, f"expected an object (a JSON Schema), got {_kind(value)}")
    out: dict[str, Any] = json_value(value, field)
    return out


def _tool(value: Any, field: str) -> dict[str, Any]:
    tool = _object(value, field, frozenset({"type", "function"}))
    if tool.get("type") != "function":
        raise FeatureError(f"{field}.type", "only 'function' tools are supported")
    if tool.get("function") is None:
        raise FeatureError(f"{field}.function", "required")
    fn = _object(tool["function"], f"{field}.function", frozenset({"name", "description", "parameters", "strict"}))
    if fn.get("name") is None:
        raise FeatureError(f"{field}.function.name", "required")
    out: dict[str, Any] = {"name": _name(fn["name"], f"{field}.function.name")}
    if fn.get("description") is not None:
        out["description"] = _string(fn["description"], f"{field}.function.description", MAX_DESCRIPTION_CHARS)
    if fn.get("parameters") is not None:
        out["parameters"] = _schema(fn["parameters"], f"{field}.function.parameters")
    if (strict := _optional_bool(fn.get("strict"), f"{field}.function.strict")) is not None:
        out["strict"] = strict
    return {"type": "function", "function": out}


def _tools(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        raise FeatureError("tools", f"expected an array, got {_kind(value)}")
    if not value:
        raise FeatureError("tools", "must contain at least one tool (omit the field for none)")
    if len(value) > MAX_TOOLS:
        raise FeatureError("tools", f"at most {MAX_TOOLS} tools are allowed")
    tools = tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(value))
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if t["function"]["name"] in seen:
            raise FeatureError(f"tools[{i}].function.name", "duplicate tool name")
        seen.add(t["function"]["name"])
    return tools


def _tool_choice(value: Any, tools: tuple[dict[str, Any], ...]) -> str | dict[str, Any]:
    if not tools:
        raise FeatureError("tool_choice", "only allowed when tools are specified")
    if isinstance(value, str):
        if value not in _TOOL_CHOICE_WORDS:
            raise FeatureError("tool_choice", "must be 'none', 'auto', 'required' or a named function")
        return value
    choice = _object(value, "tool_choice", frozenset({"type", "function"}))
    if choice.get("type") != "function":
        raise FeatureError("tool_choice.type", "must be 'function'")
    fn = _object(choice.get("function"), "tool_choice.function", frozenset({"name"}))
    name = _name(fn.get("name"), "tool_choice.function.name")
    if name not in {t["function"]["name"] for t in tools}:
        raise FeatureError("tool_choice.function.name", f"no tool named {name!r} in tools")
    return {"type": "function", "function": {"name": name}}


def _response_format(value: Any) -> dict[str, Any] | None:
    fmt = _object(value, "response_format", frozenset({"type", "json_schema"}))
    kind = fmt.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise FeatureError("response_format.type", "must be 'text', 'json_object' or 'json_schema'")
    if kind != "json_schema":
        if fmt.get("json_schema") is not None:
            raise FeatureError("response_format.json_schema", "only allowed with type 'json_schema'")
        return None if kind == "text" else {"type": kind}
    if fmt.get("json_schema") is None:
        raise FeatureError("response_format.json_schema", "required with type 'json_schema'")
    where = "response_format.json_schema"
    spec = _object(fmt["json_schema"], where, frozenset({"name", "description", "schema", "strict"}))
    out: dict[str, Any] = {"name": _name(spec.get("name"), f"{where}.name")}
    if spec.get("description") is not None:
        out["description"] = _string(spec["description"], f"{where}.description", MAX_DESCRIPTION_CHARS)
    if spec.get("schema") is not None:
        out["schema"] = _schema(spec["schema"], f"{where}.schema")
    if (strict := _optional_bool(spec.get("strict"), f"{where}.strict")) is not None:
        out["strict"] = strict
    return {"type": "json_schema", "json_schema": out}


def parse_features(body: Mapping[str, Any]) -> Features:
    """The optional features of a request body (``null`` means absent, as everywhere in the OpenAI API)."""
    tools = _tools(body["tools"]) if body.get("tools") is not None else ()
    tool_choice = _tool_choice(body["tool_choice"], tools) if body.get("tool_choice") is not None else None
    parallel = _optional_bool(body.get("parallel_tool_calls"), "parallel_tool_calls")
    if parallel is not None and not tools:
        raise FeatureError("parallel_tool_calls", "only allowed when tools are specified")
    response_format = _response_format(body["response_format"]) if body.get("response_format") is not None else None
    logprobs = bool(_optional_bool(body.get("logprobs"), "logprobs"))
    top: int | None = None
    if body.get("top_logprobs") is not None:
        raw = body["top_logprobs"]
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise FeatureError("top_logprobs", f"expected an integer, got {_kind(raw)}")
        if not 0 <= raw <= MAX_TOP_LOGPROBS:
            raise FeatureError("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")
        if not logprobs:
            raise FeatureError("top_logprobs", "only allowed when logprobs is true")
        top = raw
    return Features(tools, tool_choice, parallel, response_format, logprobs, top)


def parse_tool_calls(value: Any, field: str) -> tuple[dict[str, Any], ...]:
    """An assistant message's ``tool_calls`` (earlier calls sent back with their results)."""
    if not isinstance(value, list):
        raise FeatureError(field, f"expected an array, got {_kind(value)}")
    if not value or len(value) > MAX_TOOL_CALLS:
        raise FeatureError(field, f"must hold 1 to {MAX_TOOL_CALLS} tool calls")
    calls = []
    for i, raw in enumerate(value):
        where = f"{field}[{i}]"
        call = _object(raw, where, frozenset({"id", "type", "function"}))
        if call.get("type") != "function":
            raise FeatureError(f"{where}.type", "must be 'function'")
        fn = _object(call.get("function"), f"{where}.function", frozenset({"name", "arguments"}))
        calls.append({
            "id": tool_call_id(call.get("id"), f"{where}.id"),
            "type": "function",
            "function": {"name": _name(fn.get("name"), f"{where}.function.name"),
                         "arguments": _string(fn.get("arguments"), f"{where}.function.arguments")},
        })
    return tuple(calls)


def tool_call_id(value: Any, field: str) -> str:
    ident = _string(value, field, MAX_TOOL_CALL_ID_CHARS)
    if not ident:
        raise FeatureError(field, "must not be empty")
    return ident


def capabilities_used(features: Features, *, seed: int | None, tool_messages: str | None) -> dict[str, str]:
    """Capability -> the field that uses it (for the refusal message); ``tool_messages`` names the first
    message that carries tool calls or a tool result, if any."""
    used: dict[str, str] = {}
    if features.tools:
        used[TOOLS] = "tools"
    elif tool_messages is not None:
        used[TOOLS] = tool_messages
    if features.response_format is not None:
        used[features.response_format["type"]] = "response_format"
    if features.logprobs:
        used[LOGPROBS] = "logprobs"
    if seed is not None:
        used[SEED] = "seed"
    return used


def unsupported(used: Mapping[str, str], capabilities: frozenset[str]) -> tuple[str, str] | None:
    """The first ``(capability, field)`` a backend with ``capabilities`` cannot serve, or None."""
    for capability, field in used.items():
        if capability not in capabilities:
            return capability, field
    return None
