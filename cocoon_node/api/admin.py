"""The local admin endpoint that ``cocoon-node status`` asks; bound to 127.0.0.1 only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cocoon_node.api.guard import bearer_ok


def admin_app(status: Callable[[], Awaitable[dict[str, Any]]], token: str) -> Starlette:
    """``GET /status`` with the per-run token from the data dir (keeps other local users out)."""

    async def get_status(request: Request) -> JSONResponse:
        if not bearer_ok(request.headers.get("authorization"), token):
            return JSONResponse({"error": "missing or wrong admin token"}, status_code=401)
        return JSONResponse(await status())

    return Starlette(routes=[Route("/status", get_status)])
