"""Adversaries netsim can field: a fake model upstream behind a bad-hash worker, and a gossip junk flooder.

The fake upstream lets a real ``cocoon-node`` worker announce the *same model name* as the good workers but
with a weight hash outside the requesters' policy (the openai-upstream backend hashes its configuration, not
the synthetic one). Any prompt that reaches it is counted, so "no prompt reached a disallowed worker" is
checked at the far end as well as from the worker's own counters.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cocoon_node.api.http import serve_http
from cocoon_node.inference.stream import PROTOCOL_ID
from cocoon_node.mesh import WORKERS_TOPIC, Announcement, Mesh, MeshSettings

log = logging.getLogger(__name__)


class FakeUpstream:
    """An OpenAI-compatible server that lists ``model`` and counts every chat request it receives."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.requests = 0
        self.url: str | None = None

    def app(self) -> Starlette:
        async def models(request: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}]})

        async def chat(request: Request) -> Response:
            self.requests += 1
            chunk = {"choices": [{"index": 0, "delta": {"content": "LEAKED"}, "finish_reason": "stop"}]}
            body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
            return Response(body, media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(serve_http, self.app(), "127.0.0.1", 0)
            self.url = url
            task_status.started(url + "/v1")


class JunkFlooder:
    """An in-process mesh node that joins the workers topic and publishes junk at ``rate`` per second.

    It has no topic validator of its own, so its junk really leaves it; the honest nodes' validators must
    drop it (and GossipSub scoring should graylist the flooder). Kinds: ``garbage`` (random bytes),
    ``forged`` (an announcement naming a victim's peer id, signed by the flooder), ``expired``, ``replay``
    (the same valid announcement again), ``wrong_signer`` (a valid envelope relayed under the flooder's id
    but signed by a throwaway key).
    """

    def __init__(self, bootstrap: Sequence[str], victims: Sequence[bytes], rng: random.Random,
                 kinds: Sequence[str]) -> None:
        self._bootstrap = tuple(bootstrap)
        self._victims = list(victims) or [b"\x00" * 38]
        self._rng = rng
        self._kinds = list(kinds)
        self._key = create_new_key_pair()
        self._throwaway = create_new_key_pair()
        self.sent: Counter[str] = Counter()
        self.errors = 0
        self._replay: bytes | None = None
        self.mesh: Mesh | None = None

    def _announcement(self, peer_id: bytes, *, expired: bool = False, seqno: int = 1) -> Announcement:
        now = int(time.time())
        issued, expires = (now - 100, now - 50) if expired else (now, now + 15)
        addrs = tuple(self.mesh.listen_addrs()[:1]) if self.mesh and self.mesh.host else ()
        return Announcement(
            peer_id=peer_id, addrs=addrs, model="synthetic-echo", model_hash=b"\x66" * 32,
            backend="synthetic", synthetic=True, price_prompt=0, price_completion=0, max_concurrent=99, load=0,
            protocols=(PROTOCOL_ID,), tee_kind="dev-INSECURE", seqno=seqno, issued_at=issued, expires_at=expires,
            payout="", v=1,
        )

    def junk(self, kind: str) -> bytes:
        me = self._key.public_key
        from libp2p.peer.id import ID

        my_id = ID.from_pubkey(me).to_bytes()
        if kind == "garbage":
            return self._rng.randbytes(self._rng.randint(1, 2000))
        if kind == "forged":
            victim = self._rng.choice(self._victims)
            return self._announcement(victim, seqno=time.time_ns()).seal(self._key.private_key)
        if kind == "expired":
            return self._announcement(my_id, expired=True, seqno=time.time_ns()).seal(self._key.private_key)
        if kind == "replay":
            if self._replay is None:
                self._replay = self._announcement(my_id, seqno=1).seal(self._key.private_key)
            return self._replay
        if kind == "wrong_signer":
            other = ID.from_pubkey(self._throwaway.public_key).to_bytes()
            return self._announcement(other, seqno=time.time_ns()).seal(self._throwaway.private_key)
        raise ValueError(f"unknown junk kind {kind!r}")

    async def run(self, duration: float, rate: float) -> dict[str, Any]:
        """Join, flood for ``duration`` seconds, leave; returns what was sent."""
        settings = MeshSettings(bootstrap=self._bootstrap, local_cluster=True, topics=(WORKERS_TOPIC,))
        mesh = Mesh(self._key, settings)
        self.mesh = mesh
        async with AsyncExitStack() as stack:
            # No deadline around entering: the mesh's nurseries must outlive any scope opened here.
            await stack.enter_async_context(mesh.start())
            with trio.move_on_after(10):
                while mesh.topic_peers(WORKERS_TOPIC) == 0:
                    await trio.sleep(0.2)
            deadline = trio.current_time() + duration
            interval = 1.0 / rate if rate > 0 else 1.0
            while trio.current_time() < deadline:
                kind = self._rng.choice(self._kinds)
                try:
                    with trio.fail_after(5):
                        await mesh.publish(WORKERS_TOPIC, self.junk(kind))
                    self.sent[kind] += 1
                except Exception as exc:  # the flooder being refused is part of the experiment
                    self.errors += 1
                    log.debug("flooder publish failed: %s", exc)
                await trio.sleep(interval)
        return {"peer_id": mesh.peer_id.to_base58(), "sent": dict(self.sent), "publish_errors": self.errors}
