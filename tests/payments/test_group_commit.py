"""Group commit (issue 18): concurrent writes share transactions, and each caller's write is durable and readable
when its await returns; a failing commit fails every caller of its batch; a call's own error is its own."""

from __future__ import annotations

import sqlite3
import threading
from functools import partial
from pathlib import Path

import trio

from cocoon_node.payments.group_commit import GroupCommit
from cocoon_node.payments.receipt_store import ReceiptStore, StoredReceipt
from cocoon_node.payments.store import PaymentStore, StoreError, StoreUnavailable
from tests.waiting import wait_until


def _receipt(i: int) -> StoredReceipt:
    return StoredReceipt(f"chatcmpl-{i}", f"req-{i}", "worker", b"r%d" % i, b"report")


async def test_concurrent_receipts_each_durable_when_save_returns(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path / "receipts.db")
    seen: list[int] = []

    async def one(i: int) -> None:
        await store.save(_receipt(i))
        # readable at once, and durable: a second connection (another process's view) sees the row
        other = sqlite3.connect(tmp_path / "receipts.db")
        try:
            assert other.execute("SELECT receipt FROM receipts WHERE completion_id = ?",
                                 (f"chatcmpl-{i}",)).fetchone() == (b"r%d" % i,)
        finally:
            other.close()
        assert await store.load(f"chatcmpl-{i}") == _receipt(i)
        seen.append(i)

    async with trio.open_nursery() as n:
        for i in range(40):
            n.start_soon(one, i)
    assert sorted(seen) == list(range(40)) and store.count() == 40
    assert store._group.calls == 40 and store._group.batches < 40  # some saves shared a commit
    store.close()


async def test_failing_commit_fails_every_waiter_of_its_batch() -> None:
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    conn.execute("CREATE TABLE t (v INTEGER)")
    group = GroupCommit(conn, threading.RLock())
    release = threading.Event()
    entered = threading.Event()  # the first batch is running in its thread
    commits = 0
    real_execute = conn.execute

    class Conn:  # COMMIT fails for the second batch only
        in_transaction = property(lambda self: conn.in_transaction)

        def execute(self, sql: str, *a: object) -> sqlite3.Cursor:
            nonlocal commits
            if sql == "COMMIT":
                commits += 1
                if commits == 2:
                    real_execute("ROLLBACK")
                    raise sqlite3.OperationalError("disk I/O error")
            return real_execute(sql, *a)

    group._conn = Conn()  # type: ignore[assignment]
    results: dict[int, object] = {}

    async def one(i: int, block: bool = False) -> None:
        def write() -> int:
            if block:
                entered.set()
                release.wait(5)
            real_execute("INSERT INTO t VALUES (?)", (i,))
            return i

        try:
            results[i] = await group.run(write)
        except sqlite3.OperationalError as e:
            results[i] = str(e)

    async with trio.open_nursery() as n:
        n.start_soon(one, 0, True)  # the first batch, held in its thread while the next one queues
        await wait_until(entered.is_set, timeout=10)
        for i in range(1, 5):
            n.start_soon(one, i)
        await wait_until(lambda: len(group._queue) == 4, timeout=10)
        release.set()
    assert results[0] == 0
    assert all(results[i] == "disk I/O error" for i in range(1, 5)), results
    assert [r[0] for r in real_execute("SELECT v FROM t").fetchall()] == [0]  # the failed batch left nothing
    assert group.batches == 1


async def test_payment_store_batches_and_isolates_errors(tmp_path: Path) -> None:
    store = PaymentStore.open(tmp_path / "p.db")
    store.upsert_channel("addr", "payee", "peer", _params(), 1000)

    async def usage(i: int) -> None:
        await store.run(partial(store.record_usage, served=i), f"r{i}", "addr", 1, i, i)
        assert store.usage(f"r{i}") == (1, i, i)

    def bad() -> None:
        store._tx(lambda c: (c.execute("INSERT INTO usage VALUES ('x', 'addr', 1, 1, 1, 0, 0)"),
                             (_ for _ in ()).throw(StoreError("refused"))))

    errors: list[BaseException] = []

    async def failing() -> None:
        try:
            await store.run(bad)
        except StoreError as e:
            errors.append(e)

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(usage, i)
        n.start_soon(failing)
        n.start_soon(store.run, partial(store.set_channel, "addr", status="closing"))
    assert len(errors) == 1 and not isinstance(errors[0], StoreUnavailable)
    assert store.usage("x") is None  # its savepoint was rolled back, the others committed
    assert all(store.usage(f"r{i}") == (1, i, i) for i in range(20))
    assert store.ended("addr")  # the in-memory status follows the commit
    assert store._group.batches < store._group.calls
    store.close()
    reopened = PaymentStore.open(tmp_path / "p.db")
    assert reopened.ended("addr") and reopened.usage("r19") == (1, 19, 19)
    reopened.close()


def _params():  # type: ignore[no-untyped-def]
    from cocoon_node.payments.voucher import ChannelParams

    return ChannelParams(payer_key=b"\x01" * 32, payee_key=b"\x02" * 32, payer="payer", payee="payee",
                         channel_id=7, challenge_period=60)

