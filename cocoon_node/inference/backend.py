"""The interface every inference backend implements, and the streaming plumbing they share.

Streaming design: ``generate(req)`` is an async context manager yielding an async iterator of
:class:`TokenDelta`. Inside it a producer (a trio task, or a worker thread for blocking model code) writes
into a *bounded* memory channel, so a slow reader stalls the producer instead of growing a buffer, and
leaving the ``async with`` block (normally, by exception or by cancellation) closes the channel and cancels
the producer. The context manager only returns once the producer has stopped, so a backend slot is never
held by a request whose consumer is gone. An async generator could not give that guarantee: its cleanup runs
whenever the garbage collector gets to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import trio

from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.extras import TokenLogprob, ToolCallDelta

FinishReason = Literal["stop", "length", "tool_calls"]
DEFAULT_BUFFER_SIZE = 4


class BackendError(Exception):
    """A backend could not load or serve a request (model missing, upstream failure, prompt too long)."""


class ContextLengthError(BackendError):
    """The prompt leaves no room for a completion in the model's context window."""


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """A piece of the completion.

    ``token_count`` is how many model tokens this delta accounts for; it may be 1 with empty ``text`` (a
    token whose bytes are held back until a character completes, or the end-of-sequence token), so the sum
    over a stream is the billable completion-token count. Only the last delta has a ``finish_reason``
    (``"stop"``, ``"length"`` or ``"tool_calls"``) and it also carries ``prompt_tokens`` as the backend
    counted them. ``tool_calls`` and ``logprobs`` are set only for requests that asked for them (see
    :mod:`cocoon_node.inference.extras`).
    """

    text: str
    token_count: int
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@runtime_checkable
class Backend(Protocol):
    """A model server the node sells inference from.

    ``max_batch`` requests are served concurrently; further ``generate`` calls wait for a slot.
    ``tokens_generated`` counts every token the model produced (for load reporting and tests) and
    ``in_flight`` the requests currently holding a slot. ``capabilities`` names the optional OpenAI features
    (:data:`cocoon_node.inference.features.ALL_CAPABILITIES`) it serves; the worker refuses a request that
    uses any other (announcing them to requesters for routing is still to come).
    """

    kind: str
    model_name: str
    synthetic: bool
    capabilities: frozenset[str]
    max_batch: int
    tokens_generated: int

    @property
    def in_flight(self) -> int: ...

    async def load(self) -> None: ...

    def model_files(self) -> list[Path]: ...

    def count_tokens(self, req: ChatRequest) -> int: ...

    def generate(self, req: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[TokenDelta]]: ...

    async def aclose(self) -> None: ...


Producer = Callable[[trio.MemorySendChannel[TokenDelta]], Awaitable[None]]


class _DeltaStream:
    """Reads deltas from the channel and turns a producer failure into an exception at the reader."""

    def __init__(self, recv: trio.MemoryReceiveChannel[TokenDelta]) -> None:
        self._recv = recv
        self.error: BaseException | None = None

    def __aiter__(self) -> _DeltaStream:
        return self

    async def __anext__(self) -> TokenDelta:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            if self.error is not None:
                if isinstance(self.error, BackendError):
                    raise self.error from None
                raise BackendError(f"generation failed: {self.error!r}") from self.error
            raise StopAsyncIteration from None


def _unwrap_group(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """Strict nurseries wrap the consumer's own exception; give the caller back the plain one."""
    leaves = list(eg.exceptions)
    while len(leaves) == 1 and isinstance(leaves[0], BaseExceptionGroup):
        leaves = list(leaves[0].exceptions)
    return leaves[0] if len(leaves) == 1 else eg


@asynccontextmanager
async def stream_from_producer(
    produce: Producer, *, buffer_size: int = DEFAULT_BUFFER_SIZE
) -> AsyncIterator[AsyncIterator[TokenDelta]]:
    """Run ``produce(send_channel)`` in a child task and yield the reading side; see the module docstring.

    The producer should return after sending a delta with a ``finish_reason``. If it raises, the reader gets
    a :class:`BackendError` after the deltas already sent. If the reader leaves early, the producer sees
    ``trio.BrokenResourceError`` on its next send, or ``trio.Cancelled`` at its next checkpoint.
    """
    send, recv = trio.open_memory_channel[TokenDelta](buffer_size)
    stream = _DeltaStream(recv)

    async def run() -> None:
        async with send:
            try:
                await produce(send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the reader left; nothing to report
            except Exception as exc:
                stream.error = exc

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            try:
                yield stream
            finally:
                # Synchronous close: an ``await`` here would raise Cancelled (the scope is cancelled or
                # about to be) and that Cancelled would replace, and then swallow, the reader's exception.
                recv.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as eg:
        raise _unwrap_group(eg) from None


class StopTextBuffer:
    """Turns the growing completion text into pieces that are safe to stream.

    Holds back a trailing U+FFFD (a multi-byte character whose remaining tokens have not arrived) and any
    suffix that could still grow into a stop sequence, so text after a stop sequence is never sent.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.emitted = 0
        self._longest = max((len(s) for s in stops), default=0)

    def update(self, text: str) -> tuple[str, bool]:
        """``text`` is the whole completion so far; returns ``(new piece, stop sequence reached)``."""
        start = max(0, self.emitted - self._longest)
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            piece = text[self.emitted : cut]
            self.emitted = max(self.emitted, cut)
            return piece, True
        safe = len(text.rstrip("\ufffd"))
        safe -= self._holdback(text[:safe])
        if safe <= self.emitted:
            return "", False
        piece = text[self.emitted : safe]
        self.emitted = safe
        return piece, False

    def flush(self, text: str) -> str:
        """Everything not yet emitted (the completion ended without reaching a stop sequence)."""
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece

    def _holdback(self, text: str) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


class SlotCounter:
    """Limits concurrent requests to ``max_batch`` and keeps ``in_flight`` up to date."""

    def __init__(self, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._sem = trio.Semaphore(max_batch)
        self.in_flight = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._sem:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
