"""Issue 19 on the EMULATED local chain with Python-built messages: vouchers rank by amount, so a payer can
never take back what its payee earned; channel terms the contract refuses are refused in Python first."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cocoon_node.config import ConfigError, load_config
from cocoon_node.payments.chain.base import ChannelStatus
from cocoon_node.payments.chain.ton import build_open_channel
from cocoon_node.payments.voucher import (
    MAX_CHALLENGE_PERIOD,
    MAX_SEQNO,
    MIN_GAS_RESERVE,
    VoucherError,
    sign_voucher,
)
from tests.payments.conftest import TON, Parties
from tests.payments.test_local_chain import assert_conserved, dest_tx, open_channel
from tests.payments.test_metering import PP, chat, tail_voucher_stored, world


async def test_payer_close_with_a_higher_seqno_for_less_loses_to_the_payees_best_voucher(parties: Parties) -> None:
    p = parties
    addr = await open_channel(p, 19, deposit=10 * TON, period=600)
    with trio.fail_after(30):
        assert (await p.payee.claim(addr, sign_voucher(p.payer_key, 19, 1, TON))).success
        held = sign_voucher(p.payer_key, 19, 10, 6 * TON)  # what the payee holds off chain
        lowball = sign_voucher(p.payer_key, 19, 11, TON)   # the payer signs more seqno for less and closes
        assert (await p.payer.unilateral_close(addr, lowball)).success
        st = await p.payee.get_channel_state(addr)
        assert (st.status, st.committed, st.close_initiator) == (ChannelStatus.CLOSING, TON, 1)
        assert (await p.payee.challenge(addr, held)).success
        assert (await p.payer.challenge(addr, sign_voucher(p.payer_key, 19, MAX_SEQNO, 5 * TON))).error_name == (
            "AMOUNT_BACKWARDS")
        st = await p.payee.get_channel_state(addr)
        assert (st.committed, st.seqno, st.owed_to_payee) == (6 * TON, 10, 5 * TON)
        await p.payer.advance_time(600)
        r = await p.payer.finish(addr)
        assert r.success
        to_payee = next(m for m in dest_tx(r, addr)["outMessages"] if m["to"] == p.payee.wallet_address)
        assert int(to_payee["value"]) == 5 * TON  # everything earned since the claim
        assert (await p.payee.get_channel_state(addr)).status is ChannelStatus.CLOSED
        await assert_conserved(p.payer)


async def test_payer_cannot_lock_a_close_with_a_max_seqno_zero_voucher(parties: Parties) -> None:
    p = parties
    addr = await open_channel(p, 20, deposit=10 * TON, period=600)
    with trio.fail_after(30):
        assert (await p.payer.unilateral_close(addr, None)).success
        r = await p.payer.challenge(addr, sign_voucher(p.payer_key, 20, MAX_SEQNO, 0))
        assert (r.success, r.error_name) == (False, "AMOUNT_BACKWARDS")
        assert (await p.payee.challenge(addr, sign_voucher(p.payer_key, 20, 3, 2 * TON))).success
        assert (await p.payee.get_channel_state(addr)).committed == 2 * TON


async def test_worker_challenges_a_payer_close_with_a_higher_seqno_for_less(parties: Parties, tmp_path: Path) -> None:
    """Settlement must compare amounts, not seqnos: the payer's lowball voucher carries the higher seqno."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(30), meter)
            ch = meter.channel
            newest = await tail_voucher_stored(w, ch)
            lowball = sign_voucher(w.p.payer_key, ch.params.channel_id, newest.seqno + 1, 30 * PP)
            assert lowball.cumulative < newest.cumulative
            assert (await w.p.payer.unilateral_close(ch.address, lowball)).success
            assert await w.settlement.check_closes() == [ch.address]
            assert w.settlement.stats.challenges == 1
            st = await w.p.payee.get_channel_state(ch.address)
            assert (st.committed, st.seqno) == (newest.cumulative, newest.seqno)
            await w.p.payer.advance_time(3601)
            assert await w.settlement.check_closes() == [ch.address]  # finish pays the newest voucher
            assert (await w.p.payee.get_channel_state(ch.address)).status is ChannelStatus.CLOSED


async def test_channel_terms_the_contract_refuses_never_leave_the_node(parties: Parties) -> None:
    p = parties
    with trio.fail_after(30):
        sent_before = len(await p.payer.transactions(limit=10_000))
        for period in (0xFFFFFFFF, MAX_CHALLENGE_PERIOD + 1):
            with pytest.raises(VoucherError, match="challenge_period"):
                await p.payer.open_channel(p.params(31, period), TON)
            with pytest.raises(VoucherError, match="challenge_period"):
                build_open_channel(p.params(31, period), TON)
        with pytest.raises(VoucherError, match="reserve"):
            await p.payer.open_channel(p.params(32), TON, gas=MIN_GAS_RESERVE - 1)
        with pytest.raises(VoucherError, match="deposit"):
            await p.payer.open_channel(p.params(32), 0)
        assert len(await p.payer.transactions(limit=10_000)) == sent_before, "nothing was sent"
        # past the Python check, the contract refuses the same terms (the raw sidecar call skips Python)
        raw = {"from": p.payer.wallet, "deposit": str(TON)}
        r = await p.payer.call("deploy_channel", {**raw, **p.params(33, 0xFFFFFFFF).to_json(), "gas": str(TON // 10)})
        assert (r["success"], r["exit_code"]) == (False, 116)
        r = await p.payer.call("deploy_channel", {**raw, **p.params(34).to_json(), "gas": "0"})
        assert (r["success"], r["exit_code"]) == (False, 113)
        # the largest period is fine, and so is the minimum reserve
        assert await open_channel(p, 35, deposit=TON, period=MAX_CHALLENGE_PERIOD)
        await p.payer.open_channel(p.params(36), TON, gas=MIN_GAS_RESERVE)
        await assert_conserved(p.payer)


def test_config_refuses_a_challenge_period_the_contract_would_refuse() -> None:
    with pytest.raises(ConfigError, match=r"payments\.challenge_period"):
        load_config(env={}, overrides={"node": {"network": "local"},
                                       "payments": {"challenge_period": MAX_CHALLENGE_PERIOD + 1}})
    cfg = load_config(env={}, overrides={"node": {"network": "local"},
                                         "payments": {"challenge_period": MAX_CHALLENGE_PERIOD}})
    assert cfg.payments.challenge_period == MAX_CHALLENGE_PERIOD
