"""The stream protocol's three modules: payments reaches only the port, the worker answers with typed frames
whose free text fits the TOML's byte limits, and the old import path still names everything."""

from __future__ import annotations

import ast
from pathlib import Path

import trio
import trio.testing

import cocoon_node.inference.stream as face
from cocoon_node.inference import client, port, server
from cocoon_node.inference.port import open_frames
from cocoon_node.inference.server import InferenceServer, WorkerTerms
from cocoon_node.inference.synthetic import SyntheticBackend
from cocoon_node.wire.messages.inference import AcceptFrame, DeltaFrame, FinalFrame, RejectFrame, RequestFrame
from tests.conftest import chat_body

PACKAGE = Path(__file__).resolve().parents[2] / "cocoon_node"
TERMS = WorkerTerms(model="synthetic-echo", price_prompt=1, price_completion=1, max_concurrent=2, max_tokens_cap=64)


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


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_payments_imports_only_the_port_of_inference() -> None:
    reached = {m for f in (PACKAGE / "payments").rglob("*.py") for m in imported_modules(f)
               if m == "cocoon_node.inference" or m.startswith("cocoon_node.inference.")}
    assert reached == {"cocoon_node.inference.port"}


def test_the_port_needs_neither_end() -> None:
    inference_imports = {m for m in imported_modules(Path(port.__file__)) if m.startswith("cocoon_node.inference")}
    assert inference_imports <= {"cocoon_node.inference.chat"}  # only for a type hint (TYPE_CHECKING)
    assert "cocoon_node.inference.client" not in imported_modules(Path(server.__file__))
    assert "cocoon_node.inference.server" not in imported_modules(Path(client.__file__))


def test_the_old_import_path_names_the_same_objects() -> None:
    assert face.InferenceServer is server.InferenceServer and face.call_worker is client.call_worker
    assert face.PaymentRequired is port.PaymentRequired and face.MeterError is port.MeterError
    assert face.PROTOCOL_ID == "/cocoon/inference/1.0.0" and face.MAX_FRAME == 262144
    from cocoon_node.inference.tokencount import TokenCounter

    assert TokenCounter is port.TokenCounter


async def serve_one(request: RequestFrame) -> list[object]:
    """Send ``request`` to a worker over an in-memory stream; every frame it answers until it hangs up."""
    ours, theirs = trio.testing.memory_stream_pair()
    worker = InferenceServer(SyntheticBackend(tokens_per_second=0), TERMS)
    seen: list[object] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.handle, Pipe(theirs))
            frames = open_frames(Pipe(ours))
            await frames.send(request)
            while (frame := await frames.receive()) is not None:
                seen.append(frame)
                if isinstance(frame, FinalFrame):
                    await ours.aclose()  # hang up after the final: the worker's handler ends
                    break
    return seen


def chat(**extra: object) -> dict[str, object]:
    return chat_body("a b c", max_tokens=8, **extra)  # the shared OpenAI body (tests/conftest.py)


async def test_a_request_is_served_with_typed_frames() -> None:
    seen = await serve_one(RequestFrame(v=1, id="r1", chat=chat(), price_prompt=1, price_completion=1))
    assert isinstance(seen[0], AcceptFrame) and seen[0].keep_open and seen[0].prompt_tokens == 3
    deltas = [f for f in seen if isinstance(f, DeltaFrame)]
    final = seen[-1]
    assert isinstance(final, FinalFrame) and final.completion_tokens == sum(d.tokens for d in deltas) > 0
    assert all(getattr(f, "id", None) == "r1" for f in seen)


async def test_a_reject_naming_a_long_multibyte_field_still_arrives() -> None:
    """The offending field is the peer's own key: 100 'é' are 200 UTF-8 bytes, over the reject's 128-byte
    ``field``. It is cut to fit (whole characters), so the requester reads a reject, not a protocol error."""
    seen = await serve_one(RequestFrame(v=1, id="r2", chat=chat(**{"é" * 100: 1}), price_prompt=1,
                                        price_completion=1))
    assert len(seen) == 1
    reject = seen[0]
    assert isinstance(reject, RejectFrame) and reject.code == "invalid_request"
    assert reject.field == "é" * 64 and len(reject.field.encode()) == 128


def test_the_worker_keeps_only_its_last_requests() -> None:
    """The request log holds prompts: bounded, so a long-running worker neither grows nor keeps them all."""
    from cocoon_node.inference import SyntheticBackend
    from cocoon_node.inference.chat import parse_chat_request
    from cocoon_node.inference.server import REQUEST_LOG_LENGTH

    server = InferenceServer(SyntheticBackend(), WorkerTerms("m", price_prompt=1, price_completion=1,
                                                             max_concurrent=1, max_tokens_cap=8))
    for i in range(REQUEST_LOG_LENGTH + 10):
        server.request_log.append(parse_chat_request({"model": "m", "messages": [{"role": "user",
                                                                                  "content": f"p{i}"}]}))
    assert len(server.request_log) == REQUEST_LOG_LENGTH
    assert server.request_log[0].messages[0].content == "p10"
