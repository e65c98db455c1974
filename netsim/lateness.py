"""How late a netsim process's Trio scheduler wakes a sleeping task: a probe for "is this loop starved?".

A pool process runs 25 full nodes on one Trio loop. When streams go unanswered while the process is far from
CPU-bound, the first question is whether ready tasks wait long for their turn (a long run queue, a blocking
call on the loop's thread) or whether nothing is scheduled at all. The probe sleeps ``interval`` seconds
again and again and logs, every ``window`` seconds, how late the wake-ups were (max and mean) next to the
CPU the process used in that window, one line each, for the run's logs.
"""

from __future__ import annotations

import logging
import time

import trio

log = logging.getLogger("netsim.lateness")


async def log_scheduler_lateness(interval: float = 0.1, window: float = 10.0) -> None:
    """Run forever: one log line per ``window`` seconds (cancel to stop)."""
    while True:
        late: list[float] = []
        cpu0, wall0 = time.process_time(), trio.current_time()
        while trio.current_time() - wall0 < window:
            due = trio.current_time() + interval
            await trio.sleep_until(due)
            late.append(trio.current_time() - due)
        wall = trio.current_time() - wall0
        log.warning("scheduler lateness over %.0f s: max %.1f ms, mean %.1f ms, p90 %.1f ms; cpu %.0f %% of a core",
                    wall, 1000 * max(late), 1000 * sum(late) / len(late),
                    1000 * sorted(late)[int(0.9 * (len(late) - 1))], 100 * (time.process_time() - cpu0) / wall)
