"""The requester's own count of claimed tokens (inference/audit.py) and what the requester does with a worker
that claims more: the call fails, nothing beyond the bound is charged, and the worker is dropped."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from cocoon_node.inference.audit import HELD_BACK_TOKENS, TEMPLATE_TOKENS, Overcount, TokenAudit
from cocoon_node.inference.requester import Requester
from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer, WorkerTerms
from cocoon_node.inference.synthetic import SyntheticBackend
from cocoon_node.inference.tokencount import SYNTHETIC_TOKENIZER, TokenizerRegistry, WhitespaceCounter
from cocoon_node.mesh.announce import Announcement
from cocoon_node.wire import FrameStream
from cocoon_node.wire.messages.inference import CODEC, AcceptFrame, InferenceFrame
from tests.conftest import chat_request

MODEL = "synthetic-echo"


chat = chat_request  # the shared helper (tests/conftest.py; the same model, MODEL)


def test_without_a_tokenizer_counts_are_bounded_by_bytes_template_and_max_tokens() -> None:
    audit = TokenAudit(chat("hello world"))
    assert audit.prompt_bound() == TEMPLATE_TOKENS + len("hello world") + len("user") + 8
    with pytest.raises(Overcount, match="prompt tokens"):
        audit.check_prompt(audit.prompt_bound() + 1)
    assert audit.check_prompt(2) == 2
    assert audit.add_delta("hi", 1) == 1
    assert audit.add_delta("", 1) == 2  # a token whose bytes are held back (or an end-of-sequence token)
    with pytest.raises(Overcount, match="completion tokens"):
        audit.add_delta("x", 100_000)
    assert audit.completion_tokens == 3 + HELD_BACK_TOKENS  # clamped to what we can account for
    capped = TokenAudit(chat("a b c", max_tokens=3))
    capped.add_delta("a" * 50, 3)
    with pytest.raises(Overcount, match="max_tokens 3"):
        capped.add_delta("b", 1)


def test_with_the_workers_tokenizer_the_requester_counts_exactly() -> None:
    audit = TokenAudit(chat("one two three"), WhitespaceCounter())
    assert audit.prompt_bound() == 3
    with pytest.raises(Overcount):
        audit.check_prompt(4)
    total = 0
    for i, word in enumerate(("alpha", " beta", " gamma", " delta", " eps")):
        total = audit.add_delta(word, 1)
        assert total == i + 1
    # Two tokens per word passes a byte bound (a word is 5 bytes) but not our own count of words.
    inflated = TokenAudit(chat("x"), WhitespaceCounter())
    with pytest.raises(Overcount):
        for word in ["w1"] + [f" w{i}" for i in range(2, 40)]:
            inflated.add_delta(word, 2)
    assert inflated.completion_tokens <= 40 + HELD_BACK_TOKENS + 40 // 32


def test_registry_knows_the_synthetic_tokenizer_and_loads_files_only_when_asked() -> None:
    reg = TokenizerRegistry(files=())
    assert isinstance(reg.counter(SYNTHETIC_TOKENIZER), WhitespaceCounter)
    assert reg.counter(b"") is None and reg.counter(b"\x01" * 32) is None
    assert SyntheticBackend().tokenizer_hash == SYNTHETIC_TOKENIZER


# ----- a Requester meeting an over-claiming worker, over in-memory streams ------------------------------------


class Pipe:
    """One end of an in-memory stream with the read/write/close surface of a libp2p stream."""

    def __init__(self, s: trio.abc.Stream) -> None:
        self.s = s

    async def read(self, n: int | None = None) -> bytes:
        return await self.s.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self.s.send_all(data)

    async def close(self) -> None:
        await self.s.aclose()


class InflatingFrames(FrameStream[InferenceFrame]):
    async def send(self, frame: InferenceFrame) -> None:
        if isinstance(frame, AcceptFrame):
            frame = msgspec.structs.replace(frame, prompt_tokens=10**7)
        await super().send(frame)


class InflatingServer(InferenceServer):
    async def handle(self, raw_stream: Any) -> None:
        try:
            await self._serve(InflatingFrames(raw_stream, CODEC))
        except Exception:
            pass
        finally:
            await raw_stream.close()


def announcement(n: int) -> Announcement:
    now = int(time.time())
    return Announcement(
        peer_id=bytes([0, 36, 8, 1, 18, 32]) + bytes([n]) * 32, addrs=(), model=MODEL, model_hash=b"\x01" * 32,
        backend="synthetic", synthetic=True, price_prompt=1, price_completion=1, max_concurrent=4, load=0,
        protocols=(PROTOCOL_ID,), tee_kind="dev-INSECURE", seqno=1, issued_at=now, expires_at=now + 60, payout="", v=1,
    )


class Trusting:
    def known(self, a: Announcement) -> bool:
        return True

    async def is_attested(self, a: Announcement) -> bool:
        return True


async def test_a_worker_that_over_claims_is_dropped_and_the_request_goes_elsewhere() -> None:
    terms = WorkerTerms(MODEL, 1, 1, 4, 512)
    cheat, honest = announcement(1), announcement(2)
    servers = {cheat.peer_id: InflatingServer(SyntheticBackend(), terms),
               honest.peer_id: InferenceServer(SyntheticBackend(), terms)}
    opened: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def open_stream(worker: Announcement) -> Any:
            opened.append(worker.peer_id)
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(servers[worker.peer_id].handle, Pipe(theirs))
            return Pipe(ours)

        requester = Requester(lambda: [cheat, honest], open_stream, Trusting(), max_price_prompt=10,
                              max_price_completion=10)
        requester.selector.reputation(honest.peer_id).record_failure(timeout=False)  # the cheat ranks first
        with trio.fail_after(10):
            for _ in range(2):
                async with requester.stream(chat("one two three")) as events:
                    got = [e async for e in events]
                assert got[0].worker == honest  # type: ignore[union-attr]
        assert opened == [cheat.peer_id, honest.peer_id, honest.peer_id]  # never again after the first lie
        assert cheat.peer_id in requester.selector.dropped and "10000000 prompt tokens" in \
            requester.selector.dropped[cheat.peer_id]
        nursery.cancel_scope.cancel()


