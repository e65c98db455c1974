"""A stream that dies while a voucher is being written (the worker, or a relay between us, vanished) ends the
call with a clean WorkerFailure, not a raw transport error that escapes the API (seen in the nat scenario:
an ASGI error and an SSE stream cut without an error chunk when a relay was killed mid-stream)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from libp2p.network.stream.exceptions import StreamError

from cocoon_node.inference.audit import TokenAudit
from cocoon_node.inference.chat import ChatMessage, ChatRequest
from cocoon_node.inference.stream import InferenceCall, WorkerFailure


class DeadStream:
    """Frames whose every send fails the way py-libp2p fails a write on a reset stream."""

    async def send(self, frame: dict[str, Any]) -> None:
        raise StreamError("Write operation failed: ")


class PaysPrompt:
    async def on_accept(self, prompt_tokens: int) -> bytes | None:
        return b"voucher"

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        return b"voucher"


async def test_voucher_write_on_a_dead_stream_is_a_worker_failure() -> None:
    audit = TokenAudit(ChatRequest("synthetic-echo", (ChatMessage("user", "hello"),)))
    call = InferenceCall(DeadStream(), "r1", 10, time.monotonic(), PaysPrompt(),  # type: ignore[arg-type]
                         first_token_timeout=5, token_timeout=5, audit=audit)
    with pytest.raises(WorkerFailure) as err:
        await call.pay()
    assert err.value.code == "worker_gone" and err.value.before_first_token
