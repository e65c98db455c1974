"""Forward requests to a local OpenAI-compatible server (vLLM, llama.cpp server, ...).

The worker keeps doing what it does for any backend (validation, billing, streaming to the requester); the
upstream only runs the model. Requests always go upstream with ``stream: true`` and
``stream_options.include_usage`` so the final delta can carry the server's own token counts. Leaving the
``generate`` block closes the HTTP response, which vLLM and llama.cpp treat as an abort.

Token counts: :meth:`OpenAIUpstreamBackend.count_tokens` is only an estimate (about four characters per
token) because the node has no tokenizer for the upstream model; the authoritative prompt and completion
counts arrive in the server's usage chunk and are put on the final :class:`TokenDelta`. Without a usage chunk
each content chunk is counted as one token.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from cocoon_node.inference.backend import (
    DEFAULT_BUFFER_SIZE,
    BackendError,
    SlotCounter,
    TokenDelta,
    stream_from_producer,
)
from cocoon_node.inference.chat import ChatRequest

_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4


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
        return sum(_TOKENS_PER_MESSAGE + math.ceil(len(m.content) / _CHARS_PER_TOKEN) for m in req.messages)

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
        counted = 0
        finish: str | None = None
        usage: dict[str, Any] | None = None
        done = False
        try:
            async with client.stream("POST", "chat/completions", json=self._body(req)) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread())[:300].decode("utf-8", "replace")
                    raise BackendError(f"upstream returned HTTP {resp.status_code}: {detail}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event names
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(payload)
                    if not isinstance(chunk, dict):
                        raise BackendError("upstream sent a chunk that is not an object")
                    if "error" in chunk:
                        raise BackendError(f"upstream error: {chunk['error']}")
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            counted += 1
                            self.tokens_generated += 1
                            await send.send(TokenDelta(text, 1))
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream request failed: {exc}") from exc
        except (ValueError, AttributeError, TypeError) as exc:
            raise BackendError(f"upstream sent a malformed stream: {exc}") from exc
        if finish is None and not done:
            raise BackendError("upstream stream ended before the completion finished")
        completion = _usage_int(usage, "completion_tokens")
        prompt = _usage_int(usage, "prompt_tokens")
        extra = max(0, completion - counted) if completion is not None else 0
        await send.send(
            TokenDelta(
                "",
                extra,
                "length" if finish == "length" else "stop",
                prompt if prompt is not None else self.count_tokens(req),
            )
        )

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        else:
            await trio.lowlevel.checkpoint()


def _usage_int(usage: dict[str, Any] | None, key: str) -> int | None:
    value = usage.get(key) if usage else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
