"""Chat-completions request validation: every bad field is named, valid requests survive the wire."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgpack
import pytest

from cocoon_node.inference import ChatMessage, ChatRequest, RequestValidationError, parse_chat_request


def base(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return body


def with_message(message: Any, index: int = 1) -> dict[str, Any]:
    body = base()
    body["messages"] = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    body["messages"][index] = message
    return body


def without(key: str) -> dict[str, Any]:
    body = base()
    del body[key]
    return body


INVALID: list[tuple[str, Any, str]] = [
    # (case id, body, field expected in the error)
    ("body-not-object", [1, 2], "$"),
    ("body-string", "hello", "$"),
    ("unknown-top-level", base(frequency_penalty=0.5), "frequency_penalty"),
    ("unknown-cocoon-extension", base(cocoon={"x": 1}), "cocoon"),
    ("model-missing", without("model"), "model"),
    ("model-null", base(model=None), "model"),
    ("model-int", base(model=3), "model"),
    ("model-empty", base(model=""), "model"),
    ("messages-missing", without("messages"), "messages"),
    ("messages-object", base(messages={"role": "user"}), "messages"),
    ("messages-empty", base(messages=[]), "messages"),
    ("messages-too-many", base(messages=[{"role": "user", "content": "x"}] * 9), "messages"),
    ("message-not-object", with_message("hi"), "messages[1]"),
    ("message-role-missing", with_message({"content": "x"}), "messages[1].role"),
    ("message-role-int", with_message({"role": 1, "content": "x"}), "messages[1].role"),
    # a tool result must say which call it answers (tool messages belong to the tools feature)
    ("message-role-tool", with_message({"role": "tool", "content": "x"}), "messages[1].tool_call_id"),
    ("message-role-function", with_message({"role": "function", "content": "x"}), "messages[1].role"),
    ("message-content-missing", with_message({"role": "user"}), "messages[1].content"),
    ("message-content-null", with_message({"role": "assistant", "content": None}), "messages[1].content"),
    ("message-content-int", with_message({"role": "user", "content": 5}), "messages[1].content"),
    (
        "message-content-object",
        with_message({"role": "user", "content": {"text": "x"}}),
        "messages[1].content",
    ),
    ("message-content-empty-parts", with_message({"role": "user", "content": []}), "messages[1].content"),
    (
        "message-unknown-field",
        with_message({"role": "user", "content": "x", "tool_calls": []}),
        "messages[1].tool_calls",
    ),
    ("message-name-int", with_message({"role": "user", "content": "x", "name": 7}), "messages[1].name"),
    ("message-name-empty", with_message({"role": "user", "content": "x", "name": ""}), "messages[1].name"),
    ("part-not-object", with_message({"role": "user", "content": ["x"]}), "messages[1].content[0]"),
    (
        "part-type-missing",
        with_message({"role": "user", "content": [{"text": "x"}]}),
        "messages[1].content[0].type",
    ),
    (
        "part-image",
        with_message(
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}],
            }
        ),
        "messages[1].content[1].type",
    ),
    (
        "part-text-missing",
        with_message({"role": "user", "content": [{"type": "text"}]}),
        "messages[1].content[0].text",
    ),
    (
        "part-text-int",
        with_message({"role": "user", "content": [{"type": "text", "text": 3}]}),
        "messages[1].content[0].text",
    ),
    (
        "part-extra-key",
        with_message({"role": "user", "content": [{"type": "text", "text": "a", "cache": True}]}),
        "messages[1].content[0].cache",
    ),
    (
        "content-too-big",
        with_message({"role": "user", "content": "x" * 2000}, index=1),
        "messages[1].content",
    ),
    ("max_tokens-zero", base(max_tokens=0), "max_tokens"),
    ("max_tokens-negative", base(max_tokens=-5), "max_tokens"),
    ("max_tokens-bool", base(max_tokens=True), "max_tokens"),
    ("max_tokens-float", base(max_tokens=10.0), "max_tokens"),
    ("max_tokens-string", base(max_tokens="10"), "max_tokens"),
    ("max_tokens-over-limit", base(max_tokens=101), "max_tokens"),
    ("max_completion_tokens-zero", base(max_completion_tokens=0), "max_completion_tokens"),
    ("max_completion_tokens-bool", base(max_completion_tokens=False), "max_completion_tokens"),
    ("max_completion_tokens-over-limit", base(max_completion_tokens=1000), "max_completion_tokens"),
    ("max-token-fields-disagree", base(max_tokens=10, max_completion_tokens=20), "max_completion_tokens"),
    ("temperature-string", base(temperature="0.5"), "temperature"),
    ("temperature-bool", base(temperature=True), "temperature"),
    ("temperature-negative", base(temperature=-0.1), "temperature"),
    ("temperature-too-high", base(temperature=2.01), "temperature"),
    ("temperature-nan", base(temperature=float("nan")), "temperature"),
    ("temperature-inf", base(temperature=float("inf")), "temperature"),
    ("top_p-zero", base(top_p=0), "top_p"),
    ("top_p-over-one", base(top_p=1.5), "top_p"),
    ("top_p-string", base(top_p="1"), "top_p"),
    ("top_p-bool", base(top_p=False), "top_p"),
    ("stop-int", base(stop=3), "stop"),
    ("stop-object", base(stop={"a": 1}), "stop"),
    ("stop-empty-string", base(stop=""), "stop"),
    ("stop-too-many", base(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("stop-item-int", base(stop=["a", 2]), "stop[1]"),
    ("stop-item-empty", base(stop=["a", ""]), "stop[1]"),
    ("stop-too-big", base(stop=["y" * 1000, "z" * 1000]), "stop"),
    ("seed-float", base(seed=1.5), "seed"),
    ("seed-bool", base(seed=True), "seed"),
    ("seed-string", base(seed="1"), "seed"),
    ("seed-huge", base(seed=2**70), "seed"),
    ("stream-string", base(stream="true"), "stream"),
    ("stream-int", base(stream=1), "stream"),
    ("stream_options-without-stream", base(stream_options={"include_usage": True}), "stream_options"),
    (
        "stream_options-stream-false",
        base(stream=False, stream_options={"include_usage": True}),
        "stream_options",
    ),
    ("stream_options-not-object", base(stream=True, stream_options=True), "stream_options"),
    (
        "stream_options-unknown",
        base(stream=True, stream_options={"include_usage": True, "x": 1}),
        "stream_options.x",
    ),
    (
        "stream_options-include_usage-int",
        base(stream=True, stream_options={"include_usage": 1}),
        "stream_options.include_usage",
    ),
    ("n-two", base(n=2), "n"),
    ("n-zero", base(n=0), "n"),
    ("n-bool", base(n=True), "n"),
    ("n-string", base(n="1"), "n"),
    ("user-int", base(user=5), "user"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_request_names_field(body: Any, field: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_chat_request(body, max_request_bytes=1500, max_messages=8, max_tokens_limit=100)
    assert info.value.field == field, info.value
    assert str(info.value).startswith(f"{field}: ")


def test_n_message_matches_openai_wording() -> None:
    with pytest.raises(RequestValidationError, match="n other than 1 is not supported"):
        parse_chat_request(base(n=3))


def test_unknown_field_message() -> None:
    with pytest.raises(RequestValidationError, match="unknown field"):
        parse_chat_request(base(logit_bias={"1": 5}))


def test_byte_limit_counts_utf8_bytes() -> None:
    # 600 three-byte characters = 1800 bytes: over a 1500-byte limit although only 600 characters.
    with pytest.raises(RequestValidationError) as info:
        parse_chat_request(base(messages=[{"role": "user", "content": "€" * 600}]), max_request_bytes=1500)
    assert info.value.field == "messages[0].content"


VALID: list[tuple[str, dict[str, Any]]] = [
    ("minimal", base()),
    (
        "everything",
        {
            "model": "SmolLM2-135M-Instruct",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": "No lists."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "ok", "name": "bot"},
                {"role": "user", "content": "Ünïcödé ✓ 日本"},
            ],
            "max_tokens": 64,
            "max_completion_tokens": 64,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": ["\n\n", "END"],
            "seed": -42,
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 1,
            "user": "alice",
        },
    ),
    ("int-temperature", base(temperature=0, top_p=1)),
    ("stop-string", base(stop="###")),
    ("stop-empty-list", base(stop=[])),
    ("nulls-mean-absent", base(temperature=None, top_p=None, stop=None, seed=None, n=None, user=None)),
    ("stream-without-options", base(stream=True)),
    ("max_completion_tokens-only", base(max_completion_tokens=5)),
    ("big-seed", base(seed=2**63 - 1)),
]


@pytest.mark.parametrize("body", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_request_round_trips(body: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    req = parse_chat_request(body)
    assert body == original  # parsing never mutates the caller's dict
    wire = req.to_wire()
    # The wire form must survive msgpack (the stream protocol) and JSON (upstream servers) unchanged.
    assert msgpack.unpackb(msgpack.packb(wire), raw=False) == wire
    assert json.loads(json.dumps(wire)) == wire
    assert ChatRequest.from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False)) == req


def test_parsed_values() -> None:
    req = parse_chat_request(VALID[1][1])
    assert req.model == "SmolLM2-135M-Instruct"
    assert req.messages[2] == ChatMessage(role="user", content="a\nb")
    assert req.messages[3].name == "bot"
    assert req.max_tokens == 64
    assert req.temperature == 0.7 and req.top_p == 0.9
    assert req.stop == ("\n\n", "END")
    assert req.seed == -42
    assert req.stream and req.include_usage
    assert isinstance(parse_chat_request(base(temperature=1)).temperature, float)
    assert parse_chat_request(base(max_tokens=9)).max_tokens == 9
    assert parse_chat_request(base(stop="x")).stop == ("x",)
    assert parse_chat_request(base()).max_tokens is None


def test_from_wire_revalidates() -> None:
    wire = parse_chat_request(base()).to_wire()
    wire["temperature"] = 9
    with pytest.raises(RequestValidationError) as info:
        ChatRequest.from_wire(wire)
    assert info.value.field == "temperature"
    wire = parse_chat_request(base(max_tokens=50)).to_wire()
    with pytest.raises(RequestValidationError):
        ChatRequest.from_wire(wire, max_tokens_limit=10)


def test_request_is_frozen() -> None:
    req = parse_chat_request(base())
    with pytest.raises(AttributeError):
        req.model = "other"  # type: ignore[misc]
