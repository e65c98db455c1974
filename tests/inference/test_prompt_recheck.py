"""Issue 21: the verdict is re-checked right before the prompt is written. Between choosing a worker and
the first write the requester awaits its payment channel and the stream; a verdict that expires or a
policy that changes meanwhile (the registry's owner removing the model) must stop the prompt."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from cocoon_node.inference.chat import parse_chat_request
from cocoon_node.inference.requester import Requester
from cocoon_node.inference.stream import WorkerFailure
from cocoon_node.mesh import Announcement
from tests.node.gate_helpers import T0, Clock, FakeDht, Worker, gate_over


class RecordingStream:
    """Stands in for a libp2p stream: keeps every byte written; the worker hangs up on any read."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reset_called = False

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    async def read(self, n: int = -1) -> bytes:
        return b""

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        self.reset_called = True


@pytest.mark.parametrize("change", ["report_expired", "policy_changed"])
async def test_no_prompt_is_written_when_the_verdict_no_longer_holds(tmp_path: Path, change: str) -> None:
    w = Worker(tmp_path, model_name="synthetic-echo")
    dht, clock = FakeDht(), Clock(T0)
    dht.records[w.key] = w.report(now=T0, lifetime=60)
    gate = gate_over(dht, clock=clock)
    announcement = w.announcement()
    streams: list[RecordingStream] = []

    async def meter_for(_: Announcement) -> Any:
        # The payment channel takes a while to open; meanwhile the verdict stops holding.
        if change == "report_expired":
            clock.now = T0 + 120
            del dht.records[w.key]
        else:
            # the registry's owner removed these weights: the gate's policy no longer allows them
            gate.set_policy(replace(gate.policy, model_hashes=frozenset({bytes(32)})))
        return None

    async def open_stream(_: Announcement) -> RecordingStream:
        streams.append(RecordingStream())
        return streams[-1]

    requester = Requester(lambda: [announcement], open_stream, gate, meter_factory=meter_for,
                          max_price_prompt=10, max_price_completion=10)
    chat = parse_chat_request({"model": "synthetic-echo", "messages": [{"role": "user", "content": "secret"}]})
    with trio.fail_after(10):
        assert await requester.candidates("synthetic-echo") == [announcement]  # chosen while attested
        with pytest.raises(WorkerFailure) as ei:
            async with requester.stream(chat) as events:
                async for _ in events:
                    pass
    assert ei.value.code == "attestation" and ei.value.before_first_token
    assert streams and all(s.written == [] for s in streams)  # not one byte of the prompt left
    assert all(s.reset_called for s in streams)
    assert requester.selector.reputation(w.peer_id).failure_rate == 0  # not the worker's fault
