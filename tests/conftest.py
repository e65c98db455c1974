"""Suite-wide guard: a test that reads a file beside the checkout (e.g. ``../shared``) fails the run.

A user's clone has nothing next to it, so such a read passes here and breaks for everyone else. An audit hook
records every ``open`` of a path inside the checkout's parent folder but outside the checkout; the session
then fails, naming each path and the test that opened it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PARENT = str(ROOT.parent) + os.sep
_ROOT = str(ROOT) + os.sep
_outside: list[tuple[str, str]] = []
_current_test = ["(collection)"]


def _outside_checkout(path: object) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return None  # a file descriptor
    full = os.path.abspath(path)
    if full.startswith(_PARENT) and not (full + os.sep).startswith(_ROOT):
        return full
    return None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and args:
        full = _outside_checkout(args[0])
        if full is not None:
            _outside.append((full, _current_test[0]))


sys.addaudithook(_audit)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _current_test[0] = item.nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _outside:
        lines = sorted({f"  {path}  (opened by {test})" for path, test in _outside})
        sys.stderr.write("\nFiles outside the checkout were opened; keep test data inside the repository:\n")
        sys.stderr.write("\n".join(lines) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ----- shared fixtures: chat requests, two hosts, an in-process requester app --------------------------------
# Imported here rather than at the top so the guard above is installed before any project code is imported.
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import AsyncExitStack, asynccontextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import trio  # noqa: E402
from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402

from cocoon_node.api import openai_app  # noqa: E402
from cocoon_node.inference import (  # noqa: E402
    PROTOCOL_ID,
    ChatRequest,
    InferenceServer,
    Requester,
    SyntheticBackend,
    WorkerTerms,
    parse_chat_request,
)
from cocoon_node.mesh import Announcement, Connectivity, ConnectivitySettings, Mesh, MeshSettings  # noqa: E402

#: The model every synthetic worker of these fixtures serves.
MODEL = "synthetic-echo"


def chat_body(content: str = "hello world", *, model: str = MODEL, **fields: Any) -> dict[str, Any]:
    """The OpenAI JSON body of a chat completion (what a client posts, what a request frame carries): one
    user message of ``content``; other OpenAI fields as given, None included (a test may send a null)."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def chat_request(content: int | str = "hello world", *, model: str = MODEL, **fields: Any) -> ChatRequest:
    """A chat request as the API would build it (through :func:`parse_chat_request`): one user message of
    ``content``, or for an int that many distinct words ``w0 w1 ...`` (one synthetic token each); other OpenAI
    fields (``max_tokens``, ``stream``, ...) as given, None meaning absent."""
    text = " ".join(f"w{i}" for i in range(content)) if isinstance(content, int) else content
    given = {k: v for k, v in fields.items() if v is not None}
    return parse_chat_request(chat_body(text, model=model, **given))


@asynccontextmanager
async def started_hosts(count: int = 2) -> AsyncIterator[list[Mesh]]:
    """``count`` real libp2p hosts on 127.0.0.1, each bootstrapped from the first; stopped on exit."""
    async with AsyncExitStack() as stack:
        first = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True))
        await stack.enter_async_context(first.start())
        hosts = [first]
        for _ in range(count - 1):
            host = Mesh(create_new_key_pair(), MeshSettings(local_cluster=True, bootstrap=(first.listen_addrs()[0],)))
            await stack.enter_async_context(host.start())
            hosts.append(host)
        yield hosts


@asynccontextmanager
async def connectivity_host(settings: MeshSettings,
                            connectivity: ConnectivitySettings) -> AsyncIterator[tuple[Mesh, Connectivity]]:
    """A host with NAT traversal (:class:`Connectivity`: dial-back, relays) installed before it starts and
    running beside it; stopped on exit."""
    mesh = Mesh(create_new_key_pair(), settings)
    conn = Connectivity(mesh, connectivity)
    conn.install()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(mesh.start())
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(conn.run)
        yield mesh, conn
        nursery.cancel_scope.cancel()


@pytest.fixture
async def two_hosts() -> AsyncIterator[tuple[Mesh, Mesh]]:
    """A worker host and a client host bootstrapped from it (real Noise + yamux over loopback TCP)."""
    async with started_hosts(2) as (worker, client):
        yield worker, client


class TrustingAttestor:
    """Takes every worker as attested. The attestation gate has its own tests (tests/node); the API tests
    are about what the HTTP surface does with the requester's events."""

    def known(self, announcement: Announcement) -> bool:
        return True

    async def is_attested(self, announcement: Announcement) -> bool:
        return True


def worker_announcement(worker: Mesh, *, model: str = MODEL, price: int = 1) -> Announcement:
    """The announcement a synthetic worker on ``worker`` would gossip (not sealed: the requester reads fields)."""
    now = int(time.time())
    return Announcement(
        peer_id=worker.peer_id.to_bytes(), addrs=tuple(worker.listen_addrs()), model=model, model_hash=b"\x01" * 32,
        backend="synthetic", synthetic=True, price_prompt=price, price_completion=price, max_concurrent=4, load=0,
        protocols=(PROTOCOL_ID,), tee_kind="dev-INSECURE", seqno=1, issued_at=now, expires_at=now + 600, payout="", v=1,
    )


@dataclass
class RequesterApp:
    """A requester's OpenAI app in this process, buying from one synthetic worker over real libp2p streams."""

    app: Any
    requester: Requester
    server: InferenceServer
    backend: SyntheticBackend
    workers: list[Announcement]

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client that drives the ASGI app directly (no socket, no server)."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://requester", **kwargs)


@pytest.fixture
async def requester_app(two_hosts: tuple[Mesh, Mesh]) -> AsyncIterator[RequesterApp]:
    """An in-process requester app: :func:`cocoon_node.api.openai_app` over a real :class:`Requester`, whose
    one worker (a :class:`SyntheticBackend` behind an :class:`InferenceServer`) is another host of this process.
    ``workers`` is the requester's live worker list: clear it to have no worker."""
    worker, client = two_hosts
    backend = SyntheticBackend(tokens_per_second=500)
    server = InferenceServer(backend, WorkerTerms(MODEL, price_prompt=1, price_completion=1, max_concurrent=4,
                                                  max_tokens_cap=512))
    worker.set_stream_handler(PROTOCOL_ID, server.handle)
    workers = [worker_announcement(worker)]

    async def open_stream(a: Announcement) -> Any:
        return await client.new_stream(a.peer, PROTOCOL_ID, a.addrs)

    requester = Requester(lambda: workers, open_stream, TrustingAttestor(), max_price_prompt=10,
                          max_price_completion=10, first_token_timeout=10)
    models = [{"id": MODEL, "object": "model", "created": 0, "owned_by": "cocoon-mesh"}]
    yield RequesterApp(openai_app(requester, api_key="sk-test", models=lambda: models), requester, server, backend,
                       workers)
