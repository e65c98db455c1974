"""A model-free backend for tests, simulations and load generation.

It is announced as synthetic (``synthetic = True``) so no requester pays for it by mistake. The reply echoes
the words of the last user message (or a fixed lorem text when there are none), one word per token, at a
configured rate; everything is deterministic so tests can assert on exact output.

Pacing works like a batched decoder on a GPU: decode steps run on one clock, and every stream in flight gets
its next token at the same step. A stream's first token comes at the first step at least one interval after
it started (the clock restarts when the backend was idle, so a lone stream gets tokens at exactly the
configured rate). One timer per step serves every stream: with a timer per stream and token, the pacing
alone cost a worker a third of its CPU at 32 streams, which no real batched backend spends.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from cocoon_node.inference.backend import (
    DEFAULT_BUFFER_SIZE,
    FinishReason,
    SlotCounter,
    StopTextBuffer,
    TokenDelta,
    stream_from_producer,
)
from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.features import SEED
from cocoon_node.inference.tokencount import SYNTHETIC_TOKENIZER

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua."
).split()


class SyntheticBackend:
    """Deterministic word-per-token generator paced by a shared decode-step clock (``tokens_per_second=0``:
    no pacing)."""

    kind = "synthetic"
    synthetic = True
    capabilities = frozenset({SEED})  # the echo is deterministic whatever the seed
    tokenizer_hash = SYNTHETIC_TOKENIZER  # announced: requesters count its words themselves

    def __init__(
        self,
        tokens_per_second: float = 0.0,
        model_name: str = "synthetic-echo",
        *,
        max_batch: int = 8,
        default_max_tokens: int = 256,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        if tokens_per_second < 0:
            raise ValueError("tokens_per_second must not be negative")
        self.tokens_per_second = tokens_per_second
        self.model_name = model_name
        self.max_batch = max_batch
        self.default_max_tokens = default_max_tokens
        self.buffer_size = buffer_size
        self.tokens_generated = 0
        self._slots = SlotCounter(max_batch)
        self._epoch = 0.0  # trio time of decode step 0
        self._steps: dict[int, trio.Event] = {}  # step number -> set when that step has come

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    async def load(self) -> None:
        await trio.lowlevel.checkpoint()

    def model_files(self) -> list[Path]:
        return []

    def count_tokens(self, req: ChatRequest) -> int:
        """Whitespace words of every message: the synthetic model's notion of a token."""
        return sum(len(m.content.split()) for m in req.messages)

    def reply_words(self, req: ChatRequest) -> list[str]:
        """The full (uncapped) reply, one entry per token; public so tests can predict output."""
        for message in reversed(req.messages):
            if message.role == "user" and message.content.split():
                return message.content.split()
        return list(LOREM)

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        async with (
            self._slots.slot(),
            # The model's clock starts at the call, not when the producer task first runs: a caller that writes
            # something before iterating (the worker's accept) must not delay the first token.
            stream_from_producer(partial(self._produce, req, trio.current_time()),
                                 buffer_size=self.buffer_size) as stream,
        ):
            yield stream

    def _first_step(self, start: float, interval: float) -> int:
        """The first decode step at least one interval after ``start``."""
        if self._slots.in_flight <= 1:  # idle until now: the clock starts with this stream
            self._epoch = start
        return max(1, math.ceil((start + interval - self._epoch) / interval - 1e-9))

    async def _until_step(self, step: int, interval: float) -> None:
        """Wait for decode step ``step``: the first stream to need it keeps the timer, the others wait on it."""
        event = self._steps.get(step)
        if event is not None:
            await event.wait()
            due = self._epoch + step * interval
            if trio.current_time() < due:  # its timer's owner was cancelled early; wait on our own
                await trio.sleep_until(due)
            return
        event = self._steps[step] = trio.Event()
        try:
            await trio.sleep_until(self._epoch + step * interval)
        finally:
            if self._steps.get(step) is event:
                del self._steps[step]
            event.set()

    async def _produce(self, req: ChatRequest, start: float, send: trio.MemorySendChannel[TokenDelta]) -> None:
        words = self.reply_words(req)
        limit = req.max_tokens if req.max_tokens is not None else self.default_max_tokens
        prompt_tokens = self.count_tokens(req)
        interval = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        step = self._first_step(start, interval) if interval else 0
        text = ""
        buffer = StopTextBuffer(req.stop)
        for i in range(min(limit, len(words))):
            if interval:
                await self._until_step(step + i, interval)
            else:
                await trio.lowlevel.checkpoint()
            self.tokens_generated += 1
            text += words[i] if i == 0 else " " + words[i]
            piece, stopped = buffer.update(text)
            if stopped:
                await send.send(TokenDelta(piece, 1, "stop", prompt_tokens))
                return
            if i + 1 == len(words) or i + 1 == limit:
                reason: FinishReason = "stop" if i + 1 == len(words) else "length"
                await send.send(TokenDelta(piece + buffer.flush(text), 1, reason, prompt_tokens))
                return
            await send.send(TokenDelta(piece, 1))

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
