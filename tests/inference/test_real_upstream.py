"""Issue 13: the openai-upstream backend against a real OpenAI-compatible server nobody here wrote:
llama.cpp's server (llama-cpp-python 0.3.36, built by ``just setup``) serving the same SmolLM2 GGUF offline.

Chat and streaming through the whole request path (worker, stream protocol, requester, API) with the official
openai client, compared with the same server called directly; stop sequences; a client leaving mid-stream
(the upstream stops, the worker's slot frees); a forced tool call, logprobs and JSON mode passed through;
what the server does that the fake in test_upstream.py never did (no usage chunk, [DONE] after an
interrupted stream, context-length failures after a 200, repeated tool-call ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from openai.lib.streaming.chat import ChatCompletionStreamState

from cocoon_node.inference import BackendError, ContextLengthError, OpenAIUpstreamBackend, parse_chat_request
from cocoon_node.inference.features import ALL_CAPABILITIES, JSON_SCHEMA
from tests.waiting import wait_until

from .api_harness import api_over
from .llama_server import MODEL, LlamaServer, llama_server, missing_reason

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with llama_server(tmp_path_factory.mktemp("llama") / "server.log") as srv:
        yield srv


def body(text: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def direct(srv: LlamaServer, **kw: Any) -> dict[str, Any]:
    """The same server called directly (no mesh), not streamed."""
    resp = httpx.post(srv.base_url + "/chat/completions", json=body(**kw), timeout=120)
    resp.raise_for_status()
    out: dict[str, Any] = resp.json()
    return out


def backend_for(srv: LlamaServer, **options: Any) -> OpenAIUpstreamBackend:
    return OpenAIUpstreamBackend(srv.base_url, MODEL, max_batch=1, **options)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


async def test_streamed_chat_through_the_mesh_matches_the_server_called_directly(server: LlamaServer) -> None:
    greedy = {"temperature": 0, "max_tokens": 24}
    expected = await trio.to_thread.run_sync(lambda: direct(server, **greedy))
    backend = backend_for(server)
    await backend.load()
    async with api_over(backend, MODEL) as api:
        def stream() -> list[Any]:
            return list(client(api.url).chat.completions.create(
                messages=body()["messages"], model=MODEL, stream=True, stream_options={"include_usage": True},
                **greedy))

        with trio.fail_after(120):
            chunks = await trio.to_thread.run_sync(stream)
            plain = await trio.to_thread.run_sync(lambda: client(api.url).chat.completions.create(
                messages=body()["messages"], model=MODEL, **greedy))
    await backend.aclose()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = expected["choices"][0]["message"]["content"]
    assert "Paris" in want and text == want and plain.choices[0].message.content == want
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # really streamed
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [expected["choices"][0]["finish_reason"]]
    # This server sends no usage chunk when streaming; the worker counts one token per chunk, which for
    # plain text is exactly the server's own count (from its non-streamed answer).
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert plain.usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert api.server.stats.served == 2 and backend.in_flight == 0


async def test_stop_sequence(server: LlamaServer) -> None:
    full = await trio.to_thread.run_sync(lambda: direct(server, temperature=0, max_tokens=24))
    text = full["choices"][0]["message"]["content"]
    stop = "Paris"
    assert stop in text and not text.startswith(stop)
    backend = backend_for(server)
    await backend.load()
    req = parse_chat_request(body(temperature=0, max_tokens=24, stop=[stop], stream=True))
    with trio.fail_after(120):
        async with backend.generate(req) as deltas:
            got = [d async for d in deltas]
    await backend.aclose()
    assert "".join(d.text for d in got) == text[: text.index(stop)]
    assert got[-1].finish_reason == "stop"
    sent = await trio.to_thread.run_sync(lambda: direct(server, temperature=0, max_tokens=24, stop=[stop]))
    assert sent["choices"][0]["message"]["content"] == text[: text.index(stop)]


async def test_client_leaving_mid_stream_stops_the_upstream_and_frees_the_slot(server: LlamaServer) -> None:
    backend = backend_for(server)
    await backend.load()
    long = {"temperature": 0, "max_tokens": 1500}
    async with api_over(backend, MODEL) as api:
        def read_three_then_leave() -> int:
            stream = client(api.url).chat.completions.create(
                messages=body("Count from 1 to 1000, one number per line.")["messages"], model=MODEL,
                stream=True, **long)
            seen = 0
            for chunk in stream:
                seen += bool(chunk.choices and chunk.choices[0].delta.content)
                if seen == 3:
                    break
            stream.close()  # the client hangs up
            return seen

        before = server.log().count("Disconnected from client")
        with trio.fail_after(120):
            assert await trio.to_thread.run_sync(read_three_then_leave) == 3
            # the upstream noticed the closed connection and stopped generating...
            await wait_until(lambda: server.log().count("Disconnected from client") > before, timeout=60)
            # ...and the worker's slot is free again
            await wait_until(lambda: api.server.stats.in_flight == 0 and backend.in_flight == 0, timeout=60)
            again = await trio.to_thread.run_sync(lambda: client(api.url).chat.completions.create(
                messages=body()["messages"], model=MODEL, temperature=0, max_tokens=8))
    await backend.aclose()
    assert api.server.stats.cancelled == 1 and again.choices[0].message.content
    assert api.failure_rate() == 0.0


async def test_a_forced_tool_call_passes_through_in_openais_shape(server: LlamaServer) -> None:
    """tools + tool_choice naming a function: llama-cpp-python constrains the output to the function's
    parameter schema and streams it as tool-call pieces (repeating id and name on each, which the backend
    passes on only once, or the official client's accumulator would join them)."""
    backend = backend_for(server)
    await backend.load()
    ask = {"messages": body("What is the weather like in Oslo?")["messages"], "model": MODEL, "temperature": 0,
           "max_tokens": 40, "tools": [WEATHER],
           "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    async with api_over(backend, MODEL) as api:
        def streamed() -> tuple[list[Any], Any]:
            state = ChatCompletionStreamState(input_tools=[WEATHER])  # type: ignore[arg-type]
            chunks = []
            for chunk in client(api.url).chat.completions.create(stream=True, **ask):
                state.handle_chunk(chunk)
                chunks.append(chunk)
            return chunks, state.get_final_completion()

        with trio.fail_after(120):
            chunks, final = await trio.to_thread.run_sync(streamed)
            plain = await trio.to_thread.run_sync(lambda: client(api.url).chat.completions.create(**ask))
    await backend.aclose()
    pieces = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert len(pieces) > 2 and pieces[0].id and pieces[0].function.name == "get_weather"
    assert all(p.id is None and p.function.name is None for p in pieces[1:])
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id == pieces[0].id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert final.choices[0].finish_reason == "tool_calls"
    message = plain.choices[0].message
    assert plain.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls[0].function.arguments == call.function.arguments  # greedy: the same call
    assert plain.usage.completion_tokens == len(pieces)


async def test_logprobs_and_json_mode_pass_through(server: LlamaServer) -> None:
    backend = backend_for(server)
    await backend.load()
    async with api_over(backend, MODEL) as api:
        with trio.fail_after(120):
            lp = await trio.to_thread.run_sync(lambda: client(api.url).chat.completions.create(
                messages=body()["messages"], model=MODEL, temperature=0, max_tokens=6, logprobs=True,
                top_logprobs=2))
            js = await trio.to_thread.run_sync(lambda: client(api.url).chat.completions.create(
                messages=body("Reply with a JSON object with one key, capital, for France.")["messages"],
                model=MODEL, temperature=0, max_tokens=100, response_format={"type": "json_object"}))
    await backend.aclose()
    entries = lp.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == lp.choices[0].message.content
    assert len(entries) == lp.usage.completion_tokens == 6  # with logprobs, one entry per token: exact
    assert all(len(e.top_logprobs) >= 2 and e.logprob <= 0 for e in entries)
    assert js.choices[0].finish_reason == "stop"  # the grammar closed the object
    assert isinstance(json.loads(js.choices[0].message.content), dict)


async def test_a_capability_the_operator_did_not_declare_is_refused(server: LlamaServer) -> None:
    """This server has no json_schema response format (it fails such a request); its operator leaves it out of the
    worker's capabilities, and the client gets a 400 naming the field, the worker's standing untouched."""
    raw = await trio.to_thread.run_sync(lambda: httpx.post(server.base_url + "/chat/completions", timeout=60, json=body(
        max_tokens=4, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {}}})))
    assert raw.status_code >= 400 and "json_object" in raw.text  # "Input should be 'text' or 'json_object'"
    backend = backend_for(server, capabilities=ALL_CAPABILITIES - {JSON_SCHEMA})
    await backend.load()
    async with api_over(backend, MODEL) as api:
        with trio.fail_after(120), pytest.raises(openai.BadRequestError) as info:
            await trio.to_thread.run_sync(lambda: client(api.url).chat.completions.create(
                messages=body()["messages"], model=MODEL, max_tokens=4,
                response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}))
    await backend.aclose()
    assert info.value.body["param"] == "response_format"  # type: ignore[index]
    assert api.failure_rate() == 0.0 and len(api.server.request_log) == 0


async def test_a_prompt_beyond_the_context_is_a_context_length_error(server: LlamaServer) -> None:
    """The server fails it only after its 200 and SSE headers (an empty stream); the backend asks once more
    with one token, not streamed, and gets the server's context_length_exceeded."""
    backend = backend_for(server)
    await backend.load()
    req = parse_chat_request(body("word " * 3000, max_tokens=8, stream=True))
    with trio.fail_after(120), pytest.raises(ContextLengthError, match="maximum context length"):
        async with backend.generate(req) as deltas:
            async for _ in deltas:
                pass
    await backend.aclose()
    assert backend.in_flight == 0


async def test_an_interrupted_stream_is_an_error_not_a_completion(tmp_path: Path) -> None:
    """With its default ``interrupt_requests``, the server ends a running stream with ``[DONE]`` and no
    finish_reason when another request arrives; that must not pass for a finished completion."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with llama_server(tmp_path / "interrupting.log", interrupt_requests=True) as srv:
        backend = OpenAIUpstreamBackend(srv.base_url, MODEL, max_batch=2)
        await backend.load()
        first = parse_chat_request(body("Count from 1 to 1000.", temperature=0, max_tokens=1000, stream=True))
        second = parse_chat_request(body(temperature=0, max_tokens=4, stream=True))
        got: list[str] = []
        with trio.fail_after(180):
            with pytest.raises(BackendError, match="interrupted"):
                async with backend.generate(first) as deltas:
                    async for delta in deltas:
                        got.append(delta.text)
                        if len(got) == 3:  # the first one streams: now someone else asks
                            async with trio.open_nursery() as nursery:
                                async def other() -> None:
                                    async with backend.generate(second) as more:
                                        async for _ in more:
                                            pass
                                nursery.start_soon(other)
                                async for delta2 in deltas:
                                    got.append(delta2.text)
        await backend.aclose()
    assert len(got) >= 3


def test_a_missing_or_failed_build_is_a_skip_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`just setup` does not fail when llama.cpp's build does; the tests then skip, giving the build's reason
    (and without any marker, how to build it)."""
    from . import llama_server as ls

    monkeypatch.delenv(ls.OPT_OUT, raising=False)
    monkeypatch.setattr(ls, "SERVER_PYTHON", tmp_path / "llama-server" / "bin" / "python")
    monkeypatch.setattr(ls, "FAILED_MARKER", tmp_path / "llama-server.failed")
    assert "just llama-server" in (ls.missing_reason() or "")
    ls.FAILED_MARKER.write_text("building llama-cpp-python 0.3.36 from source failed\n--- last lines: ...\n")
    reason = ls.missing_reason() or ""
    assert "could not be built" in reason and "from source failed" in reason and "just llama-server" in reason
    monkeypatch.setenv(ls.OPT_OUT, "1")
    assert "opted out" in (ls.missing_reason() or "")
    ls.SERVER_PYTHON.parent.mkdir(parents=True)
    ls.SERVER_PYTHON.touch()
    monkeypatch.delenv(ls.OPT_OUT)
    assert ls.missing_reason() is None
