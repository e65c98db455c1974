"""One bounded way for tests to wait on state they cannot get an event for (another process, a store)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import trio

POLL_INTERVAL = 0.02


async def wait_until(predicate: Callable[[], Any | Awaitable[Any]], *, timeout: float,
                     interval: float = POLL_INTERVAL) -> Any:
    """Re-check ``predicate`` (sync or async) until it returns something truthy, which is returned.

    Raises ``trio.TooSlowError`` after ``timeout`` seconds. The interval only paces re-checks; no test
    outcome depends on how long anything takes.
    """
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await trio.sleep(interval)
