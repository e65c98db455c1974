"""Issue 7 over real processes sharing one EMULATED chain: vouchers track usage to the nanoton, a worker
or requester SIGKILLed mid-stream restarts from its store and settlement stays exact on chain. Issue 16: the
channel outlives a graceful restart of the requester too, and closes on command."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import trio

from cocoon_node.cluster import Cluster, node_command, worker_args
from cocoon_node.payments.chain.base import ChannelStatus
from cocoon_node.payments.chain.local import LocalChain
from cocoon_node.payments.voucher import OP_CLAIM_PAYOUT, OP_CLOSE_PAYOUT

from .conftest import FAST, api_url, post_chat, wait_until, worker_ids

PP, PC = 1_000, 2_000  # the worker's default prices, nanotons per token
pytestmark = pytest.mark.slow


def channel(status: dict, role: str) -> dict:
    [ch] = [c for c in status["payments"]["channels"] if c["role"] == role]
    return ch


async def stream_until_killed(cluster: Cluster, url: str, victim: str, after_chunks: int) -> int:
    """Start a long streaming request and SIGKILL ``victim`` after some chunks; returns chunks seen."""
    seen = 0
    body = {"model": "synthetic-echo", "stream": True, "max_tokens": 400,
            "messages": [{"role": "user", "content": " ".join(["tok"] * 400)}]}
    try:
        async with httpx.AsyncClient(timeout=60) as client, client.stream(
                "POST", url + "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    seen += 1
                    if seen == after_chunks:
                        await cluster.kill(victim, signal.SIGKILL)
    except httpx.HTTPError:
        pass  # the requester itself was killed
    return seen


async def test_settlement_exact_across_kills(tmp_path: Path) -> None:
    env = {"COCOON_PAYMENTS_CLAIM_THRESHOLD": "1", "COCOON_PAYMENTS_VOUCHER_EVERY": "4"}
    cluster = Cluster(tmp_path, env=env)
    async with cluster.running():
        req_args = ["--requester", "--local-cluster", "--allow-dev-tee", "--api-port", "0"]
        w_args = lambda r: worker_args(r, "synthetic", extra=[*FAST, "--synthetic-rate", "40"])  # noqa: E731
        req = await cluster.start_node("requester", req_args)
        worker = await cluster.start_node("w", w_args(req.addr))

        async def seen() -> bool:
            return worker.peer_id in await worker_ids(cluster)

        await wait_until(seen, timeout=30)
        url = api_url(cluster)
        expected = 0
        for words in (5, 9):
            resp = await post_chat(url, {"model": "synthetic-echo",
                                         "messages": [{"role": "user", "content": " ".join(["a"] * words)}]})
            assert resp.status_code == 200, resp.text
            usage = resp.json()["usage"]
            expected += usage["prompt_tokens"] * PP + usage["completion_tokens"] * PC

        async def settled() -> tuple[dict, dict] | None:
            r, w = channel(await cluster.status("requester"), "payer"), channel(await cluster.status("w"), "payee")
            return (r, w) if r["voucher_cumulative"] == w["voucher_cumulative"] == expected else None

        await wait_until(settled, timeout=30)

        # Worker SIGKILLed mid-stream, restarted from its data dir: same channel, no voucher lost.
        await stream_until_killed(cluster, url, "w", after_chunks=5)
        paid_before_restart = channel(await cluster.status("requester"), "payer")["voucher_cumulative"]
        worker = await cluster.start_node("w", w_args(req.addr))
        await wait_until(seen, timeout=30)
        resp = await post_chat(url, {"model": "synthetic-echo", "messages": [{"role": "user", "content": "b c"}]})
        assert resp.status_code == 200, resp.text

        async def converged() -> tuple[dict, dict] | None:
            r, w = channel(await cluster.status("requester"), "payer"), channel(await cluster.status("w"), "payee")
            return (r, w) if r["voucher_cumulative"] == w["voucher_cumulative"] > paid_before_restart else None

        r_ch, w_ch = await wait_until(converged, timeout=30)
        assert r_ch["address"] == w_ch["address"]  # the same channel survived the kill

        # Requester SIGKILLed mid-stream, restarted: continues its seqnos, the worker accepts its vouchers.
        await stream_until_killed(cluster, url, "requester", after_chunks=5)
        before = channel(await cluster.status("w"), "payee")
        # Ports are ephemeral here, so the restarted requester is told where a live peer listens.
        req = await cluster.start_node("requester", [*req_args, "--bootstrap", cluster.nodes["w"].addr])
        url = api_url(cluster)
        await wait_until(seen, timeout=30)
        resp = await post_chat(url, {"model": "synthetic-echo", "messages": [{"role": "user", "content": "d e f"}]})
        assert resp.status_code == 200, resp.text
        r_ch, w_ch = await wait_until(converged, timeout=30)
        assert r_ch["voucher_seqno"] == w_ch["voucher_seqno"] > before["voucher_seqno"]
        assert (await cluster.status("w"))["payments"]["worker_meter"]["rejected_vouchers"] == 0

        # Settlement: the worker claims (threshold 1 nanoton) exactly its newest voucher, on chain.
        async with LocalChain.connect(cluster.chain_url or "", "observer") as observer:
            async def claimed() -> int | None:
                state = await observer.get_channel_state(w_ch["address"])
                return state.claimed if state.claimed == w_ch["voucher_cumulative"] else None

            assert await wait_until(claimed, timeout=40) == r_ch["voucher_cumulative"]
            state = await observer.get_channel_state(w_ch["address"])
            assert state.deposit == r_ch["deposit"]

            # One more paid request, then the requester shuts down (SIGTERM): the channel stays open (issue 16),
            # and the requester restarted on the same data dir resumes it at start: no close, no second open.
            resp = await post_chat(url, {"model": "synthetic-echo", "messages": [{"role": "user", "content": "g h"}]})
            assert resp.status_code == 200, resp.text
            final = await wait_until(converged, timeout=30)
            await cluster.kill("requester", signal.SIGTERM)
            assert cluster.nodes["requester"].process.returncode == 0  # clean shutdown
            assert (await observer.get_channel_state(w_ch["address"])).status is ChannelStatus.OPEN
            req = await cluster.start_node("requester", [*req_args, "--bootstrap", cluster.nodes["w"].addr])
            url = api_url(cluster)
            st = await cluster.status("requester")
            assert st["payments"]["resume"]["resumed"] == 1 and channel(st, "payer")["address"] == w_ch["address"]
            await wait_until(seen, timeout=30)
            resp = await post_chat(url, {"model": "synthetic-echo", "messages": [{"role": "user", "content": "i"}]})
            assert resp.status_code == 200, resp.text
            before_seqno = final[0]["voucher_seqno"]
            final = await wait_until(converged, timeout=30)
            assert final[0]["voucher_seqno"] == final[1]["voucher_seqno"] > before_seqno  # the sequence goes on
            assert (await cluster.status("requester"))["payments"]["onchain_ops"]["open"] == 0
            assert (await cluster.status("w"))["payments"]["worker_meter"]["rejected_vouchers"] == 0

            # Closed on command (`cocoon-node channels close PEER`, through the running node's admin endpoint):
            # the worker co-signs, and claims plus the close pay it exactly what was vouchered, to the nanoton.
            worker_wallet = (await cluster.status("w"))["payments"]["wallet"]
            done = await trio.run_process(node_command(["channels", "close", worker.peer_id, "--data-dir",
                                                        str(req.data_dir)]), capture_stdout=True, check=False)
            assert done.returncode == 0 and b"closed cooperatively" in done.stdout, done.stdout
            txs = await observer.transactions(w_ch["address"], limit=2000)
            paid = [int(m["amount"]) for t in txs for m in t["outMessages"]
                    if m["to"] == worker_wallet and m["op"] in (OP_CLAIM_PAYOUT, OP_CLOSE_PAYOUT)]
            assert sum(paid) == final[0]["voucher_cumulative"] and len(paid) >= 2, paid
            closed = await observer.get_channel_state(w_ch["address"])
            assert closed.status.name == "CLOSED"
