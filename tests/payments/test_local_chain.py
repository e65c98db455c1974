"""Python-built vouchers and messages against the compiled contract on the EMULATED local chain."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
from pytoniq_core import begin_cell

from cocoon_node.payments.chain.base import Chain, ChannelStatus, TxResult
from cocoon_node.payments.chain.local import LocalChain, SidecarError
from cocoon_node.payments.registry import registry_body
from cocoon_node.payments.voucher import (
    OP_CLAIM,
    TAG_CLOSE,
    SignedClose,
    SignedVoucher,
    VoucherError,
    channel_address,
    check_next_voucher,
    public_key_bytes,
    sign_cell,
    sign_close,
    sign_voucher,
    voucher_cell,
)
from tests.payments.conftest import T0, TON, Parties, party_key

OP_VALUE = 50_000_000


def dest_tx(r: TxResult, address: str) -> dict[str, Any]:
    """The destination contract's transaction of this operation."""
    return next(t for t in r.transactions if t["account"] == address and t["inType"] == "internal")


async def open_channel(p: Parties, channel_id: int, deposit: int = 10 * TON, period: int = 3600) -> str:
    params = p.params(channel_id, period)
    with trio.fail_after(10):
        addr = await p.payer.open_channel(params, deposit)
    assert addr == channel_address(params)
    return addr


async def assert_conserved(chain: LocalChain) -> None:
    s = await chain.total_supply()
    assert s["sum_balances"] + s["burned"] == s["minted"], s


async def test_label_and_protocol(parties: Parties) -> None:
    assert "EMULATED" in parties.payer.label
    assert isinstance(parties.payer, Chain)


async def test_python_and_js_derive_the_same_channel_address(parties: Parties) -> None:
    params = parties.params(0xABCDEF, 600)
    with trio.fail_after(10):
        assert await parties.payer.channel_address(params) == channel_address(params)


async def test_deploy_and_python_voucher_claim_pays_exactly(parties: Parties) -> None:
    p = parties
    addr = await open_channel(p, 1)
    with trio.fail_after(20):
        st = await p.payee.get_channel_state(addr)
        assert st.status is ChannelStatus.OPEN
        assert st.deposit == 10 * TON
        assert st.payer_key == public_key_bytes(p.payer_key)
        assert st.payee == p.payee.wallet_address

        payee_before = await p.payee.get_balance(p.payee.wallet_address)
        ch_before = await p.payee.get_balance(addr)
        v = sign_voucher(p.payer_key, 1, 1, int(2.5 * TON))
        check_next_voucher(v, channel_id=1, payer_public_key=st.payer_key, deposit=st.deposit)
        r = await p.payee.claim(addr, v, value=OP_VALUE)
        assert r.success, r
        tx = dest_tx(r, addr)
        (out,) = tx["outMessages"]
        assert out["to"] == p.payee.wallet_address
        # delta + attached value - the claim's own gas and forward fees, to the nanoton
        assert int(out["value"]) == int(2.5 * TON) + OP_VALUE - int(tx["computeFee"]) - int(tx["totalFwdFees"])
        assert await p.payee.get_balance(addr) == ch_before - int(2.5 * TON) - int(tx["storageFee"])
        # the payee's balance moved by exactly: payout - what its own wallet spent on this claim
        payee_spent = sum(
            int(t["totalFees"]) + sum(int(m["value"]) + int(m["forwardFee"]) for m in t["outMessages"])
            for t in r.transactions
            if t["account"] == p.payee.wallet_address
        )
        assert await p.payee.get_balance(p.payee.wallet_address) == payee_before + int(out["value"]) - payee_spent

        st = await p.payee.get_channel_state(addr)
        assert (st.claimed, st.seqno, st.committed) == (int(2.5 * TON), 1, int(2.5 * TON))
        await assert_conserved(p.payer)


async def test_bad_vouchers_rejected_by_python_and_contract(parties: Parties) -> None:
    p = parties
    addr = await open_channel(p, 7, deposit=5 * TON)
    other = await open_channel(p, 8, deposit=5 * TON)
    payer_pub = public_key_bytes(p.payer_key)
    with trio.fail_after(30):
        first = sign_voucher(p.payer_key, 7, 2, TON)
        assert (await p.payee.claim(addr, first)).success
        mallory = party_key("mallory")
        cases: list[tuple[str, SignedVoucher, str]] = [
            ("forged", sign_voucher(mallory, 7, 3, 2 * TON), "BAD_SIGNATURE"),
            ("payee-signed", sign_voucher(p.payee_key, 7, 3, 2 * TON), "BAD_SIGNATURE"),
            (
                "tampered",
                SignedVoucher(7, 3, 4 * TON, sign_voucher(p.payer_key, 7, 3, 2 * TON).signature),
                "BAD_SIGNATURE",
            ),
            ("cross-channel", sign_voucher(p.payer_key, 8, 3, 2 * TON), "WRONG_CHANNEL"),
            ("replayed", first, "NOTHING_TO_CLAIM"),
            ("backwards", sign_voucher(p.payer_key, 7, 3, TON // 2), "NOTHING_TO_CLAIM"),
            ("overdraw", sign_voucher(p.payer_key, 7, 3, 5 * TON + 1), "OVERDRAW"),
        ]
        for name, v, code in cases:
            with pytest.raises(VoucherError):
                check_next_voucher(v, channel_id=7, payer_public_key=payer_pub, deposit=5 * TON, newest=first)
            r = await p.payee.claim(addr, v)
            assert not r.success, name
            assert r.error_name == code, (name, r.exit_code)
        # the voucher for channel 8 is fine there: ids bind vouchers to channels
        assert (await p.payee.claim(other, sign_voucher(p.payer_key, 8, 3, 2 * TON))).success
        # non-payee cannot claim even a good voucher
        r = await p.stranger.claim(addr, sign_voucher(p.payer_key, 7, 3, 2 * TON))
        assert r.error_name == "NOT_PAYEE"
        st = await p.payee.get_channel_state(addr)
        assert (st.claimed, st.seqno) == (TON, 2)
        # A payer that reuses seqno 2 for more: the payee's stream check refuses it (an honest payer signs in
        # order), but the contract ranks vouchers by amount only, so once held it pays out like any other.
        reused = sign_voucher(p.payer_key, 7, 2, 2 * TON)
        with pytest.raises(VoucherError, match="stale seqno"):
            check_next_voucher(reused, channel_id=7, payer_public_key=payer_pub, deposit=5 * TON, newest=first)
        assert (await p.payee.claim(addr, reused)).success
        st = await p.payee.get_channel_state(addr)
        assert (st.claimed, st.committed, st.seqno) == (2 * TON, 2 * TON, 2)
        await assert_conserved(p.payer)


async def test_stale_close_is_challenged_and_finished(parties: Parties) -> None:
    p = parties
    addr = await open_channel(p, 42, deposit=10 * TON, period=600)
    with trio.fail_after(30):
        old = sign_voucher(p.payer_key, 42, 2, TON)
        newest = sign_voucher(p.payer_key, 42, 9, 6 * TON)
        # the payer closes on an old voucher, hoping the payee is not watching
        r = await p.payer.unilateral_close(addr, old)
        assert r.success
        # the payee's watcher sees the close
        async for st in p.payee.watch_closes([addr], poll_interval=0.01):
            assert st.status is ChannelStatus.CLOSING
            assert st.committed == TON and st.close_initiator == 1
            assert st.close_deadline == T0 + 600
            break
        assert (await p.payee.challenge(addr, newest)).success
        assert (await p.payer.challenge(addr, old)).error_name == "AMOUNT_BACKWARDS"
        assert (await p.payer.finish(addr)).error_name == "TOO_EARLY"
        assert await p.payer.advance_time(600) == T0 + 600
        payee_before = await p.payee.get_balance(p.payee.wallet_address)
        r = await p.payer.finish(addr)
        assert r.success
        tx = dest_tx(r, addr)
        to_payee = next(m for m in tx["outMessages"] if m["to"] == p.payee.wallet_address)
        assert int(to_payee["value"]) == 6 * TON
        recv = next(t for t in r.transactions if t["account"] == p.payee.wallet_address)
        assert await p.payee.get_balance(p.payee.wallet_address) == payee_before + 6 * TON - int(recv["totalFees"])
        st = await p.payee.get_channel_state(addr)
        assert st.status is ChannelStatus.CLOSED
        assert await p.payee.get_balance(addr) == 0
        await assert_conserved(p.payer)


async def test_cooperative_close_with_python_signatures(parties: Parties) -> None:
    p = parties
    addr = await open_channel(p, 5, deposit=4 * TON)
    with trio.fail_after(20):
        assert (await p.payee.claim(addr, sign_voucher(p.payer_key, 5, 1, TON))).success
        final = 3 * TON
        sc = SignedClose(5, final, sign_close(p.payer_key, 5, final), sign_close(p.payee_key, 5, final))
        forged = SignedClose(5, final, sc.payer_signature, sign_close(party_key("x"), 5, final))
        assert (await p.payer.cooperative_close(addr, forged)).error_name == "BAD_SIGNATURE"
        r = await p.payer.cooperative_close(addr, sc)
        assert r.success
        to_payee = next(m for m in dest_tx(r, addr)["outMessages"] if m["to"] == p.payee.wallet_address)
        assert int(to_payee["value"]) == 2 * TON
        assert (await p.payer.get_channel_state(addr)).status is ChannelStatus.CLOSED
        await assert_conserved(p.payer)


async def test_voucher_signed_for_another_purpose_is_rejected(parties: Parties) -> None:
    p = parties
    addr = await open_channel(p, 11)
    with trio.fail_after(10):
        # a payer signature over close terms, dressed up as a voucher with the same fields
        cc_sig = sign_close(p.payer_key, 11, TON)
        r = await p.payee.claim(addr, SignedVoucher(11, 1, TON, cc_sig))
        assert r.error_name == "BAD_SIGNATURE"
        # a voucher-layout cell carrying the close tag, validly signed: wrong domain
        cell = voucher_cell(11, 1, TON, tag=TAG_CLOSE)
        body = begin_cell().store_uint(OP_CLAIM, 32).store_uint(0, 64).store_bytes(sign_cell(p.payer_key, cell))
        body_boc = body.store_ref(cell).end_cell().to_boc()
        r = await p.payee.send_body(addr, body_boc, OP_VALUE)
        assert r.error_name == "WRONG_TAG"


async def test_clock_moves_only_forward(parties: Parties) -> None:
    with trio.fail_after(10):
        assert await parties.payer.now() == T0
        assert await parties.payee.advance_time(30) == T0 + 30
        assert await parties.payer.set_now(T0 + 100) == T0 + 100
        with pytest.raises(SidecarError):
            await parties.payer.set_now(T0)


async def test_registry_policy(parties: Parties) -> None:
    p = parties
    with trio.fail_after(20):
        reg = await p.payer.deploy_registry(min_deposit=TON, min_challenge_period=3600)
        img = int("ab" * 32, 16)
        assert (await p.payer.registry_update(reg, "add_image", hash=img)).success
        assert (
            await p.payer.registry_update(reg, "set_params", min_deposit=2 * TON, min_challenge_period=7200,
                                          max_challenge_period=86_400)
        ).success
        bad = await p.payer.registry_update(reg, "set_params", min_deposit=0, min_challenge_period=7200,
                                            max_challenge_period=3600)
        assert bad.error_name == "BAD_PARAMS"
        r = await p.stranger.registry_update(reg, "add_model", hash=1, name="m")
        assert r.error_name == "NOT_OWNER"
        st = await p.payer.registry_state(reg)
        assert st["version"] == 2 and st["images"] == ["ab" * 32] and st["models"] == []
        assert int(st["min_deposit"]) == 2 * TON and st["min_challenge_period"] == 7200
        assert st["max_challenge_period"] == 86_400
        # the Python-built set_params body (registry_body) is the one the contract parses
        body = registry_body("set_params", min_deposit=TON, min_challenge_period=600, max_challenge_period=3600)
        assert (await p.payer.send_body(reg, body.to_boc(), OP_VALUE)).success
        st = await p.payer.registry_state(reg)
        assert (int(st["min_deposit"]), st["min_challenge_period"], st["max_challenge_period"]) == (TON, 600, 3600)
        g = await p.payer.run_get_method(reg, "is_image_allowed", [{"type": "int", "value": str(img)}])
        assert g["stack"] == [{"type": "int", "value": "-1"}]


async def test_state_survives_a_sidecar_restart(tmp_path: Path) -> None:
    state = tmp_path / "chain.json"
    payer_key, payee_key = party_key("payer"), party_key("payee")
    with trio.fail_after(60):
        async with LocalChain.start("payer", now=T0, state_file=state) as payer:
            payee = await payer.for_wallet("payee")
            parties = Parties(payer, payee, payee, payer_key, payee_key)
            addr = await open_channel(parties, 99, deposit=3 * TON)
            assert (await payee.claim(addr, sign_voucher(payer_key, 99, 1, TON))).success
        assert state.exists()
        async with LocalChain.start("payee", state_file=state) as payee2:
            st = await payee2.get_channel_state(addr)
            assert (st.status, st.claimed, st.deposit) == (ChannelStatus.OPEN, TON, 3 * TON)
            assert await payee2.now() == T0
            assert (await payee2.claim(addr, sign_voucher(payer_key, 99, 2, 2 * TON))).success


async def test_sidecar_process_is_stopped_on_exit() -> None:
    with trio.fail_after(30):
        async with LocalChain.start("solo", now=T0) as chain:
            proc = chain._sidecar.proc
            assert proc.returncode is None
        assert proc.returncode is not None


async def test_transaction_timing(parties: Parties) -> None:
    """Reports ms per emulated claim round trip through Python (3 transactions each)."""
    p = parties
    addr = await open_channel(p, 123, deposit=100 * TON)
    n = 20
    with trio.fail_after(60):
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            assert (await p.payee.claim(addr, sign_voucher(p.payer_key, 123, i, i * TON // 100))).success
        ms = (time.perf_counter() - t0) * 1000 / n
    print(f"\nlocal chain: {ms:.1f} ms per claim (python sign + sidecar + 3 TVM transactions)")
