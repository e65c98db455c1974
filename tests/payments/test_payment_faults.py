"""Issue 20's unconfirmed items, settled on the EMULATED chain: a payer's exposure over several channels, a
payment store that cannot be written (on either side), and watch loops meeting errors that are not ChainError.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from cocoon_node.inference.stream import PROTOCOL_ID, WorkerFailure, call_worker
from cocoon_node.payments.chain.base import ChannelStatus
from cocoon_node.payments.voucher import public_key_bytes, sign_voucher
from tests.payments.conftest import Parties
from tests.payments.test_metering import PC, PP, WINDOW, WORKER_PEER, PromptOnly, chat, world
from tests.waiting import wait_until


async def test_a_payers_exposure_is_bounded_over_all_its_channels(parties: Parties, tmp_path: Path) -> None:
    """Two channels of one payer to one worker, each drawn to its limit and never paid: before the fix each had
    its own window (120 000 unpaid, twice the window); now the window bounds the payer's sum."""
    async with world(parties, tmp_path, payment_timeout=0.5) as w:
        with trio.fail_after(60):
            first = (await w.meter_for()).channel
            second = (await w.manager.meter_for("second-name-for-the-worker", w.p.payee.wallet_address,
                                                public_key_bytes(w.p.payee_key), price_prompt=PP,
                                                price_completion=PC)).channel
            assert first.address != second.address
            codes = []
            for ch in (first, second, first, second):
                try:
                    await w.run(chat(30), PromptOnly(ch, price_prompt=PP, price_completion=PC, credit_window=WINDOW))
                    codes.append("ok")
                except WorkerFailure as exc:
                    codes.append(exc.code)
            unpaid = 0
            for ch in (first, second):
                acct = w.meter.account(ch.address)
                unpaid += acct.served - acct.paid if acct is not None else 0
            assert 0 < unpaid <= WINDOW, (unpaid, codes)
            assert codes == ["payment", "payment_required", "payment_required", "payment_required"]


@contextmanager
def locked(db: Path) -> Iterator[None]:
    """Hold a write lock on a payment database from a second connection (like a stuck process or a full disk:
    the store's own writes fail with sqlite3.OperationalError after SQLite's busy timeout)."""
    other = sqlite3.connect(str(db), timeout=10, isolation_level=None)  # waits out a write in progress
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_worker_store_failure_ends_the_stream_with_a_clear_error(parties: Parties, tmp_path: Path) -> None:
    """The worker cannot write its store: it admits nothing it cannot record, serves nothing a voucher it
    could not store would cover, and says why. Before, the sqlite3 error escaped the stream task and the
    requester only saw the stream vanish (code worker_gone)."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            with locked(tmp_path / "worker.db"), pytest.raises(WorkerFailure) as err:
                await w.run(chat(5), meter)  # first contact: the worker must record the channel
            assert err.value.code == "payment_required" and "payment store is unavailable" in str(err.value)
            await w.run(chat(5), await w.meter_for())  # the store is back: served and paid
            acct = w.meter.account(meter.channel.address)
            assert acct is not None
            await wait_until(lambda: acct.paid == meter.channel.paid, timeout=10)
            newest = acct.newest
            # 50 prompt tokens use most of the window: the worker needs the prompt voucher stored to go on.
            with locked(tmp_path / "worker.db"), pytest.raises(WorkerFailure) as err:
                await w.run(chat(50), await w.meter_for())
            assert err.value.code == "payment" and "payment store unavailable" in str(err.value)
            assert acct.newest == newest  # nothing it could not store counts as paid
            assert acct.served - acct.paid <= WINDOW


async def test_requester_store_failure_is_a_local_error_and_sends_no_voucher(parties: Parties,
                                                                             tmp_path: Path) -> None:
    """The requester cannot store its voucher: it must not send it (a restart would reuse the seqno), and the
    failure is ours, not the worker's (code local_payment). Before, a bare sqlite3 error escaped the call."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            with locked(tmp_path / "payer.db"), pytest.raises(WorkerFailure) as err:
                await w.run(chat(5), meter)
            assert err.value.code == "local_payment" and "store" in str(err.value)
            assert meter.channel.newest is None
            acct = w.meter.account(meter.channel.address)
            assert acct is not None and acct.newest is None  # the worker never saw an unstored voucher


class Flaky:
    """A chain that raises an unexpected error (not ChainError) on the first ``get_channel_state``."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    async def get_channel_state(self, address: str) -> Any:
        if not self.failures:
            self.failures += 1
            raise KeyError("status")  # e.g. an adapter meeting a reply it did not expect
        return await self._chain.get_channel_state(address)


async def test_watch_loops_survive_errors_other_than_chain_errors(parties: Parties, tmp_path: Path) -> None:
    """Before, anything but ChainError/TooSlowError ended the payer's watch (and the node's task group with it)."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(12), meter)
            ch = meter.channel
            await wait_until(lambda: w.meter.account(ch.address) is not None, timeout=10)
            stale = sign_voucher(w.p.payer_key, ch.params.channel_id, 1, 12 * PP)
            assert (await w.p.payee.unilateral_close(ch.address, stale)).success  # a close the payer must see
            w.manager.chain = Flaky(w.manager.chain)
            w.settlement.chain = Flaky(w.settlement.chain)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: w.manager.watch(poll_interval=0.05))
                nursery.start_soon(w.settlement.run)
                w.settlement.poll_interval = 0.05
                await wait_until(lambda: w.manager.watch_stats["closes_seen"] == 1, timeout=30)
                await wait_until(lambda: w.settlement.stats.challenges == 1, timeout=30)  # it went on too
                nursery.cancel_scope.cancel()
            assert w.manager.chain.failures == 1 and w.settlement.chain.failures == 1
            assert (await w.p.payer.get_channel_state(ch.address)).status is ChannelStatus.CLOSING
            assert WORKER_PEER not in w.manager.channels


async def test_an_honest_requester_is_forgiven_nothing_it_paid(parties: Parties, tmp_path: Path) -> None:
    """The tail excused at ``finish`` (before the tail voucher) is taken back when the voucher pays it, so a
    payer that pays never uses up its forgiveness."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            for _ in range(5):
                meter = await w.meter_for()
                await w.run(chat(20), meter)
            ch = meter.channel
            acct = w.meter.account(ch.address)
            assert acct is not None
            await wait_until(lambda: acct.paid == ch.charged, timeout=10)
            assert acct.forgiven == 0 and acct.served == acct.paid == ch.charged




async def test_tail_slack_only_for_a_payer_that_paid_for_the_completion(parties: Parties, tmp_path: Path) -> None:
    """A payer that pays each prompt but no completion token, with requests short enough to finish within the
    window, once got 8 tokens excused per request (netsim adversarial: a worker lost 108 000 against a
    100 000 window). An honest requester that cancels pays what it received before its cancel frame, so it
    still qualifies and only its tail in flight is excused."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            ch = (await w.meter_for()).channel
            w.backend.tokens_per_second = 50  # 0.1 s a request: each prompt voucher (first token) lands while it runs
            for _ in range(3):
                await w.run(chat(5), PromptOnly(ch, price_prompt=PP, price_completion=PC, credit_window=WINDOW))
            w.backend.tokens_per_second = 2000
            acct = w.meter.account(ch.address)
            assert acct is not None
            # prompts are paid with their first token: the last one's voucher may land just after its final
            await wait_until(lambda: acct.paid == 3 * 5 * PP, timeout=10)
            assert acct.forgiven == 0 and acct.debt == 3 * 5 * PC

    async with world(parties, tmp_path / "honest") as w:
        with trio.fail_after(60):
            meter = await w.meter_for()
            stream = await w.req_mesh.new_stream(w.worker_mesh.peer_id, PROTOCOL_ID)
            async with call_worker(stream, chat(50), price_prompt=PP, price_completion=PC, meter=meter) as call:
                async for _ in call.deltas():
                    if call.completion_tokens >= 5:
                        break  # cancel: the requester pays what it counted, then says cancel
            await wait_until(lambda: w.server.stats.cancelled + w.server.stats.served == 1, timeout=20)
            acct = w.meter.account(meter.channel.address)
            assert acct is not None
            await wait_until(lambda: acct.paid == meter.channel.paid, timeout=10)
            assert acct.paid == meter.channel.charged  # everything the requester received is paid
            assert acct.forgiven == min(acct.debt, 8 * PC)  # only the tail it never received is excused
