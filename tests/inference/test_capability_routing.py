"""Issue 13, capability routing: workers announce the optional OpenAI features their backend serves (announcement
v3 ``capabilities``); the requester sends a request that uses one only to workers that announced it, and when
workers serve the model but none announced it, answers 400 naming the field before any worker sees the request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
import trio
import trio.testing

from cocoon_node.api.http import serve_http
from cocoon_node.api.openai_api import openai_app
from cocoon_node.inference import SyntheticBackend, parse_chat_request
from cocoon_node.inference.features import LOGPROBS, SEED
from cocoon_node.inference.requester import Requester, lacking_capability
from cocoon_node.inference.stream import Delta, InferenceServer, WorkerTerms
from cocoon_node.mesh.announce import Announcement, payload_version
from cocoon_node.node.worker import announced_capabilities
from cocoon_node.wire import SchemaError

from .api_harness import Pipe, Trusting, announcement
from .test_capabilities_api import MODEL, ScriptedBackend


@asynccontextmanager
async def mesh(*workers: tuple[Any, tuple[str, ...]]) -> AsyncIterator[tuple[str, Requester, list[InferenceServer],
                                                                            list[Announcement]]]:
    """One requester (and its API) over several in-process workers, each announcing the given capabilities."""
    servers = [InferenceServer(backend, WorkerTerms(MODEL, 1, 1, 4, 4096)) for backend, _ in workers]
    anns = [announcement(MODEL, backend, 4, capabilities=caps, peer=10 + i)
            for i, (backend, caps) in enumerate(workers)]
    by_peer = {a.peer_id: s for a, s in zip(anns, servers, strict=True)}
    async with trio.open_nursery() as nursery:

        async def open_stream(worker: Announcement) -> Any:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(by_peer[worker.peer_id].handle, Pipe(theirs))
            return Pipe(ours)

        requester = Requester(lambda: anns, open_stream, Trusting(), max_price_prompt=10, max_price_completion=10)
        base = await nursery.start(serve_http, openai_app(requester), "127.0.0.1", 0)
        yield base + "/v1", requester, servers, anns
        nursery.cancel_scope.cancel()


def plain() -> ScriptedBackend:
    backend = ScriptedBackend()
    backend.capabilities = frozenset({SEED})
    return backend


def ask(url: str, **kw: Any) -> Any:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], **kw)


async def test_a_request_using_a_capability_goes_only_to_workers_that_announced_it() -> None:
    async with mesh((plain(), (SEED,)), (ScriptedBackend(), (LOGPROBS, SEED)), (plain(), (SEED,))) as (
            url, requester, servers, anns):
        with trio.fail_after(60):
            for _ in range(4):
                out = await trio.to_thread.run_sync(lambda: ask(url, logprobs=True, top_logprobs=1))
                assert out.choices[0].logprobs is not None
                assert out.system_fingerprint == anns[1].peer.to_base58()
            # without the feature any worker may serve it; the capable one is not the only choice
            plain_chat = parse_chat_request({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            assert len(await requester.candidates(MODEL, plain_chat.capabilities_used())) == 3
            async with requester.stream(plain_chat) as events:
                assert [ev async for ev in events if isinstance(ev, Delta)]
    with_logprobs = [sum(1 for r in s.request_log if r.features.logprobs) for s in servers]
    assert with_logprobs == [0, 4, 0] and all(s.stats.rejected == 0 for s in servers)
    assert all(requester.selector.reputation(a.peer_id).failure_rate == 0.0 for a in anns)


@pytest.mark.parametrize(("extra", "field"), [
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
async def test_a_capability_no_worker_announced_is_a_400_naming_the_field(extra: dict[str, Any], field: str) -> None:
    async with mesh((plain(), (SEED,)), (plain(), (SEED,))) as (url, requester, servers, anns):
        with trio.fail_after(60):
            with pytest.raises(openai.BadRequestError) as info:
                await trio.to_thread.run_sync(lambda: ask(url, **extra))
            with pytest.raises(openai.BadRequestError) as streamed:
                await trio.to_thread.run_sync(lambda: list(ask(url, stream=True, **extra)))
            assert (await trio.to_thread.run_sync(lambda: ask(url, seed=3))).choices[0].message.content
    for err in (info.value, streamed.value):
        body = err.body
        assert isinstance(body, dict) and body["param"] == field and body["code"] == "unsupported_parameter"
        assert body["type"] == "invalid_request_error" and "no worker serving" in body["message"]
    assert [len(s.request_log) for s in servers] in ([1, 0], [0, 1])  # only the seeded request reached a worker
    assert all(requester.selector.reputation(a.peer_id).failure_rate == 0.0 for a in anns)
    assert requester.failed == 0  # refused before any attempt: no failed request, no worker failure


def test_lacking_capability_names_what_no_single_worker_offers() -> None:
    b = plain()
    only_logprobs = announcement(MODEL, b, 1, capabilities=(LOGPROBS,), peer=1)
    only_seed = announcement(MODEL, b, 1, capabilities=(SEED,), peer=2)
    needs = {LOGPROBS: "logprobs", SEED: "seed"}
    assert lacking_capability([only_logprobs, only_seed], MODEL, needs) is not None  # nobody has both
    assert lacking_capability([only_logprobs], MODEL, {LOGPROBS: "logprobs"}) is None
    assert lacking_capability([only_seed], MODEL, needs) == (LOGPROBS, "logprobs")
    assert lacking_capability([], MODEL, needs) is None  # no worker at all: not this error (404/503 elsewhere)
    assert lacking_capability([only_seed], "other-model", needs) is None


def test_a_worker_announces_its_backends_capabilities() -> None:
    capabilities = announced_capabilities(SyntheticBackend())
    assert capabilities == (SEED,) and payload_version(tokenizer=b"", hardware=None, capabilities=capabilities) == 3
    ann = announcement(MODEL, SyntheticBackend(), 1, capabilities=(LOGPROBS, SEED))
    again = Announcement.from_wire(ann.to_wire())
    assert again.capabilities == (LOGPROBS, SEED) and again.v == 3
    wire = ann.to_wire()
    for bad in ({**wire, "v": 2, "tokenizer": b"\x01" * 32}, {k: v for k, v in wire.items() if k != "capabilities"},
                {**wire, "capabilities": ["telepathy"]}, {**wire, "capabilities": ["seed"] * 9}):
        with pytest.raises(SchemaError):
            Announcement.from_wire(bad)
