"""Workload: a seeded request schedule and the OpenAI-API client that plays it against the requesters.

The schedule is computed up front from the seed (arrival times, prompts, lengths, streaming, which requester),
so two runs with one seed send the same requests at the same offsets; only the system's answers may differ.
:func:`play` runs the honest schedule of a simulation; :func:`play_nonpayers` the non-paying requesters' own
requests (an adversary's traffic is kept apart from the honest results).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import trio

from netsim.receipts import check_answer
from netsim.scenario import NonPayer, Workload

if TYPE_CHECKING:
    from netsim.context import SimContext

VOCAB = ("mesh peer worker token stream gossip relay quote enclave ledger latency batch model prompt answer "
         "channel voucher price credit node route shard cache vector kernel").split()


@dataclass(frozen=True)
class PlannedRequest:
    index: int
    at: float
    requester: int
    prompt: str
    max_tokens: int
    stream: bool


@dataclass
class RequestResult:
    index: int
    at: float
    requester: str
    stream: bool
    max_tokens: int
    started: float = 0.0
    ended: float = 0.0
    ok: bool = False
    cause: str = "not_run"
    status: int | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    content_chars: int = 0
    usage: dict[str, int] | None = None
    worker: str | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(workload: Workload, duration: float, requesters: int, rng: random.Random) -> list[PlannedRequest]:
    """Arrival times in [0, duration) and request shapes, all from ``rng``."""
    times: list[float] = []
    if workload.arrival == "poisson":
        t = rng.expovariate(workload.rate) if workload.rate > 0 else duration
        while t < duration:
            times.append(t)
            t += rng.expovariate(workload.rate)
    else:
        t = 0.5
        while t < duration:
            times.extend(t + 0.01 * k for k in range(workload.burst_size))
            t += workload.burst_every
    out = []
    lo_p, hi_p = workload.prompt_words
    lo_t, hi_t = workload.max_tokens
    for i, at in enumerate(times):
        words = [rng.choice(VOCAB) for _ in range(rng.randint(lo_p, hi_p))]
        out.append(PlannedRequest(i, round(at, 4), rng.randrange(requesters), " ".join(words),
                                  rng.randint(lo_t, hi_t), rng.random() < workload.stream_fraction))
    return out


def _error_cause(resp_status: int, body: bytes) -> tuple[str, str]:
    try:
        err = json.loads(body).get("error", {})
        code = err.get("code") or err.get("type") or "unknown"
        return f"http_{resp_status}_{code}", str(err.get("message", ""))[:200]
    except (ValueError, AttributeError):
        return f"http_{resp_status}", body[:200].decode("utf-8", "replace")


async def run_request(client: httpx.AsyncClient, api_url: str, name: str, req: PlannedRequest, model: str,
                      clock0: float, timeout: float) -> RequestResult:
    """Send one chat completion and classify the outcome; never raises."""
    res = RequestResult(req.index, req.at, name, req.stream, req.max_tokens)
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": req.prompt}],
                            "max_tokens": req.max_tokens, "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    start = trio.current_time()
    res.started = start - clock0
    text: list[str] = []
    try:
        with trio.fail_after(timeout):
            if not req.stream:
                resp = await client.post(api_url + "/v1/chat/completions", json=body)
                res.status = resp.status_code
                res.worker = resp.headers.get("x-cocoon-worker")
                res.extra["path"] = resp.headers.get("x-cocoon-path")  # direct / hole-punched / relayed
                if resp.status_code != 200:
                    res.cause, res.detail = _error_cause(resp.status_code, resp.content)
                else:
                    data = resp.json()
                    text.append(data["choices"][0]["message"]["content"] or "")
                    res.usage = data.get("usage")
                    res.ok, res.cause = True, "ok"
                    cocoon, cid = data.get("cocoon"), data.get("id", "")
                    res.ttft_s = trio.current_time() - start
            else:
                done = False
                cocoon, cid = None, ""
                async with client.stream("POST", api_url + "/v1/chat/completions", json=body) as resp:
                    res.status = resp.status_code
                    res.worker = resp.headers.get("x-cocoon-worker")
                    res.extra["path"] = resp.headers.get("x-cocoon-path")
                    if resp.status_code != 200:
                        res.cause, res.detail = _error_cause(resp.status_code, await resp.aread())
                    else:
                        async for line in resp.aiter_lines():
                            if not line.startswith("data:"):
                                continue
                            payload = line[5:].strip()
                            if payload == "[DONE]":
                                done = True
                                break
                            chunk = json.loads(payload)
                            if "error" in chunk:
                                res.cause = f"stream_error_{chunk['error'].get('code') or 'unknown'}"
                                res.detail = str(chunk["error"].get("message", ""))[:200]
                                break
                            if chunk.get("usage"):
                                res.usage = chunk["usage"]
                            if "cocoon" in chunk:  # the final chunk: the receipt (issue 16)
                                cocoon, cid = chunk["cocoon"], chunk.get("id", "")
                            for choice in chunk.get("choices") or []:
                                piece = (choice.get("delta") or {}).get("content")
                                if piece:
                                    if res.ttft_s is None:
                                        res.ttft_s = trio.current_time() - start
                                    text.append(piece)
                        if done and res.cause == "not_run":
                            res.ok, res.cause = True, "ok"
                        elif res.cause == "not_run":
                            res.cause = "stream_incomplete"
            if res.ok:
                res.extra["receipt"] = await check_answer(client, api_url, cid, cocoon, "".join(text), res.usage)
    except trio.TooSlowError:
        res.cause = "client_timeout"
    except httpx.ConnectError as exc:
        res.cause, res.detail = "requester_unreachable", str(exc)[:200]
    except httpx.TimeoutException as exc:
        res.cause, res.detail = "http_timeout", str(exc)[:200]
    except httpx.HTTPError as exc:
        res.cause, res.detail = f"http_error_{type(exc).__name__}", str(exc)[:200]
    except (ValueError, KeyError, TypeError) as exc:
        res.cause, res.detail = "bad_response", repr(exc)[:200]
    end = trio.current_time()
    res.ended = end - clock0
    res.total_s = end - start
    res.content_chars = len("".join(text))
    return res


async def play(ctx: SimContext, planned: list[PlannedRequest]) -> None:
    """Send each planned request at its time (at most ``max_in_flight`` at once); results go to ``ctx.data``."""
    w = ctx.s.workload
    limiter = trio.CapacityLimiter(w.max_in_flight)
    limits = httpx.Limits(max_connections=w.max_in_flight * 2, max_keepalive_connections=w.max_in_flight)
    requesters = [f"requester{i}" for i in range(1, ctx.s.requesters + 1)]
    async with httpx.AsyncClient(timeout=httpx.Timeout(w.timeout, connect=5.0), limits=limits) as client:

        async def one(req: PlannedRequest) -> None:
            name = requesters[req.requester]
            api = ctx.data.nodes[name].api_url
            assert api is not None
            async with limiter:
                res = await run_request(client, api, name, req, w.model, ctx.t0, w.timeout)
            ctx.data.results.append(res)

        async with trio.open_nursery() as nursery:
            for req in planned:
                await trio.sleep_until(ctx.t0 + req.at)
                nursery.start_soon(one, req)


async def play_nonpayers(ctx: SimContext, np: NonPayer) -> None:
    """Each non-paying requester asks for long answers through its own API; the workers' credit windows
    should end every one of them with a payment error."""
    w = ctx.s.workload
    names = [n.name for n in ctx.data.nodes.values() if n.adversary == "nonpayer"]
    rng = random.Random(ctx.data.seed * 131 + 3)
    async with httpx.AsyncClient(timeout=httpx.Timeout(np.timeout, connect=5.0)) as client:

        async def one(name: str, k: int) -> None:
            api = ctx.data.nodes[name].api_url
            assert api is not None
            prompt = " ".join(rng.choice(("unpaid", "tokens", "credit", "window")) for _ in range(np.prompt_words))
            req = PlannedRequest(10_000 + k, np.start + k * np.every, 0, prompt, np.max_tokens, np.stream)
            res = await run_request(client, api, name, req, w.model, ctx.t0, np.timeout)
            ctx.data.nonpayer_results.append(res)

        async with trio.open_nursery() as nursery:
            for k in range(np.requests):
                await trio.sleep_until(ctx.t0 + np.start + k * np.every)
                for name in names:
                    nursery.start_soon(one, name, k)
