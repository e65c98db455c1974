"""netsim's rogue nodes against real node code: each cheat is caught or bounded where the issue says it must be.

Runs the rogue pieces in-process over real libp2p streams and the EMULATED chain (the payments test world).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cocoon_node.inference.audit import HELD_BACK_TOKENS
from cocoon_node.inference.stream import PROTOCOL_ID, WorkerFailure
from cocoon_node.inference.tokencount import WhitespaceCounter
from cocoon_node.payments.chain.base import ChannelStatus
from netsim.paycheats import INFLATE_FACTOR, InflatingServer
from netsim.rogue import OverclaimingServer, StaleClosingSettlement, UnpaidBook, WithholdingMeter, _config
from tests.payments.conftest import Parties, contract_deps, parties  # noqa: F401 - fixtures
from tests.payments.test_metering import MODEL, PC, PP, WINDOW, chat, tail_voucher_stored, world
from tests.waiting import wait_until


async def test_overclaiming_worker_is_caught_and_paid_only_for_what_it_streamed(
    parties: Parties, tmp_path: Path  # noqa: F811
) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            honest = w.worker_mesh  # the honest server is replaced by the rogue on the same mesh and meter
            rogue = OverclaimingServer(w.backend, _terms(), meter=w.meter, extra=5)
            honest.set_stream_handler(PROTOCOL_ID, rogue.handle)
            meter = await w.meter_for()
            with pytest.raises(WorkerFailure) as err:
                await w.run(chat(12), meter)
            assert err.value.code == "overcount" and "claims 17 completion tokens but streamed 12" in str(err.value)
            await wait_until(lambda: rogue.books, timeout=10)
            (book,) = rogue.books.values()
            assert (book.overclaims, book.claimed_extra_tokens, book.streamed_tokens) == (1, 5, 12)
            assert book.streamed_amount == 12 * PP + 12 * PC
            # the requester charged exactly what was streamed, never the claimed extra
            assert meter.channel.charged == book.streamed_amount
            assert meter.channel.paid <= book.streamed_amount < book.claimed_amount


async def test_inflating_worker_is_dropped_and_paid_at_most_the_audits_slack(
    parties: Parties, tmp_path: Path  # noqa: F811
) -> None:
    """netsim/paycheats.py's inflating worker rewrites its typed delta and final frames on the wire; the
    requester's audit drops it, and what was charged stays within the bound its invariant checks."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            rogue = InflatingServer(w.backend, _terms(), meter=w.meter)
            w.worker_mesh.set_stream_handler(PROTOCOL_ID, rogue.handle)
            meter = await w.meter_for()
            meter.token_counter = WhitespaceCounter()  # a requester holding the announced tokenizer, as in netsim
            with pytest.raises(WorkerFailure) as err:
                await w.run(chat(12), meter)
            assert err.value.code == "overcount"
            await wait_until(lambda: rogue.books, timeout=10)
            (book,) = rogue.books.values()
            assert book.requests == 1 and book.claimed_tokens == INFLATE_FACTOR * book.streamed_tokens > 0
            # the bound of paycheats' inflate_contained invariant: what was streamed plus the audit's slack
            slack = (HELD_BACK_TOKENS + book.streamed_tokens // 32 + 1) * PC
            assert meter.channel.charged <= book.streamed_amount + slack


async def test_stale_close_settles_at_the_stale_amount_and_every_replay_is_refused(
    parties: Parties, tmp_path: Path  # noqa: F811
) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            for words in (10, 20):  # a meter per request: its counts are the request's own
                meter = await w.meter_for()
                await w.run(chat(words), meter)
            newest = await tail_voucher_stored(w, meter.channel)
            rogue = StaleClosingSettlement(w.p.payee, w.worker_store, w.p.payee_key, claim_threshold=10**15,
                                           stale_after=3)
            assert await rogue.stale_close_due() == [meter.channel.address]
            close = rogue.closes[meter.channel.address]
            # the first voucher paid the first request's prompt with its first token(s) (prompts fall due there)
            assert close.success and close.stale_seqno == 1 and 10 * PP < close.stale_cumulative < newest.cumulative
            assert close.newest_cumulative == newest.cumulative
            assert [a.error_name for a in close.attempts] == ["AMOUNT_BACKWARDS", "BAD_SIGNATURE", "WRONG_STATE"]
            assert await rogue.stale_close_due() == []  # one close per payer
            # the payer notices; the rogue never challenges its own close
            assert await w.manager.check_closes() == [meter.channel.address]
            assert w.manager.closes_seen[meter.channel.address].stale
            assert await rogue.check_closes() == []  # before the deadline
            await w.p.payee.advance_time(3601)
            assert await rogue.check_closes() == [meter.channel.address]
            st = await w.p.payee.get_channel_state(meter.channel.address)
            assert st.status is ChannelStatus.CLOSED
            await w.manager.check_closes()
            rec = await w.payer_store.run(w.payer_store.channel, meter.channel.address)
            assert rec is not None and rec.status == "closed"


async def test_withholding_meter_costs_each_worker_at_most_its_window(
    parties: Parties, tmp_path: Path  # noqa: F811
) -> None:
    async with world(parties, tmp_path, payment_timeout=0.5) as w:
        with trio.fail_after(60):
            honest = await w.meter_for()
            book = UnpaidBook()
            codes = []
            for _ in range(2):
                with pytest.raises(WorkerFailure) as err:
                    await w.run(chat(50), WithholdingMeter(honest, book))
                codes.append(err.value.code)
            # The first is cut off at the window; the payer still owes the window, so the second is refused
            # before any prefill.
            assert codes == ["payment", "payment_required"]
            assert book.requests == 1 and book.prompt_tokens == 50
            await wait_until(lambda: honest.channel.paid == 50 * PP, timeout=10)  # the prompt is paid
            unpaid = book.received_amount - honest.channel.paid
            assert unpaid == book.completion_tokens * PC and 0 < unpaid <= WINDOW


def test_rogue_nodes_refuse_a_real_network(tmp_path: Path) -> None:
    cfg = tmp_path / "testnet.toml"
    cfg.write_text('[node]\nnetwork = "testnet"\n[worker]\ntee = "tdx"\n[payments]\nchain = "ton"\n')
    with pytest.raises(SystemExit, match="NETSIM-ONLY"):
        _config(["run", "--config", str(cfg), "--data-dir", str(tmp_path), "--worker", "--backend", "synthetic"])
    assert _config(["run", "--data-dir", str(tmp_path), "--worker"]).node.network == "local"


def _terms():  # type: ignore[no-untyped-def]
    from cocoon_node.inference.stream import WorkerTerms

    return WorkerTerms(MODEL, PP, PC, 4, 4096)
