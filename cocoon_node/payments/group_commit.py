"""Group commit for the SQLite stores (issue 18): many callers' writes in one ``synchronous=FULL`` transaction.

Each caller of :meth:`GroupCommit.run` queues a callable and waits until the transaction that ran it has
committed: its write is durable when its ``await`` returns, exactly as with one transaction per call. The
first caller that finds no commit in flight runs the whole queue (everything queued while the previous commit
ran) in one worker-thread call and one transaction; callers that arrive meanwhile form the next batch, which the
first of them runs when the current one is done. So a burst of N writes costs a few fsyncs and thread hand-offs
instead of N.

Failures: a callable that raises gets its own exception (the stores make each of their writes a savepoint, so
its partial changes are rolled back and the batch's other writes stand); a ``BEGIN`` or ``COMMIT`` that fails
fails every caller of that batch with that error. A caller cancelled while queued is dropped from the queue
(its write never runs); once its batch has started it waits for the commit (as a thread call cannot be
abandoned) and then sees the cancellation.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("error", "finished", "fn", "result", "taken", "wake")

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.result: T | None = None
        self.error: BaseException | None = None
        self.taken = False  # in a batch that has started
        self.finished = trio.Event()  # its batch has committed (or failed)
        self.wake = trio.Event()  # no batch in flight (this caller runs the next), or its batch started


class GroupCommit:
    """Queue of writes for one connection; ``lock`` (re-entrant) is the store's connection lock."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self._conn = conn
        self._lock = lock
        self._queue: list[_Call[Any]] = []
        self._flushing = False
        self._after: list[Callable[[], None]] | None = None  # hooks of the batch being run, in its thread
        self._owner = 0  # the thread running that batch
        self.batches = 0  # counters for tests and profiles
        self.calls = 0

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` (in a worker thread, in a transaction shared with other callers'); return its result
        once that transaction has committed, or raise its error or the commit's."""
        call = _Call(fn)
        self._queue.append(call)
        try:
            while not call.taken:
                if self._flushing:
                    await call.wake.wait()
                    call.wake = trio.Event()
                else:
                    await self._flush()
            if not call.finished.is_set():  # a caller whose own flush ran it returns with no further checkpoint
                await call.finished.wait()
        except BaseException:
            if not call.taken:  # still queued: it never runs
                self._queue.remove(call)
                self._hand_over()
                raise
            if not call.finished.is_set():
                with trio.CancelScope(shield=True):
                    await call.finished.wait()
            raise
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the current write is committed: at once outside a batch, else after its COMMIT
        (skipped if the commit fails)."""
        if self._after is not None and self._owner == threading.get_ident():
            self._after.append(hook)
        else:
            hook()

    async def _flush(self) -> None:
        self._flushing = True
        batch, self._queue = self._queue, []
        for c in batch:
            c.taken = True
            c.wake.set()  # a caller waiting for its turn to run a batch now waits for this one
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._commit, batch)
        except BaseException as exc:  # the thread call itself failed: nothing is known to be committed
            for c in batch:
                c.error = exc
            raise
        finally:
            self._flushing = False
            for c in batch:
                c.finished.set()
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._flushing and self._queue:
            self._queue[0].wake.set()

    def _commit(self, batch: list[_Call[Any]]) -> None:
        after: list[Callable[[], None]] = []
        with self._lock:
            self._after, self._owner = after, threading.get_ident()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for c in batch:
                    try:
                        c.result = c.fn()
                    except Exception as e:  # this call's own failure; its savepoint is rolled back
                        c.error = e
                self._conn.execute("COMMIT")
            except BaseException as e:
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if not isinstance(e, sqlite3.Error):
                    raise
                for c in batch:
                    c.error = e
                return
            finally:
                self._after, self._owner = None, 0
            self.batches += 1
            self.calls += len(batch)
        for hook in after:
            hook()
