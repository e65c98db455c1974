"""Durable payment-channel state in SQLite (WAL, ``synchronous=FULL``): channels, vouchers, usage.

Rule: persist BEFORE acting. The payer stores each voucher it signs before sending it, so a restart
never re-signs a used seqno (the ``(address, seqno)`` primary key makes that impossible); the payee
stores each voucher before serving the tokens it covers. Voucher history is kept; the newest is the
one with the highest seqno.

Methods are synchronous (one connection, one writer); async callers use :meth:`PaymentStore.run`,
which runs them in a worker thread, so fsyncs never block the trio loop, and commits the calls queued meanwhile
together (one fsync for a burst; each caller still returns only once its own writes are committed). A database that
cannot be written (disk full, locked, corrupt) raises :class:`StoreUnavailable` from :meth:`PaymentStore.run`,
so callers handle it like any other refusal to persist: nothing that needed the write is sent or served.

Which channels have ended (status ``closing`` or ``closed``) is also kept in memory (:meth:`PaymentStore.ended`),
so the worker's per-token path can refuse a channel that a close, the watcher or a failed claim ended
without a database read.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from cocoon_node.payments.group_commit import GroupCommit
from cocoon_node.payments.voucher import ChannelParams, SignedVoucher

T = TypeVar("T")

#: How long one store operation may take before we call the disk hung.
STORE_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    address TEXT PRIMARY KEY,
    channel_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('payer', 'payee')),
    peer TEXT NOT NULL,
    payer_key BLOB NOT NULL,
    payee_key BLOB NOT NULL,
    payer TEXT NOT NULL,
    payee TEXT NOT NULL,
    challenge_period INTEGER NOT NULL,
    deposit INTEGER NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0,
    served INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS channels_peer ON channels (role, peer, status);
CREATE TABLE IF NOT EXISTS vouchers (
    address TEXT NOT NULL REFERENCES channels (address),
    seqno INTEGER NOT NULL,
    cumulative INTEGER NOT NULL,
    signature BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (address, seqno)
);
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY,
    address TEXT NOT NULL REFERENCES channels (address),
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_channel ON usage (address);
"""


class StoreError(Exception):
    """A write would break an invariant (e.g. a voucher seqno used twice with other terms)."""


class StoreUnavailable(StoreError):
    """The database could not be read or written (sqlite3 error: disk full, locked, I/O error)."""

#: Channel statuses after which a worker serves nothing more on the channel.
ENDED_STATUSES = frozenset({"closing", "closed"})


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """One stored channel (amounts in nanotons)."""

    address: str
    role: str
    peer: str
    params: ChannelParams
    deposit: int
    claimed: int
    served: int
    status: str
    updated_at: float = 0.0  # last change (voucher, served amount, status): the worker's idle clock


class PaymentStore:
    """SQLite store for one node; open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._thread_lock = threading.RLock()  # re-entrant: a group commit's batch holds it around each call
        self._group = GroupCommit(conn, self._thread_lock)
        rows = conn.execute("SELECT address FROM channels WHERE status IN ('closing', 'closed')").fetchall()
        self._ended: set[str] = {str(r[0]) for r in rows}

    @classmethod
    def open(cls, path: Path | str) -> PaymentStore:
        """Open (creating) the database at ``path``; ``":memory:"`` works for tests."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Vouchers and usage are private: create the file 0600 ourselves (SQLite gives its -wal and -shm
            # files the database's mode) rather than leave it to the umask.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_SCHEMA)
        return cls(conn)

    def close(self) -> None:
        """Close the connection (everything committed is already durable)."""
        with self._thread_lock:
            self._conn.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method in a thread, bounded by :data:`STORE_TIMEOUT`; a database error is raised as
        :class:`StoreUnavailable`. Calls queued while a commit is in flight share the next transaction (group
        commit, :mod:`.group_commit`): each returns once the transaction holding its writes has committed."""
        with trio.fail_after(STORE_TIMEOUT):
            try:
                return await self._group.run(partial(fn, *args))
            except sqlite3.Error as e:
                raise StoreUnavailable(f"payment store unavailable: {type(e).__name__}: {e}") from e

    def ended(self, address: str) -> bool:
        """The channel is closing or closed as far as this node knows (in memory; no database read)."""
        return address in self._ended

    def _note_status(self, address: str, status: str) -> None:
        def note() -> None:
            if status in ENDED_STATUSES:
                self._ended.add(address)
            else:
                self._ended.discard(address)

        self._group.after_commit(note)  # once the status is durable

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._thread_lock:
            if self._conn.in_transaction:  # inside a group commit's batch: one savepoint of its transaction
                self._conn.execute("SAVEPOINT tx")
                try:
                    out = fn(self._conn)
                except BaseException:
                    self._conn.execute("ROLLBACK TO tx")
                    self._conn.execute("RELEASE tx")
                    raise
                self._conn.execute("RELEASE tx")
                return out
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return out

    # ---- channels ----------------------------------------------------------------------------

    def upsert_channel(
        self, address: str, role: str, peer: str, params: ChannelParams, deposit: int, status: str = "open"
    ) -> None:
        """Insert a channel or refresh its deposit/status (terms never change for an address)."""
        now = time.time()

        def go(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO channels (address, channel_id, role, peer, payer_key, payee_key, payer, payee,"
                " challenge_period, deposit, status, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (address) DO UPDATE SET deposit = excluded.deposit, status = excluded.status,"
                " updated_at = excluded.updated_at",
                (
                    address,
                    f"{params.channel_id:064x}",
                    role,
                    peer,
                    params.payer_key,
                    params.payee_key,
                    params.payer,
                    params.payee,
                    params.challenge_period,
                    deposit,
                    status,
                    now,
                    now,
                ),
            )

        self._tx(go)
        self._note_status(address, status)

    def set_channel(self, address: str, **fields: int | str) -> None:
        """Update some of deposit / claimed / served / status."""
        allowed = {"deposit", "claimed", "served", "status"}
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"can only set {sorted(allowed)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._tx(
            lambda c: c.execute(
                f"UPDATE channels SET {cols}, updated_at = ? WHERE address = ?",
                (*fields.values(), time.time(), address),
            )
        )
        if "status" in fields:
            self._note_status(address, str(fields["status"]))

    def channel(self, address: str) -> ChannelRecord | None:
        """The stored channel at ``address``, if any."""
        with self._thread_lock:
            row = self._conn.execute("SELECT * FROM channels WHERE address = ?", (address,)).fetchone()
        return _record(row) if row else None

    def channels(self, role: str, *, peer: str | None = None, status: str | None = None) -> list[ChannelRecord]:
        """Stored channels of one role, optionally for one peer / in one status, oldest first."""
        q, args = "SELECT * FROM channels WHERE role = ?", [role]
        if peer is not None:
            q, args = q + " AND peer = ?", [*args, peer]
        if status is not None:
            q, args = q + " AND status = ?", [*args, status]
        with self._thread_lock:
            rows = self._conn.execute(q + " ORDER BY created_at", args).fetchall()
        return [_record(r) for r in rows]

    # ---- vouchers ----------------------------------------------------------------------------

    def add_voucher(self, address: str, v: SignedVoucher, *, usage: tuple[str, int, int, int] | None = None) -> None:
        """Durably record a voucher (and optionally one request's usage ``(request_id, prompt, completion,
        amount)`` in the same transaction). Raises StoreError if its seqno is not above the newest stored
        or its amount is below it (the payer can never sign a used seqno twice)."""

        def go(c: sqlite3.Connection) -> None:
            row = c.execute(
                "SELECT seqno, cumulative FROM vouchers WHERE address = ? ORDER BY seqno DESC LIMIT 1", (address,)
            ).fetchone()
            if row is not None and (v.seqno <= row[0] or v.cumulative < row[1]):
                raise StoreError(f"voucher seqno {v.seqno}/{v.cumulative} does not follow {row[0]}/{row[1]}")
            c.execute(
                "INSERT INTO vouchers (address, seqno, cumulative, signature, created_at) VALUES (?,?,?,?,?)",
                (address, v.seqno, v.cumulative, v.signature, time.time()),
            )
            if usage is not None:
                _upsert_usage(c, usage[0], address, usage[1], usage[2], usage[3], False)

        self._tx(go)

    def newest_voucher(self, address: str) -> SignedVoucher | None:
        """The highest-seqno voucher stored for the channel."""
        with self._thread_lock:
            ch = self._conn.execute("SELECT channel_id FROM channels WHERE address = ?", (address,)).fetchone()
            row = self._conn.execute(
                "SELECT seqno, cumulative, signature FROM vouchers WHERE address = ? ORDER BY seqno DESC LIMIT 1",
                (address,),
            ).fetchone()
        if ch is None or row is None:
            return None
        return SignedVoucher(int(ch[0], 16), int(row[0]), int(row[1]), bytes(row[2]))

    def voucher_count(self, address: str) -> int:
        """How many vouchers the history holds for the channel."""
        with self._thread_lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM vouchers WHERE address = ?", (address,)).fetchone()[0])

    # ---- usage -------------------------------------------------------------------------------

    def record_usage(
        self,
        request_id: str,
        address: str,
        prompt_tokens: int,
        completion_tokens: int,
        amount: int,
        *,
        finished: bool = False,
        served: int | None = None,
    ) -> None:
        """Upsert one request's counters (and, for a payee, the channel's served total) atomically."""
        now = time.time()

        def go(c: sqlite3.Connection) -> None:
            _upsert_usage(c, request_id, address, prompt_tokens, completion_tokens, amount, finished)
            if served is not None:
                c.execute("UPDATE channels SET served = ?, updated_at = ? WHERE address = ?", (served, now, address))

        self._tx(go)

    def usage(self, request_id: str) -> tuple[int, int, int] | None:
        """(prompt_tokens, completion_tokens, amount) of one request."""
        with self._thread_lock:
            row = self._conn.execute(
                "SELECT prompt_tokens, completion_tokens, amount FROM usage WHERE request_id = ?", (request_id,)
            ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else None

    def usage_total(self, address: str) -> int:
        """Sum of the amounts of all requests on the channel."""
        with self._thread_lock:
            row = self._conn.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM usage WHERE address = ?", (address,)
            ).fetchone()
        return int(row[0])


def _upsert_usage(
    c: sqlite3.Connection,
    request_id: str,
    address: str,
    prompt_tokens: int,
    completion_tokens: int,
    amount: int,
    finished: bool,
) -> None:
    c.execute(
        "INSERT INTO usage (request_id, address, prompt_tokens, completion_tokens, amount, finished,"
        " updated_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT (request_id) DO UPDATE SET"
        " prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,"
        " amount = excluded.amount, finished = excluded.finished, updated_at = excluded.updated_at",
        (request_id, address, prompt_tokens, completion_tokens, amount, int(finished), time.time()),
    )


def _record(row: tuple[Any, ...]) -> ChannelRecord:
    (
        address,
        channel_id,
        role,
        peer,
        payer_key,
        payee_key,
        payer,
        payee,
        period,
        deposit,
        claimed,
        served,
        status,
        _c,
        updated_at,
    ) = row
    params = ChannelParams(
        payer_key=bytes(payer_key),
        payee_key=bytes(payee_key),
        payer=payer,
        payee=payee,
        channel_id=int(channel_id, 16),
        challenge_period=int(period),
    )
    return ChannelRecord(address, role, peer, params, int(deposit), int(claimed), int(served), status,
                         float(updated_at))
