"""Issue 17 must-show: scrape ``/metrics`` of running nodes, parse it with prometheus_client's parser, and
check that what the test did moved the counters by exactly that much (one request -> one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cocoon_node.cluster import Cluster, worker_args
from tests.node.conftest import FAST, api_url, post_chat, wait_until, worker_ids

pytestmark = pytest.mark.slow
MODEL = "synthetic-echo"


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as (name, labels) -> value, from the official parser (fails on malformed exposition)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(url: str, token: str = "") -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.get(url + "/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(resp.text)


def admin(node_dir: Path) -> tuple[str, str]:
    info: dict[str, Any] = json.loads((node_dir / "node.json").read_text())
    return info["admin_url"], info["admin_token"]


async def test_scraped_counters_move_by_what_the_test_did(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)  # with payments: a shared EMULATED chain (dev only)
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0"])
        worker = await cluster.start_node("w", worker_args(req.addr, "synthetic", extra=FAST))
        url = api_url(cluster)

        async def seen() -> bool:
            return worker.peer_id in await worker_ids(cluster)

        await wait_until(seen, timeout=60)
        # A first request opens the payment channel and warms the path; the counted one follows.
        warm = await post_chat(url, {"model": MODEL, "messages": [{"role": "user", "content": "warm up"}]})
        assert warm.status_code == 200, warm.text
        worker_admin, worker_token = admin(worker.data_dir)
        before, w_before = await scrape(url), await scrape(worker_admin, worker_token)

        resp = await post_chat(url, {"model": MODEL, "messages": [{"role": "user", "content": "one two three"}],
                                     "max_tokens": 5})
        assert resp.status_code == 200, resp.text
        usage = resp.json()["usage"]
        unknown = await post_chat(url, {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
        assert unknown.status_code == 404  # model_not_found (issue 13's error contract)
        after, w_after = await scrape(url), await scrape(worker_admin, worker_token)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        chat = {"endpoint": "/v1/chat/completions"}
        assert moved("cocoon_http_requests_total", **chat, model=MODEL, status="200") == 1
        # a model nobody offers is not a label value of its own
        assert moved("cocoon_http_requests_total", **chat, model="unknown", status="404") == 1
        assert value(after, "cocoon_http_requests_total", **chat, model="no-such-model", status="404") == 0
        assert moved("cocoon_requester_requests_total", outcome="completed") == 1
        # the unknown model is refused (404) before any attempt: no failed request, no worker blamed
        assert moved("cocoon_requester_requests_total", outcome="failed") == 0
        assert moved("cocoon_time_to_first_token_seconds_count", model=MODEL) == 1
        assert moved("cocoon_prompt_tokens_total", model=MODEL) == usage["prompt_tokens"]
        assert moved("cocoon_completion_tokens_total", model=MODEL) == usage["completion_tokens"] > 0
        assert moved("cocoon_inter_token_latency_seconds_count", model=MODEL) >= 1
        assert value(after, "cocoon_workers") == 1
        assert value(after, "cocoon_workers_verified") == 1
        assert value(after, "cocoon_workers_dev_insecure") == 1
        assert value(after, "cocoon_attestation_verdicts_total", result="verified", reason="ok") >= 1
        assert value(after, "cocoon_gossip_messages_accepted_total") >= 1
        assert value(after, "cocoon_dht_lookups_total") >= 1
        assert value(after, "cocoon_dht_lookup_duration_seconds_count") >= 1
        # payments: one channel, vouchers signed by the requester, verified by the worker
        assert value(after, "cocoon_payment_channels", role="payer", status="open") == 1
        assert moved("cocoon_payment_vouchers_signed_total") >= 1
        assert moved("cocoon_payment_spent_nanotons") > 0
        assert value(after, "cocoon_payment_onchain_operations_total", operation="payer_open") == 1
        # the worker's own listener: its served counter moved by the one request, vouchers it verified too
        assert w_after[("cocoon_worker_requests_total", frozenset({("outcome", "served")}))] - \
            w_before[("cocoon_worker_requests_total", frozenset({("outcome", "served")}))] == 1
        assert value(w_after, "cocoon_payment_vouchers_verified_total", result="accepted") > \
            value(w_before, "cocoon_payment_vouchers_verified_total", result="accepted")
        assert value(w_after, "cocoon_payment_earned_nanotons") == value(after, "cocoon_payment_spent_nanotons")
        assert value(w_after, "cocoon_worker_capacity") >= 1

        # The admin listener wants its token; the API port, without an API key, does not.
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(worker_admin + "/metrics")).status_code == 401
            assert (await client.get(worker_admin + "/metrics",
                                     headers={"authorization": "Bearer wrong"})).status_code == 401
