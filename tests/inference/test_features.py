"""Optional OpenAI features (tools, response_format, logprobs, seed): structural validation, the wire round
trip, and which backend capability each one needs."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgpack
import pytest

from cocoon_node.inference import ChatRequest, RequestValidationError, parse_chat_request
from cocoon_node.inference.features import (
    ALL_CAPABILITIES,
    MAX_JSON_DEPTH,
    MAX_JSON_NODES,
    MAX_TOOLS,
    unsupported,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def base(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return body


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        value = {"type": "object", "properties": {"x": value}}
    return value


def tool_turns() -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    return [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]


INVALID: list[tuple[str, Any, str]] = [
    ("tools-object", base(tools={"a": 1}), "tools"),
    ("tools-empty", base(tools=[]), "tools"),
    ("tools-too-many", base(tools=[WEATHER] * (MAX_TOOLS + 1)), "tools"),
    ("tool-type", base(tools=[{"type": "code", "function": {"name": "f"}}]), "tools[0].type"),
    ("tool-no-function", base(tools=[{"type": "function"}]), "tools[0].function"),
    ("tool-unknown-key", base(tools=[{"type": "function", "function": {"name": "f"}, "x": 1}]), "tools[0].x"),
    ("tool-name-missing", base(tools=[{"type": "function", "function": {}}]), "tools[0].function.name"),
    ("tool-name-bad", base(tools=[{"type": "function", "function": {"name": "a b"}}]), "tools[0].function.name"),
    ("tool-name-long", base(tools=[{"type": "function", "function": {"name": "a" * 65}}]), "tools[0].function.name"),
    ("tool-duplicate", base(tools=[WEATHER, WEATHER]), "tools[1].function.name"),
    ("tool-params-array", base(tools=[{"type": "function", "function": {"name": "f", "parameters": [1]}}]),
     "tools[0].function.parameters"),
    ("tool-params-deep", base(tools=[{"type": "function", "function": {"name": "f",
                                                                       "parameters": nested(MAX_JSON_DEPTH)}}]),
     "tools[0].function.parameters" + ".properties.x" * 16),  # the 33rd nested container
    ("tool-params-nan", base(tools=[{"type": "function",
                                     "function": {"name": "f", "parameters": {"a": float("nan")}}}]),
     "tools[0].function.parameters.a"),
    ("tool-params-huge", base(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "enum": list(range(MAX_JSON_NODES + 1))}}}]), "tools[0].function.parameters.enum[9998]"),
    ("tool-strict-int", base(tools=[{"type": "function", "function": {"name": "f", "strict": 1}}]),
     "tools[0].function.strict"),
    ("tool-choice-without-tools", base(tool_choice="auto"), "tool_choice"),
    ("tool-choice-word", base(tools=[WEATHER], tool_choice="always"), "tool_choice"),
    ("tool-choice-unknown-name", base(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}),
     "tool_choice.function.name"),
    ("tool-choice-type", base(tools=[WEATHER], tool_choice={"type": "tool", "function": {"name": "get_weather"}}),
     "tool_choice.type"),
    ("parallel-without-tools", base(parallel_tool_calls=True), "parallel_tool_calls"),
    ("parallel-int", base(tools=[WEATHER], parallel_tool_calls=1), "parallel_tool_calls"),
    ("format-string", base(response_format="json"), "response_format"),
    ("format-type", base(response_format={"type": "xml"}), "response_format.type"),
    ("format-schema-missing", base(response_format={"type": "json_schema"}), "response_format.json_schema"),
    ("format-schema-name", base(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
     "response_format.json_schema.name"),
    ("format-schema-not-object", base(response_format={"type": "json_schema",
                                                        "json_schema": {"name": "n", "schema": "x"}}),
     "response_format.json_schema.schema"),
    ("format-schema-with-json-object", base(response_format={"type": "json_object", "json_schema": {"name": "n"}}),
     "response_format.json_schema"),
    ("logprobs-int", base(logprobs=1), "logprobs"),
    ("top-logprobs-without", base(top_logprobs=2), "top_logprobs"),
    ("top-logprobs-high", base(logprobs=True, top_logprobs=21), "top_logprobs"),
    ("top-logprobs-bool", base(logprobs=True, top_logprobs=True), "top_logprobs"),
    ("tool-calls-on-user", base(messages=[{"role": "user", "content": "x", "tool_calls": []}]),
     "messages[0].tool_calls"),
    ("tool-calls-empty", base(messages=[{"role": "assistant", "content": None, "tool_calls": []}]),
     "messages[0].tool_calls"),
    ("tool-call-args-object", base(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    ("tool-call-id-missing", base(messages=[{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]), "messages[0].tool_calls[0].id"),
    ("tool-call-id-on-user", base(messages=[{"role": "user", "content": "x", "tool_call_id": "c"}]),
     "messages[0].tool_call_id"),
    ("tool-message-no-content", base(messages=[{"role": "tool", "tool_call_id": "c"}]), "messages[0].content"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_feature_names_field(body: Any, field: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_chat_request(body)
    assert info.value.field == field


def test_json_nesting_is_bounded_without_recursion_trouble() -> None:
    """A schema nested far beyond the bound is refused at the bound (never a RecursionError)."""
    deep: Any = {}
    for _ in range(50_000):
        deep = {"a": deep}
    with pytest.raises(RequestValidationError, match="nested deeper"):
        parse_chat_request(base(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": deep}}))
    parse_chat_request(base(tools=[{"type": "function", "function": {"name": "f",
                                                                      "parameters": nested(MAX_JSON_DEPTH // 2 - 1)}}]))


def test_features_count_against_the_byte_limit() -> None:
    big = {"type": "function", "function": {"name": "f", "description": "x" * 8000}}
    parse_chat_request(base(tools=[big]), max_request_bytes=9000)
    with pytest.raises(RequestValidationError) as info:
        parse_chat_request(base(tools=[big]), max_request_bytes=7000)
    assert info.value.field == "tools"


VALID: list[tuple[str, dict[str, Any], set[str]]] = [
    ("plain", base(), set()),
    ("tools", base(tools=[WEATHER]), {"tools"}),
    ("tool-choice-named", base(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                               parallel_tool_calls=False), {"tools"}),
    ("tool-turns", base(messages=tool_turns(), tools=[WEATHER], tool_choice="auto"), {"tools"}),
    ("tool-turns-without-tools", base(messages=tool_turns()), {"tools"}),
    ("json-object", base(response_format={"type": "json_object"}), {"json_object"}),
    ("json-schema", base(response_format={"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True, "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}),
     {"json_schema"}),
    ("text-format", base(response_format={"type": "text"}), set()),
    ("logprobs", base(logprobs=True, top_logprobs=3), {"logprobs"}),
    ("logprobs-false", base(logprobs=False), set()),
    ("seed", base(seed=7), {"seed"}),
    ("nulls", base(tools=None, tool_choice=None, response_format=None, logprobs=None, top_logprobs=None,
                   parallel_tool_calls=None), set()),
    ("everything", base(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"},
                        logprobs=True, top_logprobs=0, seed=1), {"tools", "json_object", "logprobs", "seed"}),
]


@pytest.mark.parametrize(("body", "caps"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_features_round_trip_and_name_their_capability(body: dict[str, Any], caps: set[str]) -> None:
    original = copy.deepcopy(body)
    req = parse_chat_request(body)
    assert body == original
    wire = req.to_wire()
    assert msgpack.unpackb(msgpack.packb(wire), raw=False) == wire
    assert json.loads(json.dumps(wire)) == wire
    assert ChatRequest.from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False)) == req
    assert set(req.capabilities_used()) == caps
    assert caps <= ALL_CAPABILITIES
    assert unsupported(req.capabilities_used(), ALL_CAPABILITIES) is None


def test_parsed_tool_turns() -> None:
    req = parse_chat_request(base(messages=tool_turns(), tools=[WEATHER]))
    assistant, tool = req.messages[1], req.messages[2]
    assert assistant.content == "" and assistant.tool_calls[0]["function"]["name"] == "get_weather"
    assert tool.role == "tool" and tool.tool_call_id == "call_1" and tool.content == "sunny"
    assert req.to_wire()["messages"][1]["content"] is None  # an assistant turn that only called tools
    assert req.capabilities_used() == {"tools": "tools"}
    assert parse_chat_request(base(messages=tool_turns())).capabilities_used() == {"tools": "messages[1]"}


def test_unsupported_names_capability_and_field() -> None:
    req = parse_chat_request(base(logprobs=True, seed=3, response_format={"type": "json_object"}))
    assert unsupported(req.capabilities_used(), frozenset({"seed", "json_object"})) == ("logprobs", "logprobs")
    assert unsupported(req.capabilities_used(), frozenset({"seed", "logprobs"})) == ("json_object", "response_format")
