"""The worker's side of /cocoon/attest/1.0.0: bounded, rate-limited, and a failing TEE is an answer, not a crash."""

from __future__ import annotations

import trio
from libp2p.peer.id import ID

from cocoon_node.attestation.fresh import nonce_report_data
from cocoon_node.node.fresh_attest import FreshAttestServer
from cocoon_node.wire.messages.attest import AttestError, AttestRequest, AttestResponse

PEER = ID(b"\x00\x24" + bytes(36))
REQ = AttestRequest(v=1, nonce=bytes(range(32)))


class Source:
    def __init__(self, current: bytes | None = b"report", fail: bool = False) -> None:
        self.current = current
        self.fail = fail
        self.asked: list[bytes] = []
        self.release = trio.Event()

    def evidence(self, report_data: bytes) -> bytes:
        self.asked.append(report_data)
        if self.fail:
            raise RuntimeError("configfs-tsm not available")
        return b"evidence"


async def test_answers_binds_the_nonce_and_refuses_what_it_must() -> None:
    src = Source()
    server = FreshAttestServer(src, rate_per_minute=2)
    answer = await server._answer(PEER, REQ)
    assert answer == AttestResponse(report=b"report", evidence=b"evidence")
    assert src.asked == [nonce_report_data(b"report", REQ.nonce)]
    await server._answer(PEER, REQ)
    busy = await server._answer(PEER, REQ)  # third in a minute from one peer
    assert isinstance(busy, AttestError) and busy.code == "busy"
    assert isinstance(await server._answer(ID(b"\x00\x24" + b"\x01" * 36), REQ), AttestResponse)  # others go on
    none = await FreshAttestServer(Source(current=None))._answer(PEER, REQ)
    assert isinstance(none, AttestError) and none.code == "no_report"
    tee = await FreshAttestServer(Source(fail=True))._answer(PEER, REQ)
    assert isinstance(tee, AttestError) and tee.code == "tee" and "configfs-tsm" in tee.message


async def test_concurrency_is_bounded() -> None:
    gate, in_thread = trio.Event(), trio.Event()

    class Slow(Source):
        def evidence(self, report_data: bytes) -> bytes:  # runs in a worker thread, like configfs-tsm
            trio.from_thread.run_sync(in_thread.set)
            trio.from_thread.run(gate.wait)
            return b"e"

    server = FreshAttestServer(Slow(), max_concurrent=1)
    results: list[object] = []

    async def one() -> None:
        results.append(await server._answer(ID(b"\x00\x24" + bytes([len(results)]) * 36), REQ))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            await in_thread.wait()  # the first answer is now in its thread, holding the only slot
            second = await server._answer(ID(b"\x00\x24" + b"\x07" * 36), REQ)
            assert isinstance(second, AttestError) and second.code == "busy"
            gate.set()
    assert isinstance(results[0], AttestResponse)
