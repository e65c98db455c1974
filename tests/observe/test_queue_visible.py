"""Issue 13: the admission queue's length and waits in ``cocoon-node status`` (table and JSON) and /metrics,
from a real :class:`AdmissionQueue`'s stats (no processes)."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from cocoon_node.inference import AdmissionQueue
from cocoon_node.observe.metrics import NodeMetrics
from cocoon_node.observe.status_table import format_status


async def test_queue_length_and_waits_show_in_status_and_metrics(autojump_clock: trio.testing.MockClock) -> None:
    queue = AdmissionQueue(max_queue=5, max_wait=30)
    free = [0]
    async with trio.open_nursery() as nursery:
        async def waiter() -> None:
            async with queue.admit("c", "m", lambda: free[0]):
                pass

        for _ in range(2):
            nursery.start_soon(waiter)
        await trio.sleep(3)  # on the mock clock: two requests have waited 3 s
        snapshot = {"requester": {"completed": 0, "failed": 0, "api_url": "http://x", "queue": queue.stats()}}
        free[0] = 2
        queue.notify()
    text = format_status(snapshot)
    assert "queue    2/5 waiting (1 clients, oldest 3.0 s; longest wait 30 s)" in text
    samples = {(s.name, tuple(s.labels.values())): s.value
               for f in text_string_to_metric_families(NodeMetrics().render(snapshot).decode()) for s in f.samples}
    assert samples[("cocoon_requester_queue_length", ())] == 2
    assert samples[("cocoon_requester_queue_capacity", ())] == 5
    assert samples[("cocoon_requester_queue_oldest_wait_seconds", ())] == 3.0
    after = {"requester": {"queue": queue.stats()}}
    samples = {(s.name, tuple(s.labels.values())): s.value
               for f in text_string_to_metric_families(NodeMetrics().render(after).decode()) for s in f.samples}
    assert samples[("cocoon_requester_admissions_total", ("after_wait",))] == 2
    assert samples[("cocoon_requester_queue_wait_seconds", ("max",))] == 3.0
    assert samples[("cocoon_requester_queue_length", ())] == 0
