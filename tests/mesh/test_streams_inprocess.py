"""Direct inference streams between two real libp2p hosts: a malformed frame closes only its own stream,
and a worker that vanishes mid-stream gives the requester a clean error."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgpack
import msgspec
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.inference.backend import BackendError
from cocoon_node.inference.port import open_frames
from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer, WorkerFailure, WorkerTerms, call_worker
from cocoon_node.inference.synthetic import SyntheticBackend
from cocoon_node.mesh import Mesh, MeshSettings
from cocoon_node.wire.messages.inference import AcceptFrame, ErrorFrame, RequestFrame
from tests.conftest import chat_request, started_hosts
from tests.waiting import wait_until

TERMS = WorkerTerms(model="synthetic-echo", price_prompt=1, price_completion=1, max_concurrent=4, max_tokens_cap=512)


class Raw:
    def __init__(self, stream) -> None:
        self.s = stream

    async def read(self, n: int | None = None) -> bytes:
        try:
            return await self.s.read(n)
        except Exception:
            return b""

    async def write(self, data: bytes) -> None:
        await self.s.write(data)


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",  # not msgpack
        struct.pack(">I", 2) + msgpack.packb([1]),  # not a map
        struct.pack(">I", 50_000_000),  # oversized length prefix
        (lambda b: struct.pack(">I", len(b)) + b)(msgpack.packb({"t": "request", "v": 1, "id": "x"})),  # fields missing
    ],
    ids=["not-msgpack", "not-a-map", "oversized", "missing-fields"],
)
async def test_malformed_frame_closes_only_its_stream(garbage: bytes) -> None:
    async with AsyncExitStack() as stack:
        worker, client = await stack.enter_async_context(started_hosts(2))
        server = InferenceServer(SyntheticBackend(tokens_per_second=200), TERMS)
        worker.set_stream_handler(PROTOCOL_ID, server.handle)
        with trio.fail_after(30):
            good_stream = await client.new_stream(worker.peer_id, PROTOCOL_ID)
            bad_stream = await client.new_stream(worker.peer_id, PROTOCOL_ID)
            async with call_worker(good_stream, chat_request(20, max_tokens=50), price_prompt=1,
                                   price_completion=1) as call:
                await bad_stream.write(garbage)
                reply = await open_frames(Raw(bad_stream)).receive()
                assert isinstance(reply, ErrorFrame) and reply.code == "protocol"
                assert reply.message
                assert await Raw(bad_stream).read(100) == b""  # the worker closed the bad stream
                deltas = [d async for d in call.deltas()]  # a frame may carry several tokens (coalescing)
            assert call.final is not None and call.final.completion_tokens == sum(d.tokens for d in deltas) > 0
        # the worker frees the slot once the requester has hung up
        await wait_until(lambda: server.stats.in_flight == 0, timeout=10)
        assert server.stats.served == 1


async def test_worker_vanishing_mid_stream_gives_clean_error() -> None:
    async with AsyncExitStack() as stack:
        client = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(client.start())
        worker = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        server = InferenceServer(SyntheticBackend(tokens_per_second=50), TERMS)
        stop = trio.Event()

        async def run_worker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with worker.start():
                worker.set_stream_handler(PROTOCOL_ID, server.handle)
                task_status.started()
                await stop.wait()  # then the whole host shuts down, connections and all

        async with trio.open_nursery() as nursery:
            await nursery.start(run_worker)
            with trio.fail_after(30):
                stream = await client.new_stream(worker.peer_id, PROTOCOL_ID, worker.listen_addrs())
                got = 0
                with pytest.raises(WorkerFailure) as err:
                    async with call_worker(stream, chat_request(200, max_tokens=200), price_prompt=1,
                                           price_completion=1, token_timeout=5) as call:
                        async for _ in call.deltas():
                            got += 1
                            if got == 3:
                                stop.set()
        assert got >= 3
        assert not err.value.before_first_token
        assert err.value.code in ("worker_gone", "timeout", "protocol")


async def test_slot_is_free_once_final_is_sent() -> None:
    """The worker frees a slot when generation ends, not when the requester hangs up after paying the tail:
    a one-slot worker accepts the next request while the previous stream is still open."""
    one_slot = WorkerTerms(model="synthetic-echo", price_prompt=1, price_completion=1, max_concurrent=1,
                           max_tokens_cap=512)
    async with AsyncExitStack() as stack:
        worker, client = await stack.enter_async_context(started_hosts(2))
        server = InferenceServer(SyntheticBackend(tokens_per_second=0), one_slot)
        worker.set_stream_handler(PROTOCOL_ID, server.handle)
        with trio.fail_after(30):
            first = await client.new_stream(worker.peer_id, PROTOCOL_ID)
            async with call_worker(first, chat_request(5, max_tokens=50), price_prompt=1, price_completion=1) as call:
                async for _ in call.deltas():
                    pass
                assert call.final is not None
                # The first stream is still open: its tail may still be paid on it.
                second = await client.new_stream(worker.peer_id, PROTOCOL_ID)
                async with call_worker(second, chat_request(3, max_tokens=50), price_prompt=1,
                                       price_completion=1) as again:
                    text = [d.text async for d in again.deltas()]
                assert again.final is not None and len(text) > 0
        assert server.stats.served == 2 and server.stats.rejected == 0


async def test_a_finished_stream_carries_the_next_request() -> None:
    """Keep-open: after a clean final the worker waits for the next request on the same stream, and the
    requester hands the stream on instead of closing it."""
    async with AsyncExitStack() as stack:
        worker, client = await stack.enter_async_context(started_hosts(2))
        server = InferenceServer(SyntheticBackend(tokens_per_second=0), TERMS)
        opened: list[object] = []

        async def handle(stream: object) -> None:
            opened.append(stream)
            await server.handle(stream)

        worker.set_stream_handler(PROTOCOL_ID, handle)
        with trio.fail_after(30):
            handed_on: list[object] = []
            stream = await client.new_stream(worker.peer_id, PROTOCOL_ID)
            for words in (5, 3, 4):
                async with call_worker(stream, chat_request(words, max_tokens=50), price_prompt=1, price_completion=1,
                                       on_reusable=handed_on.append) as call:
                    text = "".join([d.text async for d in call.deltas()])
                assert text.split() == [f"w{i}" for i in range(words)] and call.final is not None
                assert handed_on == [stream]  # handed on, not closed
                handed_on.clear()
            # Without a taker the stream is closed as before, and the worker's handler ends.
            async with call_worker(stream, chat_request(2, max_tokens=50), price_prompt=1, price_completion=1) as call:
                [d async for d in call.deltas()]
            await wait_until(lambda: server.stats.served == 4 and server.stats.in_flight == 0, timeout=10)
        assert len(opened) == 1 and len(server.request_log) == 4


async def test_a_request_before_final_is_a_protocol_error() -> None:
    """Requests on one stream are sequential: a second request while the first is generating ends both
    with a protocol error and the stream is closed."""
    async with AsyncExitStack() as stack:
        worker, client = await stack.enter_async_context(started_hosts(2))
        server = InferenceServer(SyntheticBackend(tokens_per_second=50), TERMS)
        worker.set_stream_handler(PROTOCOL_ID, server.handle)
        with trio.fail_after(30):
            stream = await client.new_stream(worker.peer_id, PROTOCOL_ID)
            frames = open_frames(Raw(stream))
            request = RequestFrame(v=1, id="a", chat=chat_request(50, max_tokens=50).to_wire(), price_prompt=1,
                                   price_completion=1)
            await frames.send(request)
            accept = await frames.receive()
            assert isinstance(accept, AcceptFrame) and accept.keep_open is True
            await frames.send(msgspec.structs.replace(request, id="b"))
            seen = []
            while (frame := await frames.receive()) is not None:
                seen.append(frame)
            assert isinstance(seen[-1], ErrorFrame) and seen[-1].code == "protocol"
            assert all(getattr(f, "id", None) == "a" for f in seen)  # request b was never served
        await wait_until(lambda: server.stats.in_flight == 0, timeout=10)
        assert server.stats.failed == 1 and server.stats.served == 0 and len(server.request_log) == 1


class FailingBackend(SyntheticBackend):
    """Fails at once (``after`` = 0) or after ``after`` tokens, like a model that runs out of context."""

    def __init__(self, after: int) -> None:
        super().__init__(tokens_per_second=0)
        self.after = after

    @asynccontextmanager
    async def generate(self, req: Any) -> AsyncIterator[AsyncIterator[Any]]:
        if self.after == 0:
            raise BackendError("prompt does not fit the context")
        async with super().generate(req) as deltas:
            yield self._fail_after(deltas)

    async def _fail_after(self, deltas: AsyncIterator[Any]) -> AsyncIterator[Any]:
        n = 0
        async for d in deltas:
            yield d
            n += 1
            if n == self.after:
                raise BackendError("model crashed")


@pytest.mark.parametrize("after", [0, 3])
async def test_a_backend_failure_reaches_the_requester_as_a_backend_error(after: int) -> None:
    """The worker starts the backend before writing its accept; a backend that fails even before that
    still gives the requester an accept and then a clean ``backend`` error, never a protocol error."""
    async with AsyncExitStack() as stack:
        worker, client = await stack.enter_async_context(started_hosts(2))
        server = InferenceServer(FailingBackend(after), TERMS)
        worker.set_stream_handler(PROTOCOL_ID, server.handle)
        with trio.fail_after(30):
            stream = await client.new_stream(worker.peer_id, PROTOCOL_ID)
            got = []
            with pytest.raises(WorkerFailure) as err:
                async with call_worker(stream, chat_request(10, max_tokens=50), price_prompt=1,
                                       price_completion=1) as call:
                    got = [d async for d in call.deltas()]
        assert err.value.code == "backend" and err.value.before_first_token == (after == 0)
        assert sum(d.tokens for d in got) <= after
        await wait_until(lambda: server.stats.failed == 1 and server.stats.in_flight == 0, timeout=10)
