"""WorkerSelector ranking: reputation decides between workers, price only breaks near-ties."""

from __future__ import annotations

import time

from cocoon_node.inference.requester import WorkerSelector
from cocoon_node.inference.stream import PROTOCOL_ID
from cocoon_node.mesh.announce import Announcement


def worker(n: int, price: int) -> Announcement:
    now = int(time.time())
    return Announcement(
        peer_id=bytes([0, 36, 8, 1, 18, 32]) + bytes([n]) * 32, addrs=(), model="synthetic-echo",
        model_hash=b"\x01" * 32, backend="synthetic", synthetic=True, price_prompt=price, price_completion=price,
        max_concurrent=4, load=0, protocols=(PROTOCOL_ID,), tee_kind="dev-INSECURE", seqno=1,
        issued_at=now, expires_at=now + 60,
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
