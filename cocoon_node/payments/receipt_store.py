"""The requester's receipts (issue 16), in SQLite next to its vouchers: ``receipts.db`` in the data dir.

One row per completion the API answered with a checked receipt: the signed envelope and the attestation
report it names, so ``GET /v1/cocoon/receipts/{completion id}`` (and ``cocoon-node verify-receipt``, offline)
can show it later. Separate from ``payments.db``: a requester without payments keeps receipts too, and the
receipt rows never share a transaction with vouchers. Written with ``synchronous=FULL`` before the answer
that carries the receipt is sent; calls run in a worker thread, and the saves queued while one commit runs
share the next transaction (group commit, :mod:`.group_commit`; each returns once its own row is committed).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from cocoon_node.payments.group_commit import GroupCommit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    completion_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    worker TEXT NOT NULL,
    receipt BLOB NOT NULL,
    report BLOB NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class StoredReceipt:
    completion_id: str
    request_id: str
    worker: str  # base58 peer id
    receipt: bytes
    report: bytes


class ReceiptStore:
    """Receipts by completion id (``open`` creates the file mode 0600)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        fresh = not self.path.exists()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if fresh and str(self.path) != ":memory:":
            os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._group = GroupCommit(self._db, self._lock)

    def add(self, r: StoredReceipt) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?, ?)",
                             (r.completion_id, r.request_id, r.worker, r.receipt, r.report, time.time()))

    def get(self, completion_id: str) -> StoredReceipt | None:
        with self._lock:
            row = self._db.execute("SELECT completion_id, request_id, worker, receipt, report FROM receipts "
                                   "WHERE completion_id = ?", (completion_id,)).fetchone()
        return StoredReceipt(row[0], row[1], row[2], bytes(row[3]), bytes(row[4])) if row else None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])

    async def save(self, r: StoredReceipt) -> None:
        """Store ``r`` durably (returns once the transaction holding it has committed)."""
        await self._group.run(partial(self.add, r))

    async def load(self, completion_id: str) -> StoredReceipt | None:
        return await trio.to_thread.run_sync(self.get, completion_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()
