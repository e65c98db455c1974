"""Cost of one idle node as its own process: resident memory and CPU while idle (no model loaded).

Starts a small local cluster of real ``cocoon-node`` processes (a seed, synthetic workers, one requester; the
shared EMULATED chain for payments), waits until every requester lists every worker, lets it settle, then
reads each process's RSS and the CPU time it used over a quiet window from ``/proc``. The per-process CPU
time is the process's own, so it holds up on a busy machine better than wall-clock figures do.

Prints one JSON line, then one human line.
    .venv/bin/python bench/bench_node_process.py [--workers 4] [--settle 20] [--window 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from cocoon_node.cluster import Cluster, wait_for_workers

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        cluster = Cluster(Path(tmp))
        async with cluster.running():
            seed = await cluster.start_node("seed", ["--local-cluster"])
            for i in range(args.workers):
                await cluster.start_node(f"worker{i + 1}", [
                    "--worker", "--local-cluster", "--backend", "synthetic", "--tee", "dev",
                    "--model", "synthetic-echo", "--bootstrap", seed.addr])
            await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                   "--api-port", "0", "--bootstrap", seed.addr])
            await wait_for_workers(cluster, "requester", args.workers, timeout=120, model="synthetic-echo")
            await trio.sleep(args.settle)
            pids = {name: node.process.pid for name, node in cluster.nodes.items() if node.process is not None}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            t0 = time.monotonic()
            await trio.sleep(args.window)
            elapsed = time.monotonic() - t0
            nodes = {
                name: {"rss_mb": round(rss_mb(pid), 1),
                       "idle_cpu_pct": round(100 * (cpu_seconds(pid) - before[name]) / elapsed, 2)}
                for name, pid in pids.items()
            }
    cpu = [n["idle_cpu_pct"] for n in nodes.values()]
    rss = [n["rss_mb"] for n in nodes.values()]
    return {"bench": "node_process", "cpus": os.cpu_count(), "workers": args.workers, "settle_s": args.settle,
            "window_s": args.window, "nodes": nodes,
            "idle_cpu_pct_median": round(statistics.median(cpu), 2), "idle_cpu_pct_max": max(cpu),
            "rss_mb_median": round(statistics.median(rss), 1), "rss_mb_max": max(rss)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--settle", type=float, default=20.0, help="seconds to wait after discovery converged")
    p.add_argument("--window", type=float, default=30.0, help="seconds of idle CPU measured")
    args = p.parse_args()
    out = trio.run(main_async, args)
    print(json.dumps(out))
    print(f"{len(out['nodes'])} node processes idle: CPU median {out['idle_cpu_pct_median']} % of a core "
          f"(max {out['idle_cpu_pct_max']} %), RSS median {out['rss_mb_median']} MB (max {out['rss_mb_max']} MB)",
          file=sys.stdout)


if __name__ == "__main__":
    main()
