"""Real node processes behind real NATs (network namespaces + nftables masquerade, netsim/topology.py).

* A worker behind a NAT cannot be dialled back: it finds itself ``private`` and never announces its private
  address; it reserves a slot on the public relay it met in the mesh and announces a /p2p-circuit address.
* A requester behind another NAT (so neither side can dial the other, and hole punching is off) reaches it
  through the relay: a full PAID request is served over the relayed stream, the worker's attestation is
  verified over that path, and the vouchers add up to the nanoton.
* With hole punching on, two endpoint-independent NATs get a direct, hole-punched connection; a worker behind a
  symmetric NAT stays relayed, and its requests are still served.

Skipped, with the reason, where namespaces are unavailable (not root, no nftables).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from netsim.netns import NetnsRun, unavailable_reason
from netsim.nscluster import NamespacedCluster
from netsim.nsforward import Forwarder
from netsim.topology import NatSpec, Network, Topology
from tests.waiting import wait_until

REASON = unavailable_reason()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}")]
FAST = ["--announce-interval", "1", "--announce-ttl", "6"]
PP, PC = 1_000, 2_000


@asynccontextmanager
async def nat_cluster(tmp: Path, places: list[tuple[str, str]], nats: tuple[NatSpec, ...]
                      ) -> AsyncIterator[NamespacedCluster]:
    async with NetnsRun() as run, Forwarder().running() as fwd:
        net = Network(run, Topology(nats=nats))
        await net.build(places)
        cluster = NamespacedCluster(tmp, net, fwd)
        async with cluster.running():
            yield cluster


def worker(relay: str, *extra: str, model: str = "synthetic-echo") -> list[str]:
    return ["--worker", "--backend", "synthetic", "--model", model, "--tee", "dev",
            "--synthetic-rate", "200", "--bootstrap", relay, *FAST, *extra]


def requester(relay: str, *extra: str) -> list[str]:
    return ["--requester", "--allow-dev-tee", "--api-port", "0", "--bootstrap", relay, *extra]


async def listed(cluster: NamespacedCluster, name: str, peer: str, *, path: str | None = None,
                 reachable: bool = False) -> dict[str, Any] | None:
    for w in (await cluster.status(name))["workers"]:
        if w["peer_id"] == peer and (path is None or w["path"] == path) and (w["addrs"] or not reachable):
            return dict(w)
    return None


async def chat(cluster: NamespacedCluster, name: str, words: int, model: str = "synthetic-echo",
               **body: Any) -> httpx.Response:
    url = cluster.nodes[name].ready["api_url"]
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(url + "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": " ".join(["a"] * words)}],
            "max_tokens": 24, **body})


async def test_nat_worker_is_private_relayed_and_serves_a_paid_request(tmp_path: Path) -> None:
    places = [("relay", "public"), ("w", "home"), ("req", "office")]
    async with nat_cluster(tmp_path, places, (NatSpec("home"), NatSpec("office"))) as cluster:
        relay = await cluster.start_node("relay", ["--relay"])
        w = await cluster.start_node("w", worker(relay.addr, "--no-hole-punching"))
        await cluster.start_node("req", requester(relay.addr, "--no-hole-punching"))
        private_ip = cluster.network.hosts["w"].ip

        async def circuit_only() -> dict[str, Any] | None:
            entry = await listed(cluster, "req", w.peer_id)
            return entry if entry and entry["addrs"] and all("/p2p-circuit" in a for a in entry["addrs"]) else None

        entry = await wait_until(circuit_only, timeout=90)
        assert not any(private_ip in a for a in entry["addrs"]), entry["addrs"]
        assert entry["addrs"][0].startswith(relay.addr.split("/p2p/")[0] + "/p2p/" + relay.peer_id + "/p2p-circuit")
        ws = await cluster.status("w")
        reach = ws["connectivity"]["reachability"]
        assert reach["status"] == "private" and reach["confirmed"] == []
        assert cluster.network.hosts["w"].visible_ip in reach["observed_ips"]  # seen at its NAT's address
        assert not any(private_ip in a for a in ws["connectivity"]["advertised"])

        total = 0
        for words in (5, 9):
            resp = await chat(cluster, "req", words)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-cocoon-worker"] == w.peer_id
            assert resp.headers["x-cocoon-path"] == "relayed"
            usage = resp.json()["usage"]
            total += usage["prompt_tokens"] * PP + usage["completion_tokens"] * PC
        rs = await cluster.status("req")
        assert (await listed(cluster, "req", w.peer_id, path="relayed")) is not None
        verdict = rs["attestation"][w.peer_id]
        assert verdict["ok"] and verdict["tee_kind"] == "dev-INSECURE", verdict  # checked before any prompt byte

        async def settled() -> bool:
            payer = [c for c in (await cluster.status("req"))["payments"]["channels"] if c["role"] == "payer"]
            payee = [c for c in (await cluster.status("w"))["payments"]["channels"] if c["role"] == "payee"]
            return bool(payer and payee and payer[0]["voucher_cumulative"] == payee[0]["voucher_cumulative"] == total)

        await wait_until(settled, timeout=30)
        relay_status = (await cluster.status("relay"))["connectivity"]["relay_service"]
        assert relay_status["reservations"] == 1 and relay_status["bytes_relayed"] > 0


async def test_hole_punch_through_eim_nats_and_relay_fallback_under_symmetric_nat(tmp_path: Path) -> None:
    places = [("relay", "public"), ("req", "office"), ("weim", "home"), ("wsym", "cgnat")]
    nats = (NatSpec("office"), NatSpec("home"), NatSpec("cgnat", "symmetric"))
    async with nat_cluster(tmp_path, places, nats) as cluster:
        relay = await cluster.start_node("relay", ["--relay"])
        weim = await cluster.start_node("weim", worker(relay.addr, model="model-eim"))
        wsym = await cluster.start_node("wsym", worker(relay.addr, model="model-sym"))
        await cluster.start_node("req", requester(relay.addr))
        for w in (weim, wsym):  # announced with a way in: their relay circuit
            await wait_until(lambda w=w: listed(cluster, "req", w.peer_id, reachable=True), timeout=90)

        async def path_of(model: str, peer: str) -> str:
            resp = await chat(cluster, "req", 6, model=model)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-cocoon-worker"] == peer
            return str(resp.headers["x-cocoon-path"])

        # The first request goes through the relay; DCUtR then punches through the two EIM NATs.
        paths = [await path_of("model-eim", weim.peer_id)]
        await wait_until(lambda: listed(cluster, "req", weim.peer_id, path="hole-punched"), timeout=60)
        paths.append(await path_of("model-eim", weim.peer_id))
        assert paths[-1] == "hole-punched", paths
        # Through the symmetric NAT every punch misses; requests keep flowing over the relay.
        await path_of("model-sym", wsym.peer_id)

        async def gave_up() -> bool:
            punch = (await cluster.status("req"))["connectivity"]["hole_punching"]
            return punch["by_peer"].get(wsym.peer_id) == "failed"

        await wait_until(gave_up, timeout=90)
        assert await path_of("model-sym", wsym.peer_id) == "relayed"
        assert (await listed(cluster, "req", wsym.peer_id, path="relayed")) is not None
