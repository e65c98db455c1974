"""Issue 4 must-show, over real processes: the CPU model answers through the mesh, streaming, cancellation,
400s naming fields, the official openai client; and (protocol mechanics, synthetic backend) retry before the
first token and a worker killed mid-stream."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import openai
import pytest
import trio

from cocoon_node.cluster import Cluster, worker_args

from .conftest import FAST, api_url, post_chat, wait_until, worker_ids

MODEL = "SmolLM2-135M-Instruct"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("body_patch", "field"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"bogus": 1}, "bogus"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": None}, "model"),
    ],
)
def test_invalid_fields_named(body_patch: dict, field: str) -> None:
    """Validation is the same code the requester API runs; the process test below checks the HTTP shape."""
    from cocoon_node.inference.chat import RequestValidationError, parse_chat_request

    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} | body_patch
    with pytest.raises(RequestValidationError) as err:
        parse_chat_request(body)
    assert err.value.field == field


async def test_cpu_model_through_the_mesh(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0"])
        worker = await cluster.start_node("w", worker_args(req.addr, "torch", extra=[*FAST, "--max-concurrent", "1"]),
                                          timeout=240)
        url = api_url(cluster)

        async def seen() -> bool:
            return worker.peer_id in await worker_ids(cluster)

        await wait_until(seen, timeout=60)

        # Non-streaming answer with usage, via plain HTTP.
        resp = await post_chat(url, {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
                                     "max_tokens": 12, "temperature": 0})
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert data["choices"][0]["message"]["content"].strip()
        usage = data["usage"]
        assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 12
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert resp.headers["x-cocoon-worker"] == worker.peer_id

        # The official openai client, unchanged, streaming with usage: several chunks.
        def openai_stream() -> tuple[list[str], dict]:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
            chunks, usage = [], {}
            stream = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Count from one to five."}], max_tokens=20,
                temperature=0, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage.model_dump()
                for choice in chunk.choices:
                    if choice.delta.content:
                        chunks.append(choice.delta.content)
            models = client.models.list()
            assert [m.id for m in models.data] == [MODEL]
            return chunks, usage

        chunks, usage = await trio.to_thread.run_sync(openai_stream)
        assert len(chunks) >= 3 and "".join(chunks).strip()
        assert usage["completion_tokens"] >= len(chunks) and usage["prompt_tokens"] > 0

        # An invalid request reaches nobody and comes back as an OpenAI-shaped 400 naming the field.
        bad = await post_chat(url, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 7})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_p"
        bad_json = await post_chat(url, {"model": MODEL, "messages": "nope"})
        assert bad_json.status_code == 400 and bad_json.json()["error"]["param"] == "messages"

        # Cancellation mid-stream: the client hangs up; the worker stops and frees its only slot.
        before = (await cluster.status("w"))["worker"]
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a cat."}],
                    "max_tokens": 300, "temperature": 0, "stream": True}
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as stream:
                seen_chunks = 0
                async for line in stream.aiter_lines():
                    if line.startswith("data: ") and '"content"' in line:
                        seen_chunks += 1
                    if seen_chunks >= 3:
                        break

        async def slot_freed() -> dict | None:
            w = (await cluster.status("w"))["worker"]
            return w if w["load"] == 0 and w["cancelled"] == before["cancelled"] + 1 else None

        after = await wait_until(slot_freed, timeout=30)
        assert after["served"] == before["served"]
        # The freed slot serves the next request.
        again = await post_chat(url, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": 4, "temperature": 0})
        assert again.status_code == 200


async def test_retry_before_first_token_and_worker_killed_mid_stream(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0"])
        # The cheap worker ranks first; it will be dead when the request comes.
        cheap = await cluster.start_node("cheap", worker_args(req.addr, "synthetic", extra=[
            *FAST, "--price-prompt", "1", "--price-completion", "1", "--announce-ttl", "30"]))
        # Dear, yet its 200-word prompt below (18 M nanotons) fits the default 20 M credit window: a worker admits
        # no prompt that costs more.
        dear = await cluster.start_node("dear", worker_args(req.addr, "synthetic", extra=[
            *FAST, "--price-prompt", "90000", "--price-completion", "90000", "--synthetic-rate", "20"]))
        url = api_url(cluster)

        async def both() -> bool:
            return {cheap.peer_id, dear.peer_id} <= await worker_ids(cluster)

        await wait_until(both, timeout=30)
        warm = await post_chat(url, {"model": "synthetic-echo", "messages": [{"role": "user", "content": "a b"}]})
        assert warm.status_code == 200 and warm.headers["x-cocoon-worker"] == cheap.peer_id
        await cluster.kill("cheap", signal.SIGKILL)
        assert cheap.peer_id in await worker_ids(cluster)  # still announced: its ttl has not run out
        resp = await post_chat(url, {"model": "synthetic-echo", "messages": [{"role": "user", "content": "c d"}]})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-cocoon-worker"] == dear.peer_id
        assert resp.headers["x-cocoon-attempts"] == "2"

        # Kill the only live worker mid-stream: the client gets a clean error event, the slot is released.
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"model": "synthetic-echo", "stream": True, "max_tokens": 200,
                    "messages": [{"role": "user", "content": " ".join(["word"] * 200)}]}
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as stream:
                events = []
                async for line in stream.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line)
                    if len(events) == 3:
                        await cluster.kill("dear", signal.SIGKILL)
                assert any('"error"' in e and "mid-stream" in e for e in events), events[-3:]
                assert events[-1] != "data: [DONE]"
        status = await cluster.status("requester")
        assert status["requester"]["failed"] >= 1
        # The requester's own slot accounting for the dead worker is back to zero.
        gone = await post_chat(url, {"model": "synthetic-echo", "messages": [{"role": "user", "content": "x"}]})
        assert gone.status_code in (502, 503, 404)  # 404 model_not_found once its announcement expired
        assert gone.json()["error"]["type"] in ("upstream_error", "service_unavailable", "invalid_request_error")
