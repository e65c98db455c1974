"""Attestation reports in the DHT: publish and fetch-and-verify latency on N in-process nodes (default 25).

Every node runs a real py-libp2p host on loopback with the strict attestation namespace validator. Each of
W workers publishes a signed dev-INSECURE report under /cocoon-att/PEER; random other nodes then fetch and
verify them through the same AttestationGate requesters use (verdict and lookup caches bypassed per lookup).
A put stores the report at up to 20 nodes, so a random reader usually holds it already: each fetch is made
by a node that does not hold it (or, when every node does, one whose copy is set aside for that fetch), so
the figure is a network lookup, not a local read. All nodes share one process (and one core).

    .venv/bin/python bench/bench_attestation_dht.py [--nodes 25] [--workers 5] [--lookups 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import psutil
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.attestation import ANY, TEE_DEV, Policy
from cocoon_node.mesh import Mesh, MeshSettings
from cocoon_node.node.attest import AttestationGate, AttestationNamespace, ReportPublisher, report_key


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(nodes: int, workers: int, lookups: int) -> dict:
    proc = psutil.Process(os.getpid())
    policy = Policy(tee_kinds=frozenset({TEE_DEV}), image_hashes=ANY, mrtds=ANY, model_hashes=ANY)
    async with AsyncExitStack() as stack:
        meshes: list[Mesh] = []
        for _ in range(nodes):
            bootstrap = (meshes[0].listen_addrs()[0],) if meshes else ()
            mesh = Mesh(create_new_key_pair(), MeshSettings(bootstrap=bootstrap, local_cluster=True),
                        namespaces=[AttestationNamespace()])
            await stack.enter_async_context(mesh.start())
            meshes.append(mesh)
        await trio.sleep(3)  # routing tables fill
        tmp = Path(tempfile.mkdtemp(prefix="bench-att-"))
        publish_ms = []
        published = []
        for i, mesh in enumerate(random.sample(meshes, workers)):
            pub = ReportPublisher(mesh, mesh._key_pair, tee=TEE_DEV, model_name="m", model_hash=b"\x01" * 32,
                                  data_dir=tmp / str(i))
            record = pub.make_report()
            t0 = time.perf_counter()
            with trio.fail_after(30):
                await mesh.put_record(report_key(mesh.peer_id), record)
            publish_ms.append((time.perf_counter() - t0) * 1000)
            published.append(mesh)
        c0, w0 = proc.cpu_times(), time.perf_counter()
        await trio.sleep(3)
        c1, w1 = proc.cpu_times(), time.perf_counter()
        background = 100 * ((c1.user - c0.user) + (c1.system - c0.system)) / (w1 - w0)
        fetch_ms, ok, set_aside = [], 0, 0
        network_before = sum(m.lookup.stats.network_hits for m in meshes if m.lookup is not None)
        for _ in range(lookups):
            worker = random.choice(published)
            key = report_key(worker.peer_id)
            others = [m for m in meshes if m is not worker]
            readers = [m for m in others if m.dht is not None and key.encode() not in m.dht.value_store.store]
            reader = random.choice(readers or others)
            assert reader.dht is not None and reader.lookup is not None
            own_copy = reader.dht.value_store.store.pop(key.encode(), None)
            set_aside += own_copy is not None
            reader.lookup.forget(key)
            gate = AttestationGate(reader, policy)
            t0 = time.perf_counter()
            with trio.fail_after(30):
                verdict = await gate.check(worker.peer_id.to_bytes())
            fetch_ms.append((time.perf_counter() - t0) * 1000)
            ok += verdict.ok
            if own_copy is not None:
                reader.dht.value_store.store[key.encode()] = own_copy
        from_network = sum(m.lookup.stats.network_hits for m in meshes if m.lookup is not None) - network_before
    return {
        "bench": "attestation_dht", "nodes": nodes, "workers": workers, "lookups": lookups, "verified_ok": ok,
        "publish_ms_median": round(statistics.median(publish_ms), 1), "publish_ms_p95": round(pct(publish_ms, 0.95), 1),
        "fetch_verify_ms_median": round(statistics.median(fetch_ms), 1),
        "fetch_verify_ms_p95": round(pct(fetch_ms, 0.95), 1),
        "fetches_answered_from_network": from_network, "readers_whose_copy_was_set_aside": set_aside,
        "background_cpu_before_fetches_pct_of_core": round(background, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=25)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    result = trio.run(main, args.nodes, args.workers, args.lookups)
    print(json.dumps(result))
    print(f"attestation reports on {result['nodes']} nodes: publish median {result['publish_ms_median']} ms "
          f"(p95 {result['publish_ms_p95']}), fetch+verify median {result['fetch_verify_ms_median']} ms "
          f"(p95 {result['fetch_verify_ms_p95']}, network lookups), "
          f"{result['verified_ok']}/{result['lookups']} verified",
          file=sys.stdout)
