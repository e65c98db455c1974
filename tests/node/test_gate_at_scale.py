"""Issue 15 (netsim scale at 100 nodes): the attestation gate keeps looking for reports it could not find, asks
enough workers at once, and asks a worker itself when the DHT is slow; the worker's answer must carry fresh
evidence over our nonce and is verified like any DHT record. In process, on trio's autojump clock (the gate's
wall clock follows it), with the project's gate, publisher and fresh-attestation server."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.peer.id import ID

from cocoon_node.attestation import AttestationError
from cocoon_node.node.fresh_attest import FreshAttestServer, report_from_worker
from tests.waiting import wait_until

from .gate_helpers import T0, FakeDht, Worker, gate_over, local_dev_policy


def wall() -> float:
    """The gate's wall clock, on the test's (virtual) trio clock."""
    return T0 + trio.current_time()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_report_not_found_at_first_is_looked_for_again_without_a_new_announcement(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """At scale a worker's first put may not have landed when a requester first looks (pool processes busy at
    start); the gate looked again only at the worker's next announcement, a minute later with a 60 s beat,
    and a lookup that timed out then waited another minute. It now re-checks in the background, with backoff,
    while the announcement lives."""
    w = Worker(tmp_path)
    dht = FakeDht()
    gate = gate_over(dht, clock=wall)  # type: ignore[arg-type]
    a = w.announcement(now=T0, expires_at=T0 + 180)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.run_prefetcher)
        gate.prefetch(a)
        await wait_until(lambda: gate.fetches >= 1 and gate.verdict(w.peer_id) is not None, timeout=10)
        assert gate.known(a) is False and gate.verdict(w.peer_id).check == "missing"  # type: ignore[union-attr]
        dht.records[w.key] = w.report(now=T0)  # the put lands; no new announcement comes
        await wait_until(lambda: gate.known(a) is True, timeout=60)
        assert gate.counters()["retries"] >= 1
        nursery.cancel_scope.cancel()


async def test_re_checks_stop_when_the_announcement_expires(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A worker that never publishes (or went away) costs a bounded number of lookups, not one forever."""
    w = Worker(tmp_path)
    dht = FakeDht()
    gate = gate_over(dht, clock=wall)  # type: ignore[arg-type]
    a = w.announcement(now=T0, expires_at=T0 + 60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.run_prefetcher)
        gate.prefetch(a)
        await wait_until(lambda: gate.fetches >= 2, timeout=30)
        await trio.sleep(600)
        assert gate.counters()["retrying"] == 0, gate.counters()
        # backoff 3, 6, 12, 24 s (+-20 %) fits at most 5 lookups into the 60 s the announcement lives
        assert 2 <= gate.fetches <= 5, gate.counters()
        nursery.cancel_scope.cancel()


async def test_the_prefetcher_checks_sixteen_workers_at_once(tmp_path: Path) -> None:
    """With 4 at a time and 10 s per lookup that times out, 98 workers took 4 minutes to be tried once."""
    dht = FakeDht()
    dht.blocked = True
    gate = gate_over(dht)
    workers = [Worker(tmp_path) for _ in range(20)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gate.run_prefetcher)
            for w in workers:
                gate.prefetch(w.announcement())
            await wait_until(lambda: len(dht.lookups) >= 16, timeout=5)
            await trio.testing.wait_all_tasks_blocked()
            assert len(dht.lookups) == 16
            nursery.cancel_scope.cancel()


async def test_a_slow_dht_is_bypassed_by_asking_the_worker_itself(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The DHT lookup hangs (busy peers); after ``direct_after`` the gate asks the worker, and what it answers
    is verified like a DHT record: the worker's own report passes, another peer's report does not."""
    w, other = Worker(tmp_path), Worker(tmp_path)
    dht = FakeDht()
    dht.blocked = True
    asked: list[bytes] = []

    async def direct(peer_id: bytes) -> bytes:
        asked.append(peer_id)
        return w.report(now=T0)  # whoever is asked answers with w's report: right only for w itself

    gate = gate_over(dht, clock=wall, direct=direct)  # type: ignore[arg-type]
    with trio.fail_after(30):
        assert await gate.is_attested(w.announcement(now=T0)) is True
        assert asked == [w.peer_id] and gate.counters()["direct_found"] == 1
        assert trio.current_time() == pytest.approx(gate.direct_after)  # not after the 10 s lookup timeout
        assert await gate.is_attested(other.announcement(now=T0)) is False
        verdict = gate.verdict(other.peer_id)
        assert verdict is not None and not verdict.ok and verdict.check != "missing", verdict


async def test_without_a_direct_fetch_a_hung_lookup_times_out_as_missing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    w = Worker(tmp_path)
    dht = FakeDht()
    dht.blocked = True
    gate = gate_over(dht, clock=wall)  # type: ignore[arg-type]
    with trio.fail_after(30):
        assert await gate.is_attested(w.announcement(now=T0)) is False
    assert gate.verdict(w.peer_id).check == "missing"  # type: ignore[union-attr]
    assert trio.current_time() == pytest.approx(gate.lookup_timeout)


class _Pipe:
    """One end of an in-memory byte stream, shaped like a libp2p stream."""

    def __init__(self, stream: Any, peer: ID) -> None:
        self._s = stream
        self.muxed_conn = SimpleNamespace(peer_id=peer)

    async def read(self, n: int | None = None) -> bytes:
        return bytes(await self._s.receive_some(n or 65536))

    async def write(self, data: bytes) -> None:
        await self._s.send_all(data)

    async def close(self) -> None:
        await self._s.aclose()

    async def reset(self) -> None:
        await self._s.aclose()


class _Publisher:
    """The worker's evidence source, as ReportPublisher: its current report and dev-TEE evidence."""

    def __init__(self, w: Worker, *, replay: bytes | None = None) -> None:
        from cocoon_node.node.attest import ReportPublisher

        self._pub = ReportPublisher(SimpleNamespace(peer_id=w.peer), w.key_pair,  # type: ignore[arg-type]
                                    tee=w.tee, model_name=w.model_name, model_hash=w.weights, data_dir=w.tmp_path)
        self.current: bytes | None = self._pub.make_report()
        self._replay = replay

    def evidence(self, report_data: bytes) -> bytes:
        # a replaying worker answers with evidence it made earlier, over another nonce
        return self._replay if self._replay is not None else self._pub.evidence(report_data)


async def _ask(w: Worker, source: _Publisher) -> bytes:
    server = FreshAttestServer(source)
    requester_peer = ID.from_pubkey(Worker(w.tmp_path).key_pair.public_key)
    async with trio.open_nursery() as nursery:
        async def open_stream() -> _Pipe:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle, _Pipe(theirs, requester_peer))
            return _Pipe(ours, w.peer)

        return await report_from_worker(open_stream, w.peer_id, local_dev_policy())


async def test_a_worker_answers_with_its_report_and_fresh_evidence_over_our_nonce(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    source = _Publisher(w)
    with trio.fail_after(10):
        assert await _ask(w, source) == source.current


async def test_a_worker_replaying_old_evidence_is_refused(tmp_path: Path) -> None:
    """Evidence over another nonce (a copy of an old answer) proves nothing now: no report is taken from it."""
    w = Worker(tmp_path)
    honest = _Publisher(w)
    from cocoon_node.attestation.fresh import nonce_report_data

    assert honest.current is not None
    old = honest.evidence(nonce_report_data(honest.current, b"\x07" * 32))
    replaying = _Publisher(w, replay=old)
    replaying.current = honest.current
    with trio.fail_after(10), pytest.raises(BaseExceptionGroup) as raised:  # raised inside _ask's nursery
        await _ask(w, replaying)
    assert raised.group_contains(AttestationError, match="report_data"), raised.value
