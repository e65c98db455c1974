"""A pinned patch for py-libp2p 0.8.1's service manager: find a task's parent in O(1), not by walking every task.

py-libp2p runs pubsub, the swarm and its other services under its own ``TrioManager``. Each
``manager.run_task`` (pubsub spawns one for every RPC it reads, every peer it meets, every message it sends)
asks ``TrioManager._find_parent_task`` which of the manager's tasks is running now, and that method walks
the manager's whole task tree (``FunctionTask.iterate_tasks``) comparing trio tasks. The tree holds a task per
peer stream and per message in flight, so each spawn costs time in proportion to the node's traffic: in a
netsim pool of 25 nodes that walk was 8 % of the process's CPU (``bench/RESULTS.md``, netsim scale), and a
node's cost per RPC grew with its number of peers.

:func:`install` keeps an index from the trio task running a ``FunctionTask`` to that task (set where
py-libp2p's own ``FunctionTask.run`` records its trio task, removed when it returns) and answers
``_find_parent_task`` from it. The answer is the same as py-libp2p's: the indexed task, if its chain of
parents ends at one of *this* manager's root tasks (a task of another manager, e.g. a child service's, is
not this manager's parent), else ``None`` (a new root task). Nothing else changes.
"""

from __future__ import annotations

from typing import Any

import trio
from libp2p.tools.anyio_service import trio_manager, trio_tasks

from cocoon_node.mesh._pinned import require_pinned_libp2p

_original_run = trio_tasks.FunctionTask.run
_original_find_parent = trio_manager.TrioManager._find_parent_task

#: The trio task running each started, unfinished FunctionTask (one FunctionTask per trio task: py-libp2p
#: starts each in its own trio task, ``TrioManager._run_and_manage_task``).
_running: dict[trio.lowlevel.Task, Any] = {}


async def _run_indexed(self: Any) -> None:
    """py-libp2p's ``FunctionTask.run``, with the running trio task indexed while it runs."""
    current = trio.lowlevel.current_task()
    _running[current] = self
    try:
        await _original_run(self)
    finally:
        if _running.get(current) is self:
            del _running[current]


def _find_parent_indexed(self: Any, trio_task: trio.lowlevel.Task) -> Any:
    """The FunctionTask of this manager that ``trio_task`` runs, or None (py-libp2p's answer, in O(depth))."""
    task = _running.get(trio_task)
    if task is None:
        return None
    root = task
    while root.parent is not None:
        root = root.parent
    return task if root in self._root_tasks else None


def install() -> None:
    """Rebind the two methods (idempotent); refuse another py-libp2p, whose manager may differ."""
    require_pinned_libp2p("the task index patch", "check libp2p/tools/anyio_service/trio_manager.py "
                          "_find_parent_task and trio_tasks.py FunctionTask.run and update "
                          "cocoon_node/mesh/task_index.py")
    task_cls: Any = trio_tasks.FunctionTask
    manager_cls: Any = trio_manager.TrioManager
    task_cls.run = _run_indexed
    manager_cls._find_parent_task = _find_parent_indexed


def original_find_parent(manager: Any, trio_task: trio.lowlevel.Task) -> Any:
    """py-libp2p's own walk over the task tree (kept for the tests that compare the two answers)."""
    return _original_find_parent(manager, trio_task)
