"""Backend throughput: tokens/s and time to first token (TTFT) for the CPU torch backend (SmolLM2-135M,
1 and 4 concurrent requests) and the synthetic backend (unpaced, i.e. the streaming overhead alone).

Usage: ``.venv/bin/python bench/bench_backends.py [--tokens 64] [--skip-torch]``. Prints one JSON line,
then one human-readable line. Greedy decoding; each request asks for ``--tokens`` tokens but may stop early
at end-of-sequence, so rates are computed from the tokens actually produced. "aggregate" is all tokens of a
round over its wall time; "per_request" is each request's tokens after its first, over its decode time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import trio

from cocoon_node.inference import Backend, SyntheticBackend, TorchBackend, parse_chat_request
from cocoon_node.inference.chat import ChatRequest

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how bread is made.",
    "Describe a walk through a forest in autumn.",
    "Write a long letter to a friend about your travels.",
]


def request(i: int, tokens: int) -> ChatRequest:
    return parse_chat_request(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "temperature": 0,
            "max_tokens": tokens,
        }
    )


async def one(backend: Backend, req: ChatRequest) -> dict[str, float]:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with backend.generate(req) as stream:
        async for delta in stream:
            if first is None and delta.token_count:
                first = time.perf_counter()
            tokens += delta.token_count
    end = time.perf_counter()
    assert first is not None
    decode_rate = (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0
    return {"tokens": tokens, "ttft_s": first - start, "decode_tok_s": decode_rate, "wall_s": end - start}


async def round_of(backend: Backend, concurrency: int, tokens: int) -> dict[str, Any]:
    results: list[dict[str, float]] = []

    async def run(i: int) -> None:
        results.append(await one(backend, request(i, tokens)))

    start = time.perf_counter()
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(run, i)
    wall = time.perf_counter() - start
    total = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "tokens": int(total),
        "wall_s": round(wall, 3),
        "aggregate_tok_s": round(total / wall, 2),
        "per_request_tok_s": round(statistics.mean(r["decode_tok_s"] for r in results), 2),
        "ttft_ms_mean": round(1000 * statistics.mean(r["ttft_s"] for r in results), 1),
        "ttft_ms_max": round(1000 * max(r["ttft_s"] for r in results), 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bench": "backends",
        "tokens_requested": args.tokens,
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    synthetic = SyntheticBackend(max_batch=4, default_max_tokens=args.synthetic_tokens)
    words = " ".join(["word"] * args.synthetic_tokens)
    start = time.perf_counter()
    async with synthetic.generate(
        parse_chat_request({"model": "s", "messages": [{"role": "user", "content": words}]})
    ) as stream:
        n = sum([d.token_count async for d in stream])
    out["synthetic_unpaced_tok_s"] = round(n / (time.perf_counter() - start), 1)

    if not args.skip_torch:
        backend = TorchBackend(max_batch=4)
        start = time.perf_counter()
        await backend.load()
        out["torch_load_s"] = round(time.perf_counter() - start, 1)
        out["torch"] = [await round_of(backend, c, args.tokens) for c in (1, 4)]
        await backend.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per torch request")
    parser.add_argument("--synthetic-tokens", type=int, default=5000)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()
    out = trio.run(bench, args)
    print(json.dumps(out))
    line = f"synthetic (unpaced): {out['synthetic_unpaced_tok_s']:.0f} tok/s"
    for r in out.get("torch", []):
        line += (
            f"; torch x{r['concurrency']}: {r['aggregate_tok_s']:.1f} tok/s aggregate, "
            f"{r['per_request_tok_s']:.1f} tok/s per request, TTFT {r['ttft_ms_mean']:.0f} ms mean"
        )
    if "torch_load_s" in out:
        line += f"; load {out['torch_load_s']:.0f} s; {out['cpus']} CPUs"
    print(line)


if __name__ == "__main__":
    main()
