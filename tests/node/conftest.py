"""Shared helpers for tests that run real ``cocoon-node`` processes on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from cocoon_node.cluster import Cluster

FAST = ["--announce-interval", "1", "--announce-ttl", "4"]


async def statuses(cluster: Cluster, name: str) -> dict[str, Any]:
    return await cluster.status(name)


async def wait_until(predicate, *, timeout: float, interval: float = 0.3) -> Any:
    """Poll an async predicate until it returns something truthy; bounded by ``timeout``."""
    with trio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(interval)


async def worker_ids(cluster: Cluster, requester: str = "requester") -> set[str]:
    return {w["peer_id"] for w in (await cluster.status(requester))["workers"]}


def api_url(cluster: Cluster, name: str = "requester") -> str:
    return str(cluster.nodes[name].ready["api_url"])


async def post_chat(url: str, body: dict[str, Any], timeout: float = 120) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(url + "/v1/chat/completions", json=body)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
