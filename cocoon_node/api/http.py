"""Serve an ASGI app from inside the node's Trio nursery with Hypercorn's trio worker."""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

# trio's own TaskStatus is shadowed by the old trio-typing stubs py-libp2p pulls in.
TaskStatus = Any


async def serve_http(app: Any, host: str, port: int, *, task_status: TaskStatus = trio.TASK_STATUS_IGNORED,
                     max_body: int = 1 << 20) -> None:
    """Run until cancelled; reports the bound base URL (``http://host:port``) through ``task_status``."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("cocoon_node.http")
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 64 * 1024
    config.wsgi_max_body_size = max_body

    async def started_hook(task_status: TaskStatus) -> None:
        await serve(app, config, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(started_hook)
        task_status.started(binds[0].rstrip("/"))
