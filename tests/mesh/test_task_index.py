"""The pinned task-index patch (cocoon_node/mesh/task_index.py): py-libp2p's manager finds a new task's parent
from an index, with the same answer as its walk over every task, and without that walk."""

from __future__ import annotations

from typing import Any

import trio
from libp2p.tools.anyio_service import Service, background_trio_service, trio_tasks

from cocoon_node.mesh import task_index

task_index.install()  # as cocoon_node.mesh.host does at import


class _Tree(Service):
    """A service that grows a task tree (roots, children, grandchildren) and records, in each task, what the
    patched and the original parent lookups answer for the running trio task, in its own manager and in
    another service's manager."""

    def __init__(self, other: list[Any], fan_out: int = 4) -> None:
        self.other = other  # [the other service's manager], filled in once it runs
        self.fan_out = fan_out
        self.answers: list[tuple[Any, Any, Any, Any]] = []
        self.done = trio.Event()
        self.left = 0

    def _record(self) -> None:
        me = trio.lowlevel.current_task()
        other = self.other[0]
        self.answers.append((self.manager._find_parent_task(me), task_index.original_find_parent(self.manager, me),
                             other._find_parent_task(me), task_index.original_find_parent(other, me)))

    async def _leaf(self) -> None:
        self._record()
        self.left -= 1
        if not self.left:
            self.done.set()
        await trio.sleep_forever()

    async def _branch(self, depth: int) -> None:
        self._record()
        for _ in range(self.fan_out):
            self.left += 0 if depth else 1
            self.manager.run_task(self._branch if depth else self._leaf, *((depth - 1,) if depth else ()))
        await trio.sleep_forever()

    async def run(self) -> None:
        for _ in range(3):
            self.manager.run_task(self._branch, 1)
        await trio.sleep_forever()


class _Idle(Service):
    """Another service with tasks of its own: none of them is a parent in the tree's manager, nor theirs in its."""

    async def run(self) -> None:
        for _ in range(3):
            self.manager.run_task(trio.sleep_forever)
        await trio.sleep_forever()


async def test_parent_lookup_agrees_with_py_libp2p_walk_in_every_task() -> None:
    other_box: list[Any] = []
    tree = _Tree(other_box)
    with trio.fail_after(10):
        async with background_trio_service(_Idle()) as other_manager:
            other_box.append(other_manager)
            async with background_trio_service(tree):
                await tree.done.wait()
                # and from a trio task no manager started (this test's own): no parent anywhere
                me = trio.lowlevel.current_task()
                assert tree.manager._find_parent_task(me) is None
                assert task_index.original_find_parent(tree.manager, me) is None
    # 3 roots + 12 children + 48 leaves, each asked from inside its own task
    assert len(tree.answers) == 3 + 12 + 48
    for patched, original, patched_other, original_other in tree.answers:
        assert patched is original and patched is not None, (patched, original)
        assert patched_other is None and original_other is None  # another manager's task is not its parent


async def test_parent_lookup_does_not_walk_the_task_tree(monkeypatch: Any) -> None:
    """The walk is what cost 8 % of a pool process: with the patch a lookup (so a spawn) never iterates the
    tasks, where py-libp2p's own lookup visits the tree on every call."""
    visits: list[int] = []
    original = trio_tasks.FunctionTask.iterate_tasks.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *tasks: Any) -> Any:
        visits.append(len(tasks))
        return original(cls, *tasks)

    monkeypatch.setattr(trio_tasks.FunctionTask, "iterate_tasks", classmethod(counting))
    costs: list[tuple[int, int]] = []

    class Measured(_Tree):
        def _record(self) -> None:
            me = trio.lowlevel.current_task()
            before = len(visits)
            found = self.manager._find_parent_task(me)
            patched = len(visits) - before
            assert task_index.original_find_parent(self.manager, me) is found
            costs.append((patched, len(visits) - before - patched))

    tree = Measured([None], fan_out=3)
    with trio.fail_after(10):
        async with background_trio_service(tree):
            await tree.done.wait()
    assert len(costs) == 3 + 9 + 27
    assert all(patched == 0 for patched, _ in costs), costs
    assert all(walked > 0 for _, walked in costs), costs  # the original does walk: the count can see a walk


async def test_a_finished_task_leaves_the_index() -> None:
    class Once(Service):
        async def run(self) -> None:
            child_ran = trio.Event()

            async def child() -> None:
                child_ran.set()

            self.manager.run_task(child)
            await child_ran.wait()

    before = len(task_index._running)
    with trio.fail_after(10):
        async with background_trio_service(Once()) as manager:
            await manager.wait_finished()
    assert len(task_index._running) == before
