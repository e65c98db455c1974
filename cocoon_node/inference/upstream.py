"""Forward requests to a local OpenAI-compatible server (vLLM, llama.cpp server, ...).

The worker keeps doing what it does for any backend (validation, billing, streaming to the requester); the
upstream only runs the model. Requests always go upstream with ``stream: true`` and
``stream_options.include_usage`` so the final delta can carry the server's own token counts. Leaving the
``generate`` block closes the HTTP response, which vLLM and llama.cpp treat as an abort.

Token counts: :meth:`OpenAIUpstreamBackend.count_tokens` is only an estimate (about four characters per
token) because the node has no tokenizer for the upstream model; the authoritative prompt and completion
counts arrive in the server's usage chunk and are put on the final :class:`TokenDelta`. Without a usage chunk
each content chunk is counted as one token (llama-cpp-python's server sends no usage chunk: there the count
is of chunks, which may join a multi-byte character's tokens, so it can only fall short, never over-bill),
or with ``logprobs`` requested, one per logprobs entry, which is exact.

What real servers taught (tested against llama-cpp-python's server in ``tests/inference/test_real_upstream.py``):
a stream that ends with ``[DONE]`` but no ``finish_reason`` was interrupted (that server cuts a running stream
when another request arrives, unless started with ``--interrupt_requests False``) and is an error, not a
completion; servers repeat a tool call's ``id`` and ``name`` on every piece, which OpenAI clients would
concatenate, so only the first piece of each call keeps them; ``context_length_exceeded`` answers become
:class:`ContextLengthError`. Optional features are forwarded as they are (:attr:`capabilities` says which
the operator's server handles; all of them by default).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from cocoon_node.inference.backend import (
    DEFAULT_BUFFER_SIZE,
    BackendError,
    ContextLengthError,
    FinishReason,
    SlotCounter,
    TokenDelta,
    stream_from_producer,
)
from cocoon_node.inference.chat import ChatMessage, ChatRequest
from cocoon_node.inference.extras import TokenLogprob, ToolCallDelta, make_logprob
from cocoon_node.inference.features import ALL_CAPABILITIES

_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_MAX_TOOL_CALL_ID = 256
_FINISH: dict[str, FinishReason] = {"length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls"}


class OpenAIUpstreamBackend:
    """Streams chat completions from ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``)."""

    kind = "openai-upstream"
    synthetic = False

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        model_name: str | None = None,
        max_batch: int = 16,
        default_max_tokens: int = 1024,
        timeout: float = 120.0,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        capabilities: Iterable[str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.upstream_model = model
        self.model_name = model_name or model
        self.max_batch = max_batch
        self.default_max_tokens = default_max_tokens
        self.buffer_size = buffer_size
        self.tokens_generated = 0
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._slots = SlotCounter(max_batch)
        self._client: httpx.AsyncClient | None = None
        caps = frozenset(ALL_CAPABILITIES if capabilities is None else capabilities)
        if unknown := caps - ALL_CAPABILITIES:
            raise ValueError(f"unknown capabilities {sorted(unknown)} (known: {', '.join(sorted(ALL_CAPABILITIES))})")
        self.capabilities: frozenset[str] = caps

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    async def load(self) -> None:
        """Open the HTTP client and check that the server answers and lists the model."""
        if self._client is not None:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        client = httpx.AsyncClient(base_url=self.base_url + "/", headers=headers, timeout=self._timeout)
        try:
            resp = await client.get("models")
            resp.raise_for_status()
            listed = {m.get("id") for m in resp.json().get("data", []) if isinstance(m, dict)}
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            await client.aclose()
            raise BackendError(f"upstream {self.base_url} is not usable: {exc}") from exc
        if self.upstream_model not in listed:
            await client.aclose()
            raise BackendError(f"upstream {self.base_url} does not serve model {self.upstream_model!r}")
        self._client = client

    def model_files(self) -> list[Path]:
        return []

    def count_tokens(self, req: ChatRequest) -> int:
        """Estimate only (see the module docstring); the usage on the final delta is authoritative."""
        def chars(m: ChatMessage) -> int:
            return len(m.content) + sum(len(c["function"]["arguments"]) for c in m.tool_calls)

        per_message = sum(_TOKENS_PER_MESSAGE + math.ceil(chars(m) / _CHARS_PER_TOKEN) for m in req.messages)
        return per_message + math.ceil(req.features.wire_bytes() / _CHARS_PER_TOKEN)  # tools, schemas: prompt too

    def _body(self, req: ChatRequest) -> dict[str, Any]:
        body = req.to_wire()
        body.pop("max_completion_tokens", None)
        body["model"] = self.upstream_model
        # ``max_tokens`` is the name every OpenAI-compatible server understands.
        body["max_tokens"] = req.max_tokens if req.max_tokens is not None else self.default_max_tokens
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return body

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        if self._client is None:
            raise BackendError("OpenAIUpstreamBackend.load() has not been called")
        async with (
            self._slots.slot(),
            stream_from_producer(partial(self._produce, self._client, req), buffer_size=self.buffer_size) as stream,
        ):
            yield stream

    async def _produce(
        self, client: httpx.AsyncClient, req: ChatRequest, send: trio.MemorySendChannel[TokenDelta]
    ) -> None:
        state = _StreamState()
        try:
            async with client.stream("POST", "chat/completions", json=self._body(req)) as resp:
                if resp.status_code != 200:
                    _raise_http_error(resp.status_code, (await resp.aread())[:2000])
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event names
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        state.done = True
                        break
                    state.chunks += 1
                    for delta in state.take(json.loads(payload)):
                        self.tokens_generated += delta.token_count
                        await send.send(delta)
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream request failed: {exc}") from exc
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            raise BackendError(f"upstream sent a malformed stream: {exc}") from exc
        if state.finish is None and not state.chunks and not state.done:
            await self._explain_empty_stream(client, req)
        if state.finish is None:
            raise BackendError("upstream stream ended before the completion finished"
                               + (" ([DONE] without a finish_reason: interrupted)" if state.done else ""))
        completion = _usage_int(state.usage, "completion_tokens")
        prompt = _usage_int(state.usage, "prompt_tokens")
        extra = max(0, completion - state.counted) if completion is not None else 0
        self.tokens_generated += extra
        await send.send(TokenDelta("", extra, state.finish, prompt if prompt is not None else self.count_tokens(req)))

    async def _explain_empty_stream(self, client: httpx.AsyncClient, req: ChatRequest) -> None:
        """An empty 200 stream: llama-cpp-python's server fails a too-long prompt only after its SSE headers
        are out, so ask again without streaming and one token to learn whether the prompt fits (a prefill at
        most; the server refuses too-long prompts before generating)."""
        body = {**self._body(req), "stream": False, "max_tokens": 1}
        body.pop("stream_options", None)
        for _ in range(2):  # the pooled connection the failed stream left may have been reset
            try:
                resp = await client.post("chat/completions", json=body)
            except httpx.TransportError:
                continue
            except httpx.HTTPError:
                return
            if resp.status_code != 200:
                _raise_http_error(resp.status_code, resp.content[:2000])
            return

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        else:
            await trio.lowlevel.checkpoint()


class _StreamState:
    """Turns upstream chunks into :class:`TokenDelta` items and remembers what the end needs."""

    def __init__(self) -> None:
        self.counted = 0
        self.finish: FinishReason | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.chunks = 0
        self._named: set[int] = set()  # tool calls whose id and name were passed on

    def take(self, chunk: Any) -> list[TokenDelta]:
        if not isinstance(chunk, dict):
            raise BackendError("upstream sent a chunk that is not an object")
        if "error" in chunk:
            _raise_error_body(chunk["error"])
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            calls = tuple(self._tool_calls(delta.get("tool_calls") or []))
            logprobs = _logprobs(choice.get("logprobs"))
            if text or calls or logprobs:
                tokens = len(logprobs) if logprobs else 1
                self.counted += tokens
                out.append(TokenDelta(text, tokens, tool_calls=calls, logprobs=logprobs))
            if choice.get("finish_reason"):
                self.finish = _FINISH.get(choice["finish_reason"], "stop")
        return out

    def _tool_calls(self, raw: list[Any]) -> Iterable[ToolCallDelta]:
        for i, call in enumerate(raw):
            index = call.get("index", i)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 127:
                raise BackendError(f"upstream sent a tool call index {index!r}")
            fn = call.get("function") or {}
            arguments = fn.get("arguments") or ""
            if index in self._named:  # servers repeat id and name on every piece; clients would join them
                if arguments:
                    yield ToolCallDelta(index, arguments=str(arguments))
                continue
            if not call.get("id") and not fn.get("name"):
                yield ToolCallDelta(index, arguments=str(arguments))
                continue
            self._named.add(index)
            ident = str(call.get("id") or f"call_{index}")[:_MAX_TOOL_CALL_ID]
            yield ToolCallDelta(index, ident, str(fn.get("name") or "")[:64], str(arguments))


def _logprobs(raw: Any) -> tuple[TokenLogprob, ...]:
    content = raw.get("content") if isinstance(raw, dict) else None
    if not content:
        return ()
    out = []
    for entry in content:
        top = [(t.get("token", ""), float(t.get("logprob", 0.0)), _bytes(t.get("bytes")))
               for t in entry.get("top_logprobs") or []]
        out.append(make_logprob(str(entry.get("token", "")), float(entry.get("logprob", 0.0)),
                                _bytes(entry.get("bytes")), top))
    return tuple(out)


def _bytes(raw: Any) -> bytes | None:
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    return None


def _is_context_error(error: Any) -> bool:
    if not isinstance(error, dict):
        return False
    message = str(error.get("message", "")).lower()
    return error.get("code") == "context_length_exceeded" or "context length" in message or "context window" in message


def _raise_error_body(error: Any) -> None:
    if _is_context_error(error):
        raise ContextLengthError(f"upstream: {error.get('message', error)}"[:1000])
    raise BackendError(f"upstream error: {error}"[:1000])


def _raise_http_error(status: int, body: bytes) -> None:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if status in (400, 413) and _is_context_error(error):
        _raise_error_body(error)
    raise BackendError(f"upstream returned HTTP {status}: {body[:300].decode('utf-8', 'replace')}")


def _usage_int(usage: dict[str, Any] | None, key: str) -> int | None:
    value = usage.get(key) if usage else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
