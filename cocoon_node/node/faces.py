"""The node's faces toward its neighbours: the HTTP surfaces handed in by the layer above, and the
``node.json`` a running node leaves in its data dir (how the cluster, netsim and the CLI find it)."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from cocoon_node.inference import Requester

# trio's own TaskStatus is shadowed by the old trio-typing stubs py-libp2p pulls in.
TaskStatus = Any

NODE_INFO_FILE = "node.json"


class HttpSurfaces(Protocol):
    """The node's HTTP faces, built and served by the layer above (:class:`cocoon_node.api.NodeHttp`)."""

    def requester_app(self, requester: Requester, *, api_key: str, models: Callable[[], list[dict[str, Any]]],
                      channels: Callable[[], Awaitable[dict[str, Any]]],
                      attestation: Callable[[str, bytes], Awaitable[dict[str, Any]]] | None = None,
                      receipts: Any = None) -> Any:
        """The OpenAI-compatible ASGI app over ``requester`` (``attestation``: a worker's fresh, nonce-bound
        attestation for ``GET /v1/cocoon/attestation/{worker}``; ``receipts``: the receipt store)."""
        ...

    def admin_app(self, status: Callable[[], Awaitable[dict[str, Any]]], token: str, *,
                  close_channels: Callable[[str | None], Awaitable[dict[str, Any]]] | None = None) -> Any:
        """The local admin ASGI app (``GET /status`` and ``POST /channels/close`` behind ``token``)."""
        ...

    async def serve(self, app: Any, host: str, port: int, *, task_status: TaskStatus = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Serve ``app`` until cancelled; report the bound base URL through ``task_status``."""
        ...


class AttestedPeerMismatch(Exception):
    """The stream's authenticated remote key is not the key the attestation report binds."""


@dataclass
class NodeInfo:
    peer_id: str
    addrs: list[str]
    admin_url: str
    admin_token: str
    api_url: str | None
    pid: int
    roles: list[str] = field(default_factory=list)
    dashboard_url: str | None = None  # a one-time login link (or the bare page when the listener has no key)



def write_node_info(data_dir: Path, info: NodeInfo) -> None:
    """Write ``node.json`` (0600) through a temporary file, so a reader never sees half of it."""
    path = data_dir / NODE_INFO_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info.__dict__, fh)
    os.replace(tmp, path)


def read_node_info(data_dir: Any) -> dict[str, Any]:
    with open(Path(data_dir) / NODE_INFO_FILE) as fh:
        data: dict[str, Any] = json.load(fh)
    return data
