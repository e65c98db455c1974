"""An in-process requester API over one worker: the real InferenceServer, stream protocol (over an in-memory
byte stream), Requester and OpenAI HTTP app on an ephemeral 127.0.0.1 port, for the official openai client.

No libp2p and no attestation (a trusting gate): what is under test is the request's way through the
worker's validation, the frames and the API's response shapes, with whatever backend the test brings.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from cocoon_node.api.http import serve_http
from cocoon_node.api.openai_api import openai_app
from cocoon_node.inference.backend import Backend
from cocoon_node.inference.requester import Requester
from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer, WorkerTerms
from cocoon_node.mesh.announce import Announcement


class Pipe:
    """A trio in-memory stream with the read/write/close surface of a libp2p stream."""

    def __init__(self, stream: Any) -> None:
        self.s = stream

    async def read(self, n: int | None = None) -> bytes:
        return await self.s.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self.s.send_all(data)

    async def close(self) -> None:
        await self.s.aclose()

    async def reset(self) -> None:
        await self.s.aclose()


class Trusting:
    """An attestation gate that passes everyone (attestation is not what these tests look at)."""

    def known(self, a: Announcement) -> bool:
        return True

    async def is_attested(self, a: Announcement) -> bool:
        return True


def announcement(model: str, backend: Backend, max_concurrent: int, *, capabilities: Iterable[str] | None = None,
                 peer: int = 7) -> Announcement:
    """What the worker would announce; ``capabilities`` defaults to its backend's (as the node announces)."""
    now = int(time.time())
    caps = tuple(sorted(getattr(backend, "capabilities", ()) if capabilities is None else capabilities))
    return Announcement(
        peer_id=bytes([0, 36, 8, 1, 18, 32]) + bytes([peer]) * 32, addrs=(), model=model, model_hash=b"\x01" * 32,
        backend=backend.kind, synthetic=backend.synthetic, price_prompt=1, price_completion=1,
        max_concurrent=max_concurrent, load=0, protocols=(PROTOCOL_ID,), tee_kind="dev-INSECURE", seqno=1,
        issued_at=now, expires_at=now + 3600, capabilities=caps, v=3 if caps else 1, payout="",
    )


@dataclass
class Harness:
    url: str  # the API's base, ``http://127.0.0.1:PORT/v1``
    server: InferenceServer
    requester: Requester
    worker: Announcement
    open_stream: Any = None  # a new stream to the worker, as the requester opens them
    announced: list[Announcement] | None = None  # what the requester sees announced

    def announce(self, a: Announcement) -> None:
        """The worker announces again (a load change): the requester sees ``a`` and is told."""
        assert self.announced is not None
        self.announced[:] = [a]
        self.worker = a
        self.requester.workers_changed()

    def failure_rate(self) -> float:
        return self.requester.selector.reputation(self.worker.peer_id).failure_rate


@asynccontextmanager
async def api_over(backend: Backend, model: str, *, max_concurrent: int = 2,
                   capabilities: Iterable[str] | None = None, worker: Announcement | None = None,
                   models: Any = None, **requester_kw: Any) -> AsyncIterator[Harness]:
    """``capabilities``: what the worker announces, if not its backend's own (a stale or lying announcement);
    ``worker``: the whole announcement instead; ``models``: the API's model list; ``requester_kw``: for the
    :class:`Requester`."""
    terms = WorkerTerms(model, 1, 1, max_concurrent, 4096)
    server = InferenceServer(backend, terms)
    worker = worker or announcement(model, backend, max_concurrent, capabilities=capabilities)
    async with trio.open_nursery() as nursery:

        async def open_stream(_: Announcement) -> Any:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle, Pipe(theirs))
            return Pipe(ours)

        kw: dict[str, Any] = {"max_price_prompt": 10, "max_price_completion": 10, **requester_kw}
        announced = [worker]
        requester = Requester(lambda: list(announced), open_stream, kw.pop("attestor", Trusting()), **kw)
        base = await nursery.start(serve_http, openai_app(requester, models=models), "127.0.0.1", 0)
        yield Harness(base + "/v1", server, requester, worker, open_stream, announced)
        nursery.cancel_scope.cancel()
