"""netsim's stall dump (``kill -USR1`` a pool process): it names where tasks wait, how many, and for how long."""

from __future__ import annotations

import trio
import trio.testing

from netsim.taskdump import summary


async def test_summary_counts_tasks_parked_on_a_lock_and_their_age() -> None:
    lock = trio.Lock()
    root = trio.lowlevel.current_root_task()
    assert root is not None
    with trio.fail_after(10):
        async with lock, trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(lock.acquire)
            await trio.testing.wait_all_tasks_blocked()
            first = summary(root)
            await trio.sleep(0.05)
            second = summary(root)
            nursery.cancel_scope.cancel()
    waiting = [block for block in second.split("\n-- ") if "acquire" in block and "_sync.py" in block]
    assert waiting and waiting[0].startswith("3 tasks"), second
    assert "parked here up to 0.0 s" in first
    assert "parked here up to 0.0 s" not in waiting[0], waiting[0]
