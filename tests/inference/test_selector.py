"""WorkerSelector ranking: reputation decides between workers, price only breaks near-ties."""

from __future__ import annotations

import math
import time

import trio
import trio.testing

from cocoon_node.inference.requester import Requester, WorkerSelector
from cocoon_node.inference.stream import PROTOCOL_ID
from cocoon_node.mesh.announce import Announcement


def worker(n: int, price: int) -> Announcement:
    now = int(time.time())
    return Announcement(
        peer_id=bytes([0, 36, 8, 1, 18, 32]) + bytes([n]) * 32, addrs=(), model="synthetic-echo",
        model_hash=b"\x01" * 32, backend="synthetic", synthetic=True, price_prompt=price, price_completion=price,
        max_concurrent=4, load=0, protocols=(PROTOCOL_ID,), tee_kind="dev-INSECURE", seqno=1,
        issued_at=now, expires_at=now + 60, payout="", v=1,
    )


def test_a_worker_that_only_failed_ranks_below_one_that_answers_slowly() -> None:
    """Regression: a worker with failures and no success scored a 0 ms TTFT (speed 10), so one failure left a
    cheap over-claiming worker above honest workers that had answered at an ordinary TTFT."""
    sel = WorkerSelector()
    cheat, honest = worker(1, 1), worker(2, 2000)
    sel.reputation(honest.peer_id).record_success(ttft_ms=300.0, tokens_per_second=100.0)
    sel.reputation(cheat.peer_id).record_failure(timeout=False)
    assert sel.rank([cheat, honest]) == [honest, cheat]
    # a worker never tried still ranks by price among untried ones
    assert sel.rank([worker(3, 2000), worker(4, 1)])[0].price_prompt == 1


class GateDouble:
    """Known verdicts answer at once; unknown workers take ``slow`` seconds to check (or forever)."""

    def __init__(self, known: dict[bytes, bool], passes: set[bytes], slow: dict[bytes, float]) -> None:
        self._known, self._passes, self._slow = known, passes, slow
        self.checked: list[bytes] = []

    def known(self, a: Announcement) -> bool | None:
        return self._known.get(a.peer_id)

    async def is_attested(self, a: Announcement) -> bool:
        self.checked.append(a.peer_id)
        await trio.sleep(self._slow.get(a.peer_id, 0.0))
        return a.peer_id in self._passes


def requester_over(workers: list[Announcement], gate: GateDouble) -> Requester:
    async def never_opened(_: Announcement) -> object:
        raise AssertionError("not reached")

    return Requester(lambda: workers, never_opened, gate, max_price_prompt=10_000, max_price_completion=10_000)


async def test_known_good_workers_are_used_without_waiting_on_unchecked_ones(
        autojump_clock: trio.testing.MockClock) -> None:
    good, unchecked, bad = worker(1, 5), worker(2, 1), worker(3, 1)
    gate = GateDouble({good.peer_id: True, bad.peer_id: False}, passes={unchecked.peer_id},
                      slow={unchecked.peer_id: math.inf})
    with trio.fail_after(1):
        assert await requester_over([good, unchecked, bad], gate).candidates("synthetic-echo") == [good]
    assert gate.checked == []  # the unchecked worker is left to the gate's background prefetch


async def test_unknown_workers_are_checked_side_by_side_until_one_passes(
        autojump_clock: trio.testing.MockClock) -> None:
    stuck, fine, failing = worker(1, 1), worker(2, 2), worker(3, 3)
    gate = GateDouble({}, passes={fine.peer_id, stuck.peer_id},
                      slow={stuck.peer_id: math.inf, fine.peer_id: 0.5, failing.peer_id: 0.1})
    with trio.fail_after(5):  # virtual time: a sequential check would hang on the stuck worker forever
        assert await requester_over([stuck, fine, failing], gate).candidates("synthetic-echo") == [fine]
    assert set(gate.checked) == {stuck.peer_id, fine.peer_id, failing.peer_id}
