"""The requester's side of an event stream: the channel the API reads (raising the producer's error once the
events run out) and hanging up a stream no prompt was written to."""

from __future__ import annotations

from typing import Any

import trio


async def discard_stream(stream: Any) -> None:
    """Hang up a stream no prompt was written to (never raises: the worker may be gone already)."""
    with trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception:
            pass


class FailingReceiver:
    """A receive channel that raises the producer's error once the events run out."""

    def __init__(self, recv: trio.MemoryReceiveChannel[Any], failure: list[BaseException]) -> None:
        self._recv = recv
        self._failure = failure

    async def receive(self) -> Any:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            if self._failure:
                raise self._failure[0] from None
            raise

    def receive_nowait(self) -> Any:
        """The next event if one is already queued (raises ``trio.WouldBlock`` otherwise)."""
        return self._recv.receive_nowait()

    def __aiter__(self) -> FailingReceiver:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
