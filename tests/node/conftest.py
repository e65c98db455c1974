"""Shared helpers for tests that run real ``cocoon-node`` processes on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from cocoon_node.cluster import Cluster
from tests.waiting import wait_until

FAST = ["--announce-interval", "1", "--announce-ttl", "4"]
__all__ = ["FAST", "api_url", "post_chat", "wait_until", "worker_ids"]


async def statuses(cluster: Cluster, name: str) -> dict[str, Any]:
    return await cluster.status(name)


async def worker_ids(cluster: Cluster, requester: str = "requester") -> set[str]:
    return {w["peer_id"] for w in (await cluster.status(requester))["workers"]}


def api_url(cluster: Cluster, name: str = "requester") -> str:
    return str(cluster.nodes[name].ready["api_url"])


async def post_chat(url: str, body: dict[str, Any], timeout: float = 120) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(url + "/v1/chat/completions", json=body)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
