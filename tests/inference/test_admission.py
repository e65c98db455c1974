"""Issue 13: the admission queue on its own, on trio's autojump clock: FIFO per client and round-robin between
clients, dispatch the moment a slot frees (notify, no polling), the bounds (full queue, longest wait) as
429-class rejections with Retry-After, and a cancelled waiter leaving the queue at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from cocoon_node.cli import build_parser, overrides_from_args
from cocoon_node.config import ConfigError, load_config
from cocoon_node.inference.admission import AdmissionQueue, QueueRejected


class Slots:
    """A pool of ``n`` slots standing in for the requester's in-flight counts; ``release`` notifies."""

    def __init__(self, queue: AdmissionQueue, n: int) -> None:
        self.queue, self.n, self.used = queue, n, 0

    def free(self) -> int:
        return self.n - self.used

    def release(self) -> None:
        self.used -= 1
        self.queue.notify()


async def test_fifo_per_client_and_round_robin_between_clients(autojump_clock: trio.testing.MockClock) -> None:
    queue = AdmissionQueue(max_queue=100, max_wait=1000)
    slots = Slots(queue, 1)
    order: list[str] = []
    hold = trio.Event()

    async def request(client: str, name: str) -> None:
        async with queue.admit(client, "m", slots.free) as ticket:
            slots.used += 1
            ticket.settle()
            order.append(name)
            if name == "first":
                await hold.wait()
            else:
                await trio.sleep(1)
            slots.release()

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "a", "first")
            await trio.testing.wait_all_tasks_blocked()
            for i in range(5):  # a's burst queues first ...
                nursery.start_soon(request, "a", f"a{i}")
                await trio.testing.wait_all_tasks_blocked()
            for i in range(2):  # ... then b and c arrive (one at a time: trio shuffles tasks spawned together)
                for who in ("b", "c"):
                    nursery.start_soon(request, who, f"{who}{i}")
                    await trio.testing.wait_all_tasks_blocked()
            assert len(queue) == 9 and order == ["first"]
            hold.set()
    # b and c are not starved behind a's burst: one each in turn, each client's own in order
    assert order == ["first", "a0", "b0", "c0", "a1", "b1", "c1", "a2", "a3", "a4"]
    s = queue.stats()
    assert s["admitted"] == 10 and s["admitted_after_wait"] == 9 and s["queued"] == 0
    assert s["wait_ms"]["max"] > 0  # type: ignore[index]


async def test_a_full_queue_rejects_with_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    queue = AdmissionQueue(max_queue=2, max_wait=1000)
    slots = Slots(queue, 0)  # no slot at all: everything waits
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(_wait_in, queue, slots)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(QueueRejected) as info:
            async with queue.admit("x", "m", slots.free):
                pass  # pragma: no cover
        assert info.value.code == "queue_full" and info.value.retry_after >= 1
        assert len(queue) == 2 and queue.rejected_full == 1
        nursery.cancel_scope.cancel()


async def _wait_in(queue: AdmissionQueue, slots: Slots) -> None:
    async with queue.admit("w", "m", slots.free):
        await trio.sleep_forever()


async def test_an_expired_wait_is_rejected_and_leaves_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    queue = AdmissionQueue(max_queue=10, max_wait=5)
    slots = Slots(queue, 0)
    started = trio.current_time()
    with pytest.raises(QueueRejected) as info:
        async with queue.admit("x", "m", slots.free):
            pass  # pragma: no cover
    assert info.value.code == "queue_timeout" and 1 <= info.value.retry_after <= 5
    assert trio.current_time() - started == pytest.approx(5)
    assert len(queue) == 0 and queue.expired == 1 and queue.left == 0


async def test_a_cancelled_waiter_leaves_at_once_and_the_next_gets_the_slot(
        autojump_clock: trio.testing.MockClock) -> None:
    queue = AdmissionQueue(max_queue=10, max_wait=1000)
    slots = Slots(queue, 1)
    slots.used = 1
    got: list[str] = []

    async def request(client: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            async with queue.admit(client, "m", slots.free) as ticket:
                slots.used += 1
                ticket.settle()
                got.append(client)

    gone = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "leaver", gone)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(request, "stayer")
        await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 2
        gone.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 1 and queue.left == 1  # out of the queue before any slot freed
        slots.release()
    assert got == ["stayer"]


async def test_a_grant_not_yet_in_flight_holds_its_slot(autojump_clock: trio.testing.MockClock) -> None:
    """Two waiters, one slot: the first is granted and, until it settles, the second is not woken for the
    same slot; a ticket dropped without settling hands the slot on."""
    queue = AdmissionQueue(max_queue=10, max_wait=1000)
    slots = Slots(queue, 1)
    slots.used = 1
    admitted: list[str] = []
    proceed = trio.Event()

    async def request(name: str, settle: bool) -> None:
        async with queue.admit(name, "m", slots.free) as ticket:
            admitted.append(name)
            await proceed.wait()
            if settle:
                slots.used += 1
                ticket.settle()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "one", False)
        await trio.testing.wait_all_tasks_blocked()  # queued in this order (trio shuffles tasks spawned together)
        nursery.start_soon(request, "two", True)
        await trio.testing.wait_all_tasks_blocked()
        slots.release()
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == ["one"]  # reserved for one: two still waits
        proceed.set()  # one leaves without an attempt in flight: its slot goes to two
    assert admitted == ["one", "two"] and slots.used == 1


def test_queue_flags_reach_the_config_and_bad_bounds_are_refused(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--data-dir", str(tmp_path), "--queue-length", "4",
                                      "--queue-wait", "7.5"])
    config = load_config(None, env={}, overrides=overrides_from_args(args))
    assert (config.requester.queue_length, config.requester.queue_wait) == (4, 7.5)
    defaults = load_config(None, env={}, overrides={})
    assert (defaults.requester.queue_length, defaults.requester.queue_wait) == (64, 120.0)
    with pytest.raises(ConfigError) as err:
        load_config(None, env={}, overrides={"requester": {"queue_length": -1, "queue_wait": 0}})
    assert {p.split(":")[0] for p in err.value.problems} == {"requester.queue_length", "requester.queue_wait"}
