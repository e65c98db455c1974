"""Issue 13, capabilities pass through: the worker refuses a feature its backend lacks (a 400 naming the field,
never counted against the worker), and tool calls and logprobs a backend produces reach the official openai
client in OpenAI's shapes, streamed (``choices[0].delta.tool_calls``) and not (``message.tool_calls``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
import trio
from openai.lib.streaming.chat import ChatCompletionStreamState

from cocoon_node.inference import ChatRequest, SyntheticBackend, TokenDelta
from cocoon_node.inference.backend import SlotCounter, stream_from_producer
from cocoon_node.inference.extras import ToolCallDelta, make_logprob
from cocoon_node.inference.features import ALL_CAPABILITIES

from .api_harness import api_over

MODEL = "scripted"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class ScriptedBackend:
    """Answers with a fixed tool call (when the request has tools) or with text and logprobs; with
    ``rogue`` it sends a tool call whatever was asked (a worker fault the requester must catch)."""

    kind = "scripted"
    synthetic = False
    capabilities = ALL_CAPABILITIES

    def __init__(self, *, rogue: bool = False) -> None:
        self.model_name = MODEL
        self.max_batch = 2
        self.tokens_generated = 0
        self.rogue = rogue
        self._slots = SlotCounter(2)

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    async def load(self) -> None: ...

    def model_files(self) -> list[Any]:
        return []

    def count_tokens(self, req: ChatRequest) -> int:
        return 7

    def script(self, req: ChatRequest) -> list[TokenDelta]:
        if req.features.tools or self.rogue:
            return [TokenDelta("", 1, tool_calls=(ToolCallDelta(0, "call_a1", "get_weather", '{"city"'),)),
                    TokenDelta("", 2, tool_calls=(ToolCallDelta(0, arguments=': "Oslo"}'),)),
                    TokenDelta("", 1, tool_calls=(ToolCallDelta(1, "call_b2", "get_weather", '{"city": "Bergen"}'),)),
                    TokenDelta("", 0, "tool_calls", 7)]
        top = req.features.top_logprobs or 0
        words = [("Hel", -0.5), ("lo", -0.25), ("!", -1.0)]
        out = []
        for word, lp in words:
            alts = [(word, lp, word.encode()), ("x", -3.0, b"x")][:top]
            out.append(TokenDelta(word, 1, logprobs=(make_logprob(word, lp, word.encode(), alts),)
                                  if req.features.logprobs else ()))
        return [*out, TokenDelta("", 0, "stop", 7)]

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        async def produce(send: trio.MemorySendChannel[TokenDelta]) -> None:
            for delta in self.script(req):
                await send.send(delta)

        async with self._slots.slot(), stream_from_producer(produce) as stream:
            yield stream

    async def aclose(self) -> None: ...


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def ask(url: str, **kw: Any) -> Any:
    return client(url).chat.completions.create(model=kw.pop("model", MODEL),
                                               messages=[{"role": "user", "content": "weather in Oslo?"}], **kw)


async def test_tool_calls_stream_in_openais_shape() -> None:
    async with api_over(ScriptedBackend(), MODEL) as api:
        def streamed() -> tuple[list[Any], Any]:
            state = ChatCompletionStreamState()
            chunks = []
            for chunk in ask(api.url, tools=[WEATHER], stream=True):
                state.handle_chunk(chunk)  # the official client's own accumulator
                chunks.append(chunk)
            return chunks, state.get_final_completion()

        with trio.fail_after(30):
            chunks, final = await trio.to_thread.run_sync(streamed)
    pieces = [c for ch in chunks if ch.choices for c in (ch.choices[0].delta.tool_calls or [])]
    assert pieces[0].index == 0 and pieces[0].id == "call_a1" and pieces[0].type == "function"
    assert pieces[0].function.name == "get_weather"
    assert all(p.id is None and p.function.name is None for p in pieces if p.index == 0 and p is not pieces[0])
    assert chunks[-1].choices[0].finish_reason == "tool_calls" or any(
        ch.choices and ch.choices[0].finish_reason == "tool_calls" for ch in chunks)
    message = final.choices[0].message
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("call_a1", "get_weather", {"city": "Oslo"}), ("call_b2", "get_weather", {"city": "Bergen"})]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_tool_calls_in_a_plain_response() -> None:
    async with api_over(ScriptedBackend(), MODEL) as api:
        with trio.fail_after(30):
            reply = await trio.to_thread.run_sync(lambda: ask(api.url, tools=[WEATHER], tool_choice="required"))
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.id, c.type, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("call_a1", "function", "get_weather", {"city": "Oslo"}),
        ("call_b2", "function", "get_weather", {"city": "Bergen"})]
    assert reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens == 7


async def test_logprobs_reach_the_client_streamed_and_not() -> None:
    async with api_over(ScriptedBackend(), MODEL) as api:
        with trio.fail_after(30):
            reply = await trio.to_thread.run_sync(lambda: ask(api.url, logprobs=True, top_logprobs=2))
            chunks = await trio.to_thread.run_sync(lambda: list(ask(api.url, logprobs=True, top_logprobs=1,
                                                                    stream=True)))
            plain = await trio.to_thread.run_sync(lambda: ask(api.url))
    content = reply.choices[0].logprobs.content
    assert [(e.token, e.logprob, bytes(e.bytes)) for e in content] == [
        ("Hel", -0.5, b"Hel"), ("lo", -0.25, b"lo"), ("!", -1.0, b"!")]
    assert [[t.token for t in e.top_logprobs] for e in content] == [["Hel", "x"], ["lo", "x"], ["!", "x"]]
    assert reply.choices[0].message.content == "Hello!"
    streamed = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert "".join(e.token for e in streamed) == "Hello!" and all(len(e.top_logprobs) == 1 for e in streamed)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(("extra", "field"), [
    ({"logprobs": True}, "logprobs"),
    ({"tools": [WEATHER]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}},
     "response_format"),
])
async def test_a_feature_the_backend_lacks_is_a_400_naming_the_field(extra: dict[str, Any], field: str) -> None:
    """The worker's own check, behind the requester's routing: its announcement claims every feature (stale,
    or wrong), its backend has only seed, and it refuses the rest itself."""
    backend = SyntheticBackend(tokens_per_second=0)
    async with api_over(backend, backend.model_name, capabilities=ALL_CAPABILITIES) as api:
        with trio.fail_after(30):
            with pytest.raises(openai.BadRequestError) as info:
                await trio.to_thread.run_sync(lambda: ask(api.url, model=backend.model_name, **extra))
            # the same worker still serves what it supports (seed included)
            ok = await trio.to_thread.run_sync(lambda: ask(api.url, model=backend.model_name, seed=5))
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == field and error["code"] == "invalid_request"
    assert "synthetic backend does not support" in error["message"]
    assert api.failure_rate() == 0.0  # a client's request never counts against the worker
    assert api.server.stats.rejected == 1 and len(api.server.request_log) == 1  # only the seeded request ran
    assert ok.choices[0].message.content


async def test_a_worker_sending_unrequested_tool_calls_is_at_fault() -> None:
    async with api_over(ScriptedBackend(rogue=True), MODEL) as api:
        with trio.fail_after(30), pytest.raises(openai.APIStatusError) as info:
            await trio.to_thread.run_sync(lambda: ask(api.url))
    assert info.value.status_code == 502 and "did not ask for" in str(info.value.body)
    assert api.failure_rate() > 0
