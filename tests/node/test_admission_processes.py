"""Issue 13's must-show over real processes: the official openai client (AsyncOpenAI) sends 32 concurrent chat
requests to a requester in front of 2 workers x max_concurrent 2 (``just run``'s shape, synthetic backend).

- With the default queue every request succeeds (before the admission queue, 28 of them got a 503).
- A prompt beyond a worker's announced context is a 400 ``context_length_exceeded`` decided at the requester.
- A second requester with ``--queue-length 4``: the excess gets 429 with Retry-After, every accepted request
  completes.

Either way served tokens equal paid tokens on every channel, at both ends: the usage of the answers a worker
gave, at its prices, is exactly what the payer's and the payee's vouchers say (nothing lost, nothing charged
twice)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from cocoon_node.cluster import Cluster, worker_args
from cocoon_node.observe.status_table import format_status

from .conftest import FAST, api_url, wait_until, worker_ids

pytestmark = pytest.mark.slow
N = 32


async def burst(url: str) -> list[Any]:
    """N concurrent chat requests; each result is the completion or the openai error it raised."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    results: list[Any] = [None] * N

    async def one(i: int) -> None:
        try:
            results[i] = await client.chat.completions.create(
                model="synthetic-echo", max_tokens=12,
                messages=[{"role": "user", "content": " ".join(f"w{i}x{k}" for k in range(12))}])
        except openai.APIStatusError as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(N):
            nursery.start_soon(one, i)
    await client.close()
    return results


async def check_paid_as_served(cluster: Cluster, requester: str, answers: list[Any]) -> None:
    """Per worker, the cost of its answers (usage x its prices) equals its channel's vouchers at both ends."""
    owed: Counter[str] = Counter()
    for a in answers:
        cost = a.usage.model_extra["cost_nanotons"]
        assert cost["total"] == cost["prompt"] + cost["completion"] > 0
        owed[a.system_fingerprint] += cost["total"]
    workers = {n: cluster.nodes[n].peer_id for n in ("w1", "w2")}

    last: list[Any] = []

    async def settled() -> dict[str, tuple[int, int]] | None:
        payer = {c["peer"]: c for c in (await cluster.status(requester))["payments"]["channels"]
                 if c["role"] == "payer"}
        seen = {}
        for name, peer in workers.items():
            if peer not in payer:
                return None
            # the same channel (one on-chain address) as the worker's store holds it
            payee = [c["voucher_cumulative"] for c in (await cluster.status(name))["payments"]["channels"]
                     if c["role"] == "payee" and c["address"] == payer[peer]["address"]]
            seen[peer] = (payer[peer]["voucher_cumulative"], sum(payee))
        last[:] = [seen]
        return seen if all(seen[p] == (owed[p], owed[p]) for p in workers.values()) else None

    try:
        await wait_until(settled, timeout=60)
    except trio.TooSlowError:
        raise AssertionError(f"paid (payer, payee) {last} != served {dict(owed)}") from None


async def test_32_concurrent_requests_queue_then_429_beyond_the_bound(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    async with cluster.running():
        common = ["--requester", "--local-cluster", "--allow-dev-tee", "--api-port", "0"]
        req = await cluster.start_node("requester", common)
        small = await cluster.start_node("small", [*common, "--bootstrap", req.addr, "--queue-length", "4"])
        for name in ("w1", "w2"):
            await cluster.start_node(name, worker_args(req.addr, "synthetic", extra=[
                *FAST, "--max-concurrent", "2", "--synthetic-rate", "100"]))
        # A worker declaring an 8-token context (the synthetic tokenizer counts words, as the requester does).
        await cluster.start_node("short", worker_args(req.addr, "synthetic", extra=[
            *FAST, "--model", "short-context", "--context-length", "8"]))
        peers = {cluster.nodes[n].peer_id for n in ("w1", "w2")}
        for r in ("requester", "small"):
            await wait_until(lambda r=r: _sees(cluster, r, peers | {cluster.nodes["short"].peer_id}), timeout=60)

        # 400 context_length_exceeded decided by the requester from the announced hardware.context_length:
        # the worker never sees the prompt (served and rejected stay 0).
        long_prompt = " ".join(["word"] * 9)
        with pytest.raises(openai.BadRequestError) as info:
            await openai.AsyncOpenAI(base_url=api_url(cluster) + "/v1", api_key="unused", max_retries=0
                                     ).chat.completions.create(model="short-context",
                                                               messages=[{"role": "user", "content": long_prompt}])
        assert info.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
        assert "maximum context length is 8 tokens" in info.value.body["message"]  # type: ignore[index]
        short = (await cluster.status("short"))["worker"]
        assert short["served"] == 0 and short["rejected"] == 0

        with trio.fail_after(300):
            answers = await burst(api_url(cluster))
        assert not [a for a in answers if isinstance(a, Exception)], answers
        assert all(a.choices[0].message.content for a in answers)
        assert {a.system_fingerprint for a in answers} == peers  # both workers served
        queue = (await cluster.status("requester"))["requester"]["queue"]
        assert queue["admitted"] == N and queue["admitted_after_wait"] >= N - 4 and queue["queued"] == 0
        await check_paid_as_served(cluster, "requester", answers)

        with trio.fail_after(300):
            results = await burst(api_url(cluster, "small"))
        refused = [r for r in results if isinstance(r, Exception)]
        accepted = [r for r in results if not isinstance(r, Exception)]
        assert refused and all(isinstance(r, openai.RateLimitError) for r in refused), refused
        for r in refused:
            assert int(r.response.headers["retry-after"]) >= 1
            assert r.body["code"] == "queue_full" and r.body["type"] == "rate_limit_error"  # type: ignore[index]
        assert len(accepted) >= 4 + 4  # the slots (2 x 2) and the queue (4)
        assert all(a.choices[0].finish_reason in ("stop", "length") for a in accepted)
        queue = (await cluster.status("small"))["requester"]["queue"]
        assert queue["rejected_full"] == len(refused) and queue["admitted"] == len(accepted)
        await check_paid_as_served(cluster, "small", accepted)
        assert "queue    0/4 waiting" in format_status(await cluster.status("small"))  # `cocoon-node status`
        model = await openai.AsyncOpenAI(base_url=api_url(cluster, "small") + "/v1", api_key="unused",
                                         max_retries=0).models.retrieve("synthetic-echo")
        shown = model.model_extra["cocoon"]["attestation"]  # type: ignore[index]
        assert {w["worker"] for w in shown} == peers
        assert all(w["max_concurrent"] == 2 and w["in_flight"] == 0 and "load" in w for w in shown)
        print(f"figures: default queue {N}/{N} ok; --queue-length 4: {len(accepted)} accepted, "
              f"{len(refused)} x 429, retry-after {sorted({r.response.headers['retry-after'] for r in refused})}")
    del small


async def _sees(cluster: Cluster, requester: str, peers: set[str]) -> bool:
    return peers <= await worker_ids(cluster, requester)
