"""Issue 16: the gate hands the requester's receipt check the worker's verified report by hash, including a
report the worker re-published since the gate last looked, and nothing for a hash it cannot verify."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import trio

from .gate_helpers import T0, Clock, FakeDht, Worker, gate_over


async def test_the_gate_finds_the_report_a_receipt_names(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    dht, clock = FakeDht(), Clock(T0)
    first = w.report(now=T0)
    dht.records[w.key] = first
    gate = gate_over(dht, clock=clock)
    with trio.fail_after(10):
        assert await gate.is_attested(w.announcement())
        assert await gate.attested_report(w.peer_id, hashlib.sha256(first).digest()) == first
        # the worker re-publishes (a new report, so a new hash in its receipts): the newest is fetched
        clock.now = T0 + 60
        second = w.report(now=T0 + 60)
        dht.records[w.key] = second
        assert await gate.attested_report(w.peer_id, hashlib.sha256(second).digest()) == second
        # a hash no verified report of this worker has: nothing (the receipt check blames the worker)
        assert await gate.attested_report(w.peer_id, bytes(32)) is None
        # another worker's report is not this worker's, whatever its hash
        other = Worker(tmp_path)
        theirs = other.report(now=T0 + 60)
        dht.records[other.key] = theirs
        assert await gate.attested_report(w.peer_id, hashlib.sha256(theirs).digest()) is None


async def test_a_report_the_policy_refuses_is_never_handed_out(tmp_path: Path) -> None:
    w = Worker(tmp_path, model_name="not-allowed-anywhere", weights=b"\x07" * 32)
    dht = FakeDht()
    rep = w.report(now=T0)
    dht.records[w.key] = rep
    gate = gate_over(dht, policy=None, clock=Clock(T0), retry_rejected=0.0)
    gate.policy = replace(gate.policy, tee_kinds=frozenset({"tdx"}))
    with trio.fail_after(10):
        assert await gate.attested_report(w.peer_id, hashlib.sha256(rep).digest()) is None
