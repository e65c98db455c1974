"""Answer a request unless its client goes away first: then the work is cancelled at once.

A non-streamed request may wait in the admission queue, or on a worker, long after its client hung up.
Hypercorn tells the app with an ``http.disconnect`` message rather than by cancelling it, so the handler
watches for that message beside the work and cancels the work (leaving the queue, cancelling the request on
the worker) when it comes (issue 13).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from starlette.requests import Request
from starlette.responses import Response

#: What the log and the metrics see for a request whose client left (nginx's convention; never sent).
CLIENT_CLOSED = 499


async def unless_client_gone(request: Request, work: Callable[[], Awaitable[Response]]) -> Response:
    """``work()``'s response, or an unsent 499 once the client disconnected (the work cancelled)."""
    done: list[Response] = []
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        done.append(await work())
        nursery.cancel_scope.cancel()
    return done[0] if done else Response(status_code=CLIENT_CLOSED)
