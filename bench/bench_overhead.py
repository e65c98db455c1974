"""Overhead of the mesh: requester OpenAI API -> libp2p stream -> worker, against the same backend in-process.

Same run, same machine: first the backend is driven directly (``backend.generate``), then through a real
two-process cluster (one requester, one worker, started with ``cocoon_node.cluster.Cluster``) with streaming
HTTP requests from this process (``sse_client.SSEClient``: h11 over trio sockets, a keep-alive connection per
stream; lighter than httpx, so the load generator takes less of the 2 cores from the nodes). For each
concurrency: time to first token (TTFT) and per-stream tokens/s
(completion tokens / time from request start to last token), medians and p95, and mesh/direct ratios. Each
concurrency gets one uncounted warm-up round at that concurrency (steady state, as a busy requester sees it).
Also the CPU each node process spent per request, and the decode rate (tokens after the first / time from
first to last token), which leaves TTFT out; the ratio targets use the stricter per-stream tokens/s above.

Synthetic backend at 200 tok/s per stream (a fair, paced comparison) and at rate 0 (as fast as possible),
1 / 8 / 32 concurrent streams; ``--torch`` adds the SmolLM2 CPU model at 1 and 4 streams (slow).

Prints one JSON line, then one human line per case.
    .venv/bin/python bench/bench_overhead.py [--rounds 5] [--tokens 100] [--rates 200,0] [--concurrency 1,8,32]
                                             [--torch]
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
from sse_client import SSEClient  # bench/sse_client.py (the script directory is on sys.path)

from cocoon_node.cluster import Cluster, wait_for_workers
from cocoon_node.inference import make_backend, parse_chat_request

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def prompt(tokens: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(tokens))


def body(model: str, tokens: int, stream: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt(tokens)}],
                           "max_tokens": tokens, "stream": stream}
    if stream:
        out["stream_options"] = {"include_usage": True}
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(samples: list[tuple[float, float, int]]) -> dict[str, float]:
    """samples: (ttft_s, total_s, tokens) per stream."""
    ttft = sorted(s[0] for s in samples)
    tps = sorted(s[2] / s[1] for s in samples if s[1] > 0)
    decode = sorted((s[2] - 1) / (s[1] - s[0]) for s in samples if s[1] > s[0] and s[2] > 1)

    def p(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, round((len(xs) - 1) * q))]

    return {"streams": len(samples), "ttft_ms_p50": round(p(ttft, 0.5) * 1000, 2),
            "ttft_ms_p95": round(p(ttft, 0.95) * 1000, 2), "tok_s_p50": round(statistics.median(tps), 1),
            "tok_s_p5": round(p(tps, 0.05), 1), "tokens_per_stream": statistics.median(s[2] for s in samples),
            "decode_tok_s_p50": round(statistics.median(decode), 1) if decode else None}


async def direct_round(backend: Any, model: str, tokens: int, conc: int) -> list[tuple[float, float, int]]:
    out: list[tuple[float, float, int]] = []

    async def one() -> None:
        req = parse_chat_request(body(model, tokens, stream=True))
        t0 = trio.current_time()
        first = None
        n = 0
        async with backend.generate(req) as deltas:
            async for d in deltas:
                if d.token_count and first is None:
                    first = trio.current_time()
                n += d.token_count
        end = trio.current_time()
        out.append(((first or end) - t0, end - t0, n))

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for _ in range(conc):
                nursery.start_soon(one)
    return out


async def mesh_round(client: SSEClient, model: str, tokens: int, conc: int) -> list[tuple[float, float, int]]:
    out: list[tuple[float, float, int]] = []

    async def one() -> None:
        t0 = trio.current_time()
        first = None
        last = t0
        n = 0
        async with client.post_events("/v1/chat/completions", body(model, tokens)) as events:
            async for data in events:
                if data == b"[DONE]":
                    continue
                chunk = json.loads(data)
                if chunk.get("usage"):
                    n = chunk["usage"]["completion_tokens"]
                for c in chunk.get("choices") or []:
                    if (c.get("delta") or {}).get("content"):
                        last = trio.current_time()
                        if first is None:
                            first = last
        out.append(((first or last) - t0, last - t0, n))

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for _ in range(conc):
                nursery.start_soon(one)
    return out


async def run_case(kind: str, rate: float, concurrencies: list[int], rounds: int, tokens: int,
                   base: Path, node_args: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    max_c = max(concurrencies)
    if kind == "synthetic":
        model = "synthetic-echo"
        backend = make_backend("synthetic", tokens_per_second=rate, model_name=model, max_batch=max_c)
        worker_extra = ["--model", model, "--synthetic-rate", str(rate)]
    else:
        model = "SmolLM2-135M-Instruct"
        backend = make_backend("torch", model_name=model, max_batch=max_c, max_tokens_cap=512)
        worker_extra = ["--model", model]
    await backend.load()
    direct: dict[int, list[tuple[float, float, int]]] = {}
    for c in concurrencies:
        await direct_round(backend, model, tokens, c)  # warm-up at the same concurrency, not counted
        direct[c] = [s for _ in range(rounds) for s in await direct_round(backend, model, tokens, c)]
    await backend.aclose()

    results = []
    cluster = Cluster(base / f"{kind}-{rate}")
    async with cluster.running():
        worker = await cluster.start_node("worker", ["--worker", "--local-cluster", "--backend", kind, "--tee", "dev",
                                                     "--max-concurrent", str(max_c), *worker_extra, *node_args])
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0", "--bootstrap", worker.addr, *node_args])
        await wait_for_workers(cluster, "requester", 1, timeout=60, model=model)
        api = req.ready["api_url"]
        client = SSEClient(api)
        try:
            for c in concurrencies:
                # Warm-up at the same concurrency, not counted: HTTP connections, the payment channel, the
                # attestation verdict and the requester's warm streams are set up once, not per request.
                await mesh_round(client, model, tokens, c)
                pids = {"worker": worker.process.pid, "requester": req.process.pid}  # type: ignore[union-attr]
                cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
                mesh = [s for _ in range(rounds) for s in await mesh_round(client, model, tokens, c)]
                d, m = summarize(direct[c]), summarize(mesh)
                # CPU per request in each node process (both ends of the mesh path, payments included).
                m["cpu_ms_per_request"] = {k: round((cpu_seconds(v) - cpu0[k]) * 1000 / len(mesh), 2)
                                           for k, v in pids.items()}
                results.append({
                    "backend": kind, "rate_tok_s": rate, "concurrency": c, "direct": d, "mesh": m,
                    "ttft_overhead_ms_p50": round(m["ttft_ms_p50"] - d["ttft_ms_p50"], 2),
                    "tok_s_ratio_p50": round(m["tok_s_p50"] / d["tok_s_p50"], 3) if d["tok_s_p50"] else None,
                    "decode_ratio_p50": (round(m["decode_tok_s_p50"] / d["decode_tok_s_p50"], 3)
                                         if d["decode_tok_s_p50"] and m["decode_tok_s_p50"] else None),
                })
        finally:
            await client.aclose()
    return results


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for rate in args.rates:
            results += await run_case("synthetic", rate, args.concurrency, args.rounds, args.tokens, Path(tmp),
                                      tuple(args.node_args.split()))
        if args.torch:
            results += await run_case("torch", 0.0, [1, 4], max(2, args.rounds), 32, Path(tmp))
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[200.0, 0.0],
                   help="synthetic backend rates in tok/s per stream, 0 = as fast as possible (default 200,0)")
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 32],
                   help="concurrent streams per case (default 1,8,32)")
    p.add_argument("--node-args", default="", help="extra flags for both nodes, e.g. '--no-payments' to see "
                   "what payments cost")
    p.add_argument("--torch", action="store_true", help="also the SmolLM2 CPU model at 1 and 4 streams (slow)")
    args = p.parse_args()
    # The API port is chosen by the OS (0) so parallel runs do not collide.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.time()
    results = trio.run(main_async, args)
    print(json.dumps({"bench": "overhead", "cpus": os.cpu_count(), "wall_s": round(time.time() - t0, 1),
                      "results": results}))
    for r in results:
        print(f"{r['backend']} rate {r['rate_tok_s'] or 'max'} x{r['concurrency']}: TTFT p50 direct "
              f"{r['direct']['ttft_ms_p50']} ms, mesh {r['mesh']['ttft_ms_p50']} ms (+{r['ttft_overhead_ms_p50']} ms); "
              f"tok/s/stream p50 direct {r['direct']['tok_s_p50']}, mesh {r['mesh']['tok_s_p50']} "
              f"(ratio {r['tok_s_ratio_p50']}; decode-rate ratio {r['decode_ratio_p50']}); "
              f"CPU ms/request {r['mesh']['cpu_ms_per_request']}", file=sys.stdout)


if __name__ == "__main__":
    main()
