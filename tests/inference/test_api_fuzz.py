"""Issue 13: property-based fuzzing (hypothesis) of request parsing and of the HTTP API.

Whatever a client sends, the requester answers without a 5xx, every error is OpenAI's error shape, no
worker's standing drops for it, and the node answers a good request afterwards. Request parsing raises
nothing but :class:`RequestValidationError`, and what it accepts the worker accepts again from the wire.

Bodies are drawn three ways: arbitrary JSON (lone surrogates, NaN and deep nesting included), a valid
request with fields replaced by arbitrary values, and raw bytes. Examples are derandomized, so a CI run is
reproducible; no example database is written.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon_node.inference import SyntheticBackend, parse_chat_request
from cocoon_node.inference.chat import ChatRequest, RequestValidationError
from cocoon_node.inference.client import check_sendable

from .api_harness import api_over

MODEL = "synthetic-echo"
FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
          "stream_options", "seed", "n", "user", "tools", "tool_choice", "response_format", "logprobs",
          "top_logprobs", "presence_penalty", "frequency_penalty", "unknown_field"]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id", "extra"]

texts = st.one_of(st.text(max_size=20), st.sampled_from(["\ud800", "a\udfffb", "", "user", "assistant", "tool",
                                                          MODEL, "json_object", "auto", "function"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=16)


@st.composite
def nested(draw: st.DrawFn) -> Any:
    value: Any = draw(scalars)
    for _ in range(draw(st.integers(min_value=1, max_value=300))):
        value = [value] if draw(st.booleans()) else {"content": value}
    return value


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with some fields (top-level or of its message) replaced by arbitrary values."""
    message: dict[str, Any] = {"role": "user", "content": "hello there"}
    for key in draw(st.lists(st.sampled_from(MESSAGE_FIELDS), max_size=2)):
        message[key] = draw(st.one_of(texts, json_values, nested()))
    body: dict[str, Any] = {"model": MODEL, "messages": [message]}
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        body[key] = draw(st.one_of(texts, json_values, nested()))
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(min_value=-2, max_value=8))  # keep echoes short
    return body


def encode(body: Any) -> bytes:
    """JSON as a client would send it (surrogates escaped, NaN written as NaN, which Python's json accepts)."""
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


# one word of n characters: past the delta frame's text (60,000), the request frame (262,144), the body (1 MiB)
big = st.integers(min_value=50_000, max_value=1_100_000).map(
    lambda n: encode({"model": MODEL, "messages": [{"role": "user", "content": "x" * n}], "max_tokens": 2}))
deep = st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n)
bodies = st.one_of(mutated_requests().map(encode), json_values.map(encode), nested().map(encode), big, deep,
                   st.binary(max_size=64))


def check_answer(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("application/json"), resp.text[:300]
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
        assert err["type"] == "invalid_request_error", err
    elif resp.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and not any('"error"' in e for e in events), resp.text[-300:]
    else:
        assert resp.json()["object"] == "chat.completion"


FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(batch=st.lists(bodies, min_size=1, max_size=6))
async def test_the_api_never_answers_client_input_with_a_5xx(batch: list[bytes]) -> None:
    async with api_over(SyntheticBackend(tokens_per_second=10_000, model_name=MODEL), MODEL) as h:
        async with httpx.AsyncClient(timeout=30) as client:
            with trio.fail_after(60):
                for raw in batch:
                    check_answer(await client.post(h.url + "/chat/completions", content=raw,
                                                   headers={"content-type": "application/json"}))
                ok = await client.post(h.url + "/chat/completions",
                                       json={"model": MODEL, "messages": [{"role": "user", "content": "still here"}]})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "still here"
        assert h.failure_rate() == 0.0  # nothing a client sent counted against the worker


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=st.one_of(mutated_requests(), json_values, nested()))
def test_request_parsing_raises_only_validation_errors(body: Any) -> None:
    try:
        req = parse_chat_request(body)
        check_sendable(req)
    except RequestValidationError as exc:
        assert isinstance(exc.field, str) and isinstance(exc.message, str)
        return
    # what the requester would send, the worker parses back to the same request
    again = ChatRequest.from_wire(req.to_wire())
    assert again.messages == req.messages and again.model == req.model
    assert again.temperature == req.temperature or (math.isnan(again.temperature) and math.isnan(req.temperature))


def as_completion(body: Any) -> Any:
    """A chat request's mutation as a completions request: its first message's content becomes ``prompt``."""
    if isinstance(body, dict) and "messages" in body:
        messages = body.pop("messages")
        first = messages[0] if isinstance(messages, list) and messages else messages
        body["prompt"] = first.get("content") if isinstance(first, dict) else first
    return body


completion_bodies = st.one_of(mutated_requests().map(as_completion).map(encode), json_values.map(encode),
                              nested().map(encode), st.binary(max_size=64))


@FUZZ
@given(batch=st.lists(completion_bodies, min_size=1, max_size=6))
async def test_the_completions_endpoint_never_answers_client_input_with_a_5xx(batch: list[bytes]) -> None:
    """Issue 13's ``/v1/completions`` under the same fuzz: 4xx in OpenAI's shape or a text_completion."""
    async with api_over(SyntheticBackend(tokens_per_second=10_000, model_name=MODEL), MODEL) as h:
        async with httpx.AsyncClient(timeout=30) as client:
            with trio.fail_after(60):
                for raw in batch:
                    resp = await client.post(h.url + "/completions", content=raw,
                                             headers={"content-type": "application/json"})
                    if resp.status_code == 200 and not resp.headers["content-type"].startswith("text/event-stream"):
                        assert resp.json()["object"] == "text_completion", resp.text[:300]
                    else:
                        check_answer(resp)
                ok = await client.post(h.url + "/completions", json={"model": MODEL, "prompt": "still here"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "still here"
        assert h.failure_rate() == 0.0
