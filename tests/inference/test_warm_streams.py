"""Warm inference streams between two real libp2p hosts: a finished stream comes back for the next request,
spares are opened when one does not, carry nothing until taken, and a spare the worker hung up on costs the
request nothing."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from cocoon_node.inference.requester import Requester, StreamStart
from cocoon_node.inference.stream import PROTOCOL_ID, Delta, Final, InferenceServer, WorkerFailure, WorkerTerms
from cocoon_node.inference.synthetic import SyntheticBackend
from cocoon_node.inference.warm import WarmStreams
from cocoon_node.mesh import Announcement
from tests.conftest import TrustingAttestor, chat_request, started_hosts, worker_announcement
from tests.waiting import wait_until

TERMS = WorkerTerms(model="synthetic-echo", price_prompt=1, price_completion=1, max_concurrent=4, max_tokens_cap=512)


async def ask(requester: Requester, words: int = 5) -> tuple[str, StreamStart, Final]:
    chat = chat_request(" ".join(["w"] * words), max_tokens=20)
    text, start, final = [], None, None
    async with requester.stream(chat) as events:
        async for ev in events:
            if isinstance(ev, StreamStart):
                start = ev
            elif isinstance(ev, Delta):
                text.append(ev.text)
            elif isinstance(ev, Final):
                final = ev
    assert start is not None and final is not None
    return "".join(text), start, final


async def setup(stack: AsyncExitStack) -> tuple[InferenceServer, list[Any], Requester, WarmStreams, Announcement]:
    worker, client = await stack.enter_async_context(started_hosts(2))
    server = InferenceServer(SyntheticBackend(tokens_per_second=0), TERMS)
    worker_side: list[Any] = []

    async def handle(stream: Any) -> None:
        worker_side.append(stream)
        await server.handle(stream)

    worker.set_stream_handler(PROTOCOL_ID, handle)
    target = worker_announcement(worker)

    async def open_stream(w: Announcement) -> Any:
        return await client.new_stream(w.peer, PROTOCOL_ID, w.addrs)

    warm = WarmStreams(open_stream, max_spares=2)
    stack.enter_context(trio.fail_after(30))
    nursery = await stack.enter_async_context(trio.open_nursery())
    nursery.start_soon(warm.run)
    stack.callback(nursery.cancel_scope.cancel)
    requester = Requester(lambda: [target], open_stream, TrustingAttestor(), max_price_prompt=10,
                          max_price_completion=10, warm=warm)
    return server, worker_side, requester, warm, target


async def test_a_finished_stream_comes_back_and_carries_the_next_request() -> None:
    async with AsyncExitStack() as stack:
        server, worker_side, requester, warm, target = await setup(stack)
        with trio.fail_after(30):
            text, start, final = await ask(requester)
            assert text.split() == ["w"] * 5 and final.completion_tokens == 5
            assert (warm.hits, warm.misses, warm.reused) == (0, 1, 1)
            assert warm.spare_count(target.peer_id) == 1
            # The spare is the finished stream, which the worker keeps open: no request, no slot.
            await wait_until(lambda: server.stats.in_flight == 0, timeout=10)
            assert len(worker_side) == 1 and len(server.request_log) == 1
            text, start, final = await ask(requester, words=3)
            assert text.split() == ["w"] * 3 and start.attempts == 1
            assert (warm.hits, warm.reused) == (1, 2) and len(worker_side) == 1
            assert len(server.request_log) == 2


async def test_spares_are_opened_when_a_stream_does_not_come_back() -> None:
    """A request that ends without a clean final (here: refused as invalid) closes its stream; the pool
    opens a spare in its place, which carries nothing until the next request takes it."""
    async with AsyncExitStack() as stack:
        server, worker_side, requester, warm, target = await setup(stack)
        with trio.fail_after(30):
            bad = chat_request("w", max_tokens=1000)
            with pytest.raises(WorkerFailure) as err:
                async with requester.stream(bad) as events:
                    async for _ in events:
                        pass
            assert err.value.code == "invalid_request"
            assert warm.reused == 0
            await wait_until(lambda: warm.spare_count(target.peer_id) >= 1, timeout=10)
            await wait_until(lambda: len(worker_side) >= 2, timeout=10)
            assert server.stats.in_flight == 0 and len(server.request_log) == 0
            text, start, _ = await ask(requester, words=3)
            assert text.split() == ["w"] * 3 and start.attempts == 1 and warm.hits == 1
            assert len(server.request_log) == 1


async def test_a_spare_the_worker_hung_up_on_is_replaced_without_blame() -> None:
    async with AsyncExitStack() as stack:
        _, worker_side, requester, warm, target = await setup(stack)
        with trio.fail_after(30):
            await ask(requester)
            assert warm.spare_count(target.peer_id) == 1 and len(worker_side) == 1  # the finished stream
            for stream in worker_side:  # the worker resets every idle stream (as on a restart)
                await stream.reset()
            text, start, final = await ask(requester, words=4)
            assert text.split() == ["w"] * 4 and final.completion_tokens == 4
            assert start.attempts == 1 and warm.hits == 1 and warm.dead == 1  # dead spare taken, then a fresh one
            rep = requester.selector.reputation(target.peer_id)
            assert rep.failure_rate == 0 and rep.samples == 2


async def test_stale_spares_are_not_handed_out() -> None:
    opened: list[object] = []

    async def opener(w: Announcement) -> object:
        opened.append(object())
        return opened[-1]

    warm = WarmStreams(opener, max_spares=1, max_idle=0.0)
    now = int(time.time())
    target = Announcement(
        peer_id=b"\x00" * 38, addrs=(), model="m", model_hash=b"\x01" * 32, backend="synthetic", synthetic=True,
        price_prompt=1, price_completion=1, max_concurrent=4, load=0, protocols=(PROTOCOL_ID,),
        tee_kind="dev-INSECURE", seqno=1, issued_at=now, expires_at=now + 60, payout="", v=1,
    )
    assert warm.take(target) is None
    warm._workers[target.peer_id].streams.append((time.monotonic() - 1, object()))  # an old spare
    assert warm.take(target) is None  # too old to trust: the worker may be about to hang up on it
    assert (warm.hits, warm.misses) == (0, 2)
