"""The local admin endpoint that ``cocoon-node status`` (and ``cocoon-node channels``) asks; bound to 127.0.0.1
only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cocoon_node.api.guard import bearer_ok

#: ``POST /channels/close``: close the requester's channels to one worker (``{"peer": ID}``) or all (``{}``).
ChannelCloser = Callable[[str | None], Awaitable[dict[str, Any]]]


def admin_app(status: Callable[[], Awaitable[dict[str, Any]]], token: str, *,
              close_channels: ChannelCloser | None = None) -> Starlette:
    """``GET /status`` and ``POST /channels/close`` with the per-run token from the data dir (keeps other local
    users out)."""

    def refused(request: Request) -> JSONResponse | None:
        if not bearer_ok(request.headers.get("authorization"), token):
            return JSONResponse({"error": "missing or wrong admin token"}, status_code=401)
        return None

    async def get_status(request: Request) -> JSONResponse:
        return refused(request) or JSONResponse(await status())

    async def post_close(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        if close_channels is None:
            return JSONResponse({"error": "this node has no payment channels"}, status_code=404)
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            body = None
        peer = body.get("peer") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not (peer is None or isinstance(peer, str)):
            return JSONResponse({"error": 'expected a JSON object {"peer": PEER_ID} or {}'}, status_code=400)
        result = await close_channels(peer)
        return JSONResponse(result, status_code=404 if result.get("error") and not result.get("closed") else 200)

    return Starlette(routes=[Route("/status", get_status), Route("/channels/close", post_close, methods=["POST"])])
