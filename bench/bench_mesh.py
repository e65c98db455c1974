"""Mesh benchmark: N in-process libp2p nodes (real TCP on loopback, Noise, yamux, GossipSub, Kademlia).

For each N: discovery convergence (a new worker joins and announces; time until every node accepted its
announcement), DHT get latency (records put by random nodes, fetched over the network by nodes that do not
hold them; once right after the newcomer joined, once after the process settled), memory per node (RSS
delta / N) and idle CPU per node (process CPU time over an idle window / N / wall time). All N hosts share
one Trio thread, so every figure includes the other hosts' background work: the JSON gives the process CPU
just before each DHT phase (``background_cpu_before_dht_pct_of_core``) and per lookup
(``dht_cpu_ms_per_get``).

Prints one JSON line with every figure, then one human line (all sizes).
    .venv/bin/python bench/bench_mesh.py [--sizes 10,25,50] [--lookups 20] [--idle 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import psutil
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.mesh import WORKERS_TOPIC, Announcement, AnnouncementValidator, Mesh, MeshSettings, RecordRejected


class BenchNamespace:
    """Values must start with the key's last path segment (cheap, but a real strict validator)."""

    namespace = "cocoon-bench"

    def validate(self, key: str, value: bytes) -> None:
        if not value.startswith(key.rsplit("/", 1)[-1].encode()):
            raise RecordRejected("value does not match key")

    def select(self, key: str, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: values[i])


def announcement(mesh: Mesh, seqno: int) -> Announcement:
    now = int(time.time())
    return Announcement(
        peer_id=mesh.peer_id.to_bytes(), addrs=tuple(mesh.listen_addrs()[:1]), model="synthetic-echo",
        model_hash=b"\x01" * 32, backend="synthetic", synthetic=True, price_prompt=1, price_completion=2,
        max_concurrent=4, load=0, protocols=("/cocoon/inference/1.0.0",), tee_kind="dev-INSECURE", seqno=seqno,
        issued_at=now, expires_at=now + 15, payout="", v=1,
    )


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


async def bench_size(n: int, lookups: int, idle_s: float, rng: random.Random, out: dict[str, Any]) -> None:
    proc = psutil.Process(os.getpid())
    rss0 = proc.memory_info().rss
    validators = [AnnouncementValidator() for _ in range(n)]
    seen_at: list[dict[bytes, float]] = [{} for _ in range(n)]
    for i, v in enumerate(validators):
        v.on_accept = lambda a, i=i: seen_at[i].setdefault(a.peer_id, time.perf_counter())
    async with AsyncExitStack() as stack:
        meshes: list[Mesh] = []
        t_setup = time.perf_counter()
        for i in range(n):
            # Bootstrap to the first node and one random earlier node, like workers given a peer list.
            boots = [meshes[0].listen_addrs()[0]] if meshes else []
            if len(meshes) > 1:
                boots.append(rng.choice(meshes[1:]).listen_addrs()[0])
            settings = MeshSettings(bootstrap=tuple(boots), local_cluster=True, topics=(WORKERS_TOPIC,))
            mesh = Mesh(create_new_key_pair(), settings, namespaces=[BenchNamespace()],
                        topic_validators={WORKERS_TOPIC: validators[i]})
            await stack.enter_async_context(mesh.start())
            meshes.append(mesh)
        with trio.fail_after(120):
            while not all(m.topic_peers(WORKERS_TOPIC) > 0 for m in meshes):
                await trio.sleep(0.1)
        out["setup_s"] = round(time.perf_counter() - t_setup, 2)
        await trio.sleep(3)  # let connection top-up and meshes settle
        out["rss_per_node_mb"] = round((proc.memory_info().rss - rss0) / n / 2**20, 2)
        out["connections_per_node"] = round(statistics.mean(len(m.connected_peers()) for m in meshes), 1)

        # Idle CPU: nothing published, only heartbeats, keep-alive and routing-table refreshes.
        cpu0, wall0 = proc.cpu_times(), time.perf_counter()
        await trio.sleep(idle_s)
        cpu1, wall1 = proc.cpu_times(), time.perf_counter()
        busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        out["idle_cpu_total_pct_of_core"] = round(100 * busy / (wall1 - wall0), 2)
        out["idle_cpu_per_node_pct_of_core"] = round(100 * busy / (wall1 - wall0) / n, 3)

        # Discovery: a fresh worker joins (bootstrapping to two random nodes) and announces every second.
        # It serves the DHT like every other node, so it needs the bench namespace too (without it, it refused
        # every record the DHT phase stored at it: one of the k closest peers short for some keys).
        newcomer = Mesh(create_new_key_pair(), MeshSettings(
            bootstrap=tuple(m.listen_addrs()[0] for m in rng.sample(meshes, 2)), local_cluster=True,
            topics=(WORKERS_TOPIC,)), namespaces=[BenchNamespace()])
        t_join = time.perf_counter()
        await stack.enter_async_context(newcomer.start())
        with trio.fail_after(30):
            while newcomer.topic_peers(WORKERS_TOPIC) == 0:
                await trio.sleep(0.05)
        t_pub = time.perf_counter()
        key = newcomer.peer_id.to_bytes()
        seqno = 1
        with trio.fail_after(120):
            while not all(key in s for s in seen_at):
                sealed = announcement(newcomer, seqno).seal(newcomer._key_pair.private_key)
                await newcomer.publish(WORKERS_TOPIC, sealed)
                seqno += 1
                with trio.move_on_after(1.0):
                    while not all(key in s for s in seen_at):
                        await trio.sleep(0.01)
        last = max(s[key] for s in seen_at)
        out["discovery_from_join_s"] = round(last - t_join, 3)
        out["discovery_from_first_publish_s"] = round(last - t_pub, 3)
        out["discovery_publishes_needed"] = seqno - 1
        firsts = sorted(s[key] - t_pub for s in seen_at)
        out["discovery_median_node_s"] = round(statistics.median(firsts), 3)

        # DHT, twice: right after the newcomer joined (its start-up dials and refreshes, and the last nodes',
        # still load the process: a stress case, since here every host shares one core), then once the
        # process has settled (what a node with its own CPU sees; reported under "settled").
        out.update(await dht_phase(meshes, lookups, rng, proc))
        out["settle_wait_s"] = await settle(proc)
        out["settled"] = await dht_phase(meshes, lookups, rng, proc)


async def cpu_pct(proc: psutil.Process, seconds: float) -> float:
    """Process CPU over the next ``seconds``, in % of one core."""
    c0, w0 = proc.cpu_times(), time.perf_counter()
    await trio.sleep(seconds)
    c1, w1 = proc.cpu_times(), time.perf_counter()
    return 100 * ((c1.user - c0.user) + (c1.system - c0.system)) / (w1 - w0)


async def settle(proc: psutil.Process, below_pct: float = 30.0, limit_s: float = 90.0) -> float:
    """Wait until the process uses less than ``below_pct`` of a core over 2 s (at most ``limit_s``)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s and await cpu_pct(proc, 2.0) >= below_pct:
        pass
    return round(time.perf_counter() - t0, 1)


async def dht_phase(meshes: list[Mesh], lookups: int, rng: random.Random, proc: psutil.Process) -> dict[str, Any]:
    """Put by a random node, get (timed) by a node that does not hold the record, ``lookups`` times."""
    out: dict[str, Any] = {}
    # Background load the lookups compete with (all other hosts' heartbeats, refreshes, dials).
    out["background_cpu_before_dht_pct_of_core"] = round(await cpu_pct(proc, 3.0), 1)
    gets, puts, misses = [], [], 0
    local_copies: list[int] = []
    rpcs_before = sum(m.lookup.stats.rpcs for m in meshes if m.lookup is not None)
    network_before = sum(m.lookup.stats.network_hits for m in meshes if m.lookup is not None)
    get_cpu = 0.0
    for k in range(lookups):
        a, b = rng.sample(meshes, 2)
        key_s = f"/cocoon-bench/k{k}x{rng.randrange(1 << 30)}"
        t = time.perf_counter()
        with trio.fail_after(30):
            await a.put_record(key_s, key_s.rsplit("/", 1)[-1].encode() + b"-value")
        puts.append(time.perf_counter() - t)
        # Every put also lands in the putter's and up to k=20 closest nodes' local stores, and a get
        # answers from the local store first. Measure a network lookup: ask a node that does not
        # hold the record, or evict it from the asker's store (bench-only use of KadDHT internals).
        kb = key_s.encode()
        holders = [m for m in meshes if m.dht is not None and kb in m.dht.value_store.store]
        local_copies.append(len(holders))
        others = [m for m in meshes if m not in holders]
        if others:
            b = rng.choice(others)
        elif b.dht is not None:
            b.dht.value_store.store.pop(kb, None)
        if b.lookup is not None:
            b.lookup.forget(key_s)
        c0, t = proc.cpu_times(), time.perf_counter()
        with trio.fail_after(30):
            got = await b.get_record(key_s)
        gets.append(time.perf_counter() - t)
        c1 = proc.cpu_times()
        get_cpu += (c1.user - c0.user) + (c1.system - c0.system)
        misses += got is None
    out["dht_get_ms"] = {"p50": round(pct(gets, 0.5) * 1000, 1), "p95": round(pct(gets, 0.95) * 1000, 1),
                         "max": round(max(gets) * 1000, 1)}
    out["dht_put_ms"] = {"p50": round(pct(puts, 0.5) * 1000, 1), "p95": round(pct(puts, 0.95) * 1000, 1)}
    out["dht_misses"] = misses
    # Process CPU per timed get: both ends of every RPC run in this process, so a get whose CPU time is
    # close to its latency is bound by py-libp2p's per-RPC work (plus the background above), not waiting.
    out["dht_cpu_ms_per_get"] = round(1000 * get_cpu / lookups, 1)
    out["dht_rpcs_per_get"] = round(
        (sum(m.lookup.stats.rpcs for m in meshes if m.lookup is not None) - rpcs_before) / lookups, 1)
    out["dht_gets_answered_from_network"] = (
        sum(m.lookup.stats.network_hits for m in meshes if m.lookup is not None) - network_before)
    out["dht_nodes_holding_each_record_p50"] = statistics.median(local_copies)
    return out


async def main_async(sizes: list[int], lookups: int, idle_s: float, seed: int) -> list[dict[str, Any]]:
    results = []
    for n in sizes:
        out: dict[str, Any] = {"nodes": n}
        try:
            await bench_size(n, lookups, idle_s, random.Random(seed + n), out)
        except Exception as exc:  # py-libp2p teardown of many hosts can raise; keep what was measured
            out["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        results.append(out)
        print(f"size {n} done: {out}", file=sys.stderr, flush=True)
        await trio.sleep(1)
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10,25,50")
    p.add_argument("--lookups", type=int, default=20)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    sizes = [int(x) for x in args.sizes.split(",")]
    results = trio.run(main_async, sizes, args.lookups, args.idle, args.seed)
    print(json.dumps({"bench": "mesh", "cpus": os.cpu_count(), "results": results}))
    parts = []
    for r in results:
        if "dht_get_ms" not in r:
            parts.append(f"{r['nodes']} nodes incomplete ({r.get('error')})")
            continue
        settled = r.get("settled", {}).get("dht_get_ms", {})
        parts.append(
            f"{r['nodes']} nodes: DHT get p50 {r['dht_get_ms']['p50']} / p95 {r['dht_get_ms']['p95']} ms just after "
            f"a join (background {r['background_cpu_before_dht_pct_of_core']}% of a core), "
            f"{settled.get('p50')} / {settled.get('p95')} ms settled; discovery "
            f"{r['discovery_from_first_publish_s']} s after first publish, idle "
            f"{r['idle_cpu_per_node_pct_of_core']}% of a core/node, {r['rss_per_node_mb']} MB/node")
    print("mesh, all nodes in one process: " + "; ".join(parts))


if __name__ == "__main__":
    main()
