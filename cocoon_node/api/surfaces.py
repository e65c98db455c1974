"""The HTTP surfaces a node serves, in the shape :class:`cocoon_node.node.HttpSurfaces` asks for.

The node layer names no web framework: the process entry points (``cocoon-node run``, netsim's nodes) hand
it one of these, so the layers read api > node and a test can drive the same ASGI apps without a node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cocoon_node.api.admin import ChannelCloser, admin_app
from cocoon_node.api.http import serve_http
from cocoon_node.api.openai_api import openai_app
from cocoon_node.inference import Requester


class NodeHttp:
    """Starlette apps served by hypercorn: the OpenAI-compatible API and the admin endpoint."""

    def requester_app(self, requester: Requester, *, api_key: str, models: Callable[[], list[dict[str, Any]]],
                      channels: Callable[[], Awaitable[dict[str, Any]]],
                      attestation: Callable[[str, bytes], Awaitable[dict[str, Any]]] | None = None,
                      receipts: Any = None) -> Any:
        return openai_app(requester, api_key=api_key, models=models, channels=channels, attestation=attestation,
                          receipts=receipts)

    def admin_app(self, status: Callable[[], Awaitable[dict[str, Any]]], token: str, *,
                  close_channels: ChannelCloser | None = None) -> Any:
        return admin_app(status, token, close_channels=close_channels)

    async def serve(self, app: Any, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await serve_http(app, host, port, task_status=task_status)
