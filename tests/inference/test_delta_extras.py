"""The delta frame's optional tool_calls / logprobs (issue 13): field limits enforced on the wire, clamping
where they are made, the requester's token audit counting tool-call text, and the worker's coalescing
keeping frames well under the delta limit however heavy the extras."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from cocoon_node.inference import ChatRequest, TokenDelta, parse_chat_request
from cocoon_node.inference.audit import HELD_BACK_TOKENS, TOOL_CALL_TOKENS, Overcount, TokenAudit
from cocoon_node.inference.backend import SlotCounter, stream_from_producer
from cocoon_node.inference.extras import (
    MAX_TOKEN_BYTES,
    MIN_LOGPROB,
    ToolCallAccumulator,
    ToolCallDelta,
    from_frame,
    make_logprob,
    merge_tool_calls,
)
from cocoon_node.inference.features import ALL_CAPABILITIES
from cocoon_node.inference.stream import InferenceServer, WorkerTerms, call_worker
from cocoon_node.wire import FrameError, decode_frame, encode_frame
from cocoon_node.wire.messages.inference import CODEC, DeltaFrame

from .api_harness import Pipe

DELTA_LIMIT = 65536  # protocols/inference.toml, messages.delta.max_bytes


def delta(**extra: Any) -> dict[str, Any]:
    return {"t": "delta", "id": "r", "text": "", "tokens": 1, **extra}


@pytest.mark.parametrize("frame", [
    delta(logprobs=[{"token": "a", "logprob": 0.5, "top": []}]),  # a probability above 1
    delta(logprobs=[{"token": "a", "logprob": -1.0}]),  # top missing
    delta(logprobs=[{"token": "a", "logprob": -1.0, "top": [{"token": "b", "logprob": -2.0}] * 21}]),
    delta(logprobs=[{"token": "x" * 257, "logprob": -1.0, "top": []}]),
    delta(tool_calls=[{"index": 128}]),
    delta(tool_calls=[{"index": 0, "name": "f", "type": "function"}]),  # an unknown key
    delta(tool_calls=[{"index": 0, "name": "n" * 65}]),
    delta(tool_calls=[{"index": 0}] * 65),
], ids=["logprob-positive", "top-missing", "top-21", "token-long", "index-128", "unknown-key", "name-long",
        "too-many-pieces"])
def test_bad_extras_are_refused_on_the_wire(frame: dict[str, Any]) -> None:
    body = msgpack.packb(frame, use_bin_type=True)
    with pytest.raises(FrameError):
        CODEC.decode(body)  # the typed codec the stream uses
    with pytest.raises(FrameError):
        encode_frame("inference", frame)  # the TOML's schema agrees
    with pytest.raises(FrameError):
        decode_frame("inference", body)


def test_extras_are_clamped_where_they_are_made() -> None:
    lp = make_logprob("é" * 200, float("-inf"), b"\xff" * 300, [("a", float("nan"), None)] * 30)
    assert lp.logprob == MIN_LOGPROB and lp.top[0].logprob == MIN_LOGPROB and len(lp.top) == 20
    assert len(lp.token.encode()) <= MAX_TOKEN_BYTES and lp.bytes is not None and len(lp.bytes) == MAX_TOKEN_BYTES
    assert make_logprob("\ud800", -1.0, None, []).token == "?"  # a lone surrogate could not be encoded
    frame = DeltaFrame(id="r", text="", tokens=1, logprobs=[lp.to_frame()])
    assert from_frame(CODEC.decode(CODEC.encode(frame)[4:]))[1] == (lp,)


def test_tool_call_pieces_merge_and_accumulate() -> None:
    pieces = [ToolCallDelta(0, "c0", "f", '{"a"'), ToolCallDelta(0, arguments=": 1}"),
              ToolCallDelta(1, "c1", "g", "{}")]
    assert merge_tool_calls(pieces) == [ToolCallDelta(0, "c0", "f", '{"a": 1}'), ToolCallDelta(1, "c1", "g", "{}")]
    acc = ToolCallAccumulator()
    acc.add(pieces)
    assert acc.result() == [{"id": "c0", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                            {"id": "c1", "type": "function", "function": {"name": "g", "arguments": "{}"}}]


def test_audit_counts_tool_call_text() -> None:
    audit = TokenAudit(parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    args = '{"city": "Oslo"}'
    # the call's name and arguments are streamed text; a call's markup earns TOOL_CALL_TOKENS more
    bound = len("get_weather") + len(args) + HELD_BACK_TOKENS + TOOL_CALL_TOKENS
    audit.add_delta("", bound, tool_calls=[ToolCallDelta(0, "c", "get_weather", args)])
    with pytest.raises(Overcount):
        audit.add_delta("", 1, tool_calls=[ToolCallDelta(0, arguments="")])


class HeavyBackend:
    """200 one-token deltas, each with 20 long alternatives: far more than one frame if coalesced blindly."""

    kind = "heavy"
    synthetic = False
    capabilities = ALL_CAPABILITIES
    model_name = "heavy"
    max_batch = 1
    tokens_generated = 0

    def __init__(self) -> None:
        self._slots = SlotCounter(1)
        self.all_made = trio.Event()

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    async def load(self) -> None: ...

    def model_files(self) -> list[Any]:
        return []

    def count_tokens(self, req: ChatRequest) -> int:
        return 3

    @asynccontextmanager
    async def generate(self, req: ChatRequest) -> AsyncIterator[AsyncIterator[TokenDelta]]:
        alts = [("é" * 120, -2.0, b"\xc3" * 200)] * 20

        async def produce(send: trio.MemorySendChannel[TokenDelta]) -> None:
            for i in range(200):
                last = i == 199
                await send.send(TokenDelta("ab", 1, "length" if last else None, 3 if last else None,
                                           logprobs=(make_logprob("ab", -0.5, b"ab", alts),)))
            self.all_made.set()

        async with self._slots.slot(), stream_from_producer(produce, buffer_size=256) as stream:
            yield stream

    async def aclose(self) -> None: ...


class Recording(Pipe):
    """The worker's side of the stream: records frame sizes; holds the first delta back until ``gate`` is
    set (a slow link), so the deltas made meanwhile pile up in the worker's queue and must be coalesced."""

    def __init__(self, stream: Any, sizes: list[int], gate: trio.Event) -> None:
        super().__init__(stream)
        self.sizes = sizes
        self.gate = gate

    async def write(self, data: bytes) -> None:
        if self.sizes:  # the accept went out; deltas wait
            await self.gate.wait()
        self.sizes.append(len(data) - 4)  # one frame per write, without its length prefix
        await super().write(data)


async def test_coalescing_keeps_frames_under_the_delta_limit() -> None:
    backend = HeavyBackend()
    server = InferenceServer(backend, WorkerTerms("heavy", 1, 1, 1, 4096))
    sizes: list[int] = []
    req = parse_chat_request({"model": "heavy", "messages": [{"role": "user", "content": "x"}], "max_tokens": 200,
                              "logprobs": True, "top_logprobs": 20})
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, Recording(theirs, sizes, backend.all_made))
        with trio.fail_after(60):
            async with call_worker(Pipe(ours), req, price_prompt=1, price_completion=1) as call:
                got = [d async for d in call.deltas()]
    assert sum(len(d.logprobs) for d in got) == 200 == sum(d.tokens for d in got)
    assert len(got) < 200  # coalesced...
    assert max(sizes) < DELTA_LIMIT  # ...but never past the frame limit


def test_prompt_bound_and_upstream_estimate_count_the_tools() -> None:
    """Tool definitions are rendered into the prompt: an honest worker counting them must stay within the
    requester's bound (the upstream's estimate counts them as well)."""
    from cocoon_node.inference import OpenAIUpstreamBackend

    tool = {"type": "function", "function": {"name": "f", "description": "d" * 2000}}
    plain = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    tooled = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]})
    assert TokenAudit(tooled).prompt_bound() >= TokenAudit(plain).prompt_bound() + 2000
    upstream = OpenAIUpstreamBackend("http://127.0.0.1:1/v1", "m")
    assert upstream.count_tokens(tooled) >= upstream.count_tokens(plain) + 500
    TokenAudit(tooled).check_prompt(upstream.count_tokens(tooled))
