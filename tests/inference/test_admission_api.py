"""Issue 13, the admission queue through the HTTP API with the official openai client (AsyncOpenAI): a
request with no free slot waits and is served when one frees; beyond the queue's bound, or past its longest
wait, the answer is 429 with Retry-After in OpenAI's shape; a client that disconnects while queued leaves the
queue at once and never reaches a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import openai
import pytest
import trio

from cocoon_node.inference import AdmissionQueue, ChatRequest, Delta, Requester, SyntheticBackend, TokenDelta
from tests.conftest import chat_request
from tests.waiting import wait_until

from .api_harness import Harness, Trusting, api_over


class Gated(SyntheticBackend):
    """Holds every generation until ``gate`` is set, so a test decides when a slot frees."""

    def __init__(self) -> None:
        super().__init__(tokens_per_second=10_000)
        self.gate = trio.Event()

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        await self.gate.wait()
        async with super().generate(req) as stream:
            yield stream


def client(api: Harness) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=api.url, api_key="unused", max_retries=0, timeout=60)


async def chat(api: Harness, text: str) -> Any:
    return await client(api).chat.completions.create(
        model="synthetic-echo", messages=[{"role": "user", "content": text}], max_tokens=8)


async def test_a_request_waits_for_a_slot_and_beyond_the_bound_gets_429_with_retry_after() -> None:
    backend = Gated()
    async with api_over(backend, backend.model_name, max_concurrent=1,
                        admission=AdmissionQueue(max_queue=1, max_wait=600)) as api:
        queue = api.requester.admission
        answers: dict[str, Any] = {}

        async def send(name: str) -> None:
            answers[name] = await chat(api, f"{name} says hi")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "first")
                await wait_until(lambda: api.requester.selector.in_flight.get(api.worker.peer_id) == 1, timeout=30)
                nursery.start_soon(send, "second")
                await wait_until(lambda: len(queue) == 1, timeout=30)
                with pytest.raises(openai.RateLimitError) as info:
                    await chat(api, "third says hi")
                assert int(info.value.response.headers["retry-after"]) >= 1
                body = info.value.body
                assert isinstance(body, dict) and body["code"] == "queue_full"
                assert body["type"] == "rate_limit_error" and "queue is full" in body["message"]
                backend.gate.set()  # the slot frees: first finishes, second goes
    assert answers["first"].choices[0].message.content == "first says hi"
    assert answers["second"].choices[0].message.content == "second says hi"
    assert len(api.server.request_log) == 2 and api.failure_rate() == 0.0
    stats = queue.stats()
    assert stats["admitted"] == 2 and stats["admitted_after_wait"] == 1 and stats["rejected_full"] == 1


async def test_a_wait_past_the_longest_is_a_429_queue_timeout() -> None:
    backend = Gated()
    async with api_over(backend, backend.model_name, max_concurrent=1,
                        admission=AdmissionQueue(max_queue=8, max_wait=0.5)) as api:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chat, api, "holds the slot")
                await wait_until(lambda: api.requester.selector.in_flight.get(api.worker.peer_id) == 1, timeout=30)
                with pytest.raises(openai.RateLimitError) as info:
                    await chat(api, "waits too long")
                backend.gate.set()
    assert info.value.body["code"] == "queue_timeout"  # type: ignore[index]
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 1
    assert api.requester.admission.expired == 1 and len(api.server.request_log) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_disconnects_while_queued_leaves_the_queue_at_once(stream: bool) -> None:
    backend = Gated()
    async with api_over(backend, backend.model_name, max_concurrent=1,
                        admission=AdmissionQueue(max_queue=8, max_wait=600)) as api:
        queue = api.requester.admission
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chat, api, "holds the slot")
                await wait_until(lambda: api.requester.selector.in_flight.get(api.worker.peer_id) == 1, timeout=30)
                leaver = trio.CancelScope()

                async def leave() -> None:
                    with leaver:
                        async with httpx.AsyncClient(timeout=60) as http:
                            await http.post(api.url + "/chat/completions", json={
                                "model": "synthetic-echo", "stream": stream,
                                "messages": [{"role": "user", "content": "leaves early"}]})

                nursery.start_soon(leave)
                await wait_until(lambda: len(queue) == 1, timeout=30)
                leaver.cancel()  # the connection closes while the request waits for a slot
                await wait_until(lambda: len(queue) == 0, timeout=30)  # the slot is still taken
                assert queue.left == 1 and api.requester.selector.in_flight[api.worker.peer_id] == 1
                backend.gate.set()
            after = await chat(api, "comes later")
    assert after.choices[0].message.content == "comes later"
    assert [r for r in api.server.request_log if "leaves early" in str(r)] == []
    assert len(api.server.request_log) == 2


async def test_a_worker_full_of_another_requesters_work_sends_the_request_back_to_the_queue() -> None:
    """Our counts say the worker has a free slot, but another requester fills it: the worker's "overloaded"
    sends our request back to the queue (not a 502, not a mark against the worker) until the worker announces
    its load changed; then it is served."""
    backend = Gated()
    async with api_over(backend, backend.model_name, max_concurrent=1,
                        admission=AdmissionQueue(max_queue=4, max_wait=600)) as api:
        other = Requester(lambda: [api.worker], api.open_stream, Trusting(), max_price_prompt=10,
                          max_price_completion=10)
        answers: dict[str, Any] = {}

        async def theirs() -> None:
            async with other.stream(chat_request("theirs first")) as events:
                answers["theirs"] = "".join([e.text async for e in events if isinstance(e, Delta)])

        async def ours() -> None:
            answers["ours"] = await chat(api, "ours waits")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(theirs)
                await wait_until(lambda: api.server.stats.in_flight == 1, timeout=30)
                nursery.start_soon(ours)
                # refused as overloaded, and queued again: no slot counts as free until the worker announces
                await wait_until(lambda: api.server.stats.rejected == 1 and len(api.requester.admission) == 1,
                                 timeout=30)
                backend.gate.set()
                await wait_until(lambda: "theirs" in answers, timeout=30)
                assert len(api.requester.admission) == 1  # the slot freed, but nobody said so yet
                api.announce(msgspec.structs.replace(api.worker, seqno=api.worker.seqno + 1, load=0))
    assert answers["ours"].choices[0].message.content == "ours waits"
    assert api.failure_rate() == 0.0 and api.requester.failed == 0
    assert api.requester.admission.stats()["admitted_after_wait"] == 1
