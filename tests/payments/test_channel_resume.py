"""Channels outlive restarts (issue 16): a requester resumes at start what the chain and its vouchers agree on,
opens a new channel for one that is closed or that its store fell behind on, closes an idle one cooperatively
(trio's mock clock), and a restarted worker counts what its vouchers paid as served."""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path

import trio
import trio.testing
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.config import load_config
from cocoon_node.node.payments import PaymentsRole
from cocoon_node.payments.chain.base import ChannelStatus
from cocoon_node.payments.channels import ChannelManager
from cocoon_node.payments.store import PaymentStore
from cocoon_node.payments.voucher import public_key_bytes
from tests.payments.conftest import TON, Parties
from tests.payments.test_metering import PC, PP, WINDOW, WORKER_PEER, World, chat, tail_voucher_stored, world
from tests.waiting import wait_until


def manager_on(w: World, path: Path) -> ChannelManager:
    """A requester "restarted" on the database at ``path``: a fresh manager, nothing in memory."""
    w.payer_store = PaymentStore.open(path)
    return ChannelManager(w.p.payer, w.payer_store, w.p.payer_key, deposit=2 * TON, credit_window=WINDOW,
                          voucher_every=8)


async def test_a_restarted_requester_resumes_its_channel_and_continues_the_voucher_sequence(
        parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            m = await w.meter_for()
            await w.run(chat(20), m)
            address, last = m.channel.address, m.channel.newest
            assert last is not None
            await tail_voucher_stored(w, m.channel)
            w.payer_store.close()
            manager = manager_on(w, tmp_path / "payer.db")
            assert await manager.resume() == [address]  # at start, before any request
            assert manager.channels[WORKER_PEER].newest == last and manager.resume_stats["resumed"] == 1
            m2 = await w.meter_for(manager)
            pt, ct = await w.run(chat(6), m2)
            assert m2.channel.address == address and manager.onchain_ops["open"] == 0
            newest = await tail_voucher_stored(w, m2.channel)
            # the worker accepted the next seqnos of the same sequence: nothing replayed, nothing paid twice
            assert newest.seqno > last.seqno and newest.cumulative == last.cumulative + pt * PP + ct * PC
            assert w.meter.stats.rejected_vouchers == 0
            assert (await w.p.payee.get_channel_state(address)).status is ChannelStatus.OPEN


async def test_a_channel_the_chain_closed_is_not_resumed_and_a_new_one_opens(parties: Parties,
                                                                             tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            m = await w.meter_for()
            await w.run(chat(8), m)
            address = m.channel.address
            await tail_voucher_stored(w, m.channel)
            w.payer_store.close()
            w.settlement.idle_close_after = 0.0  # while the requester is down, the worker closes the channel
            assert await w.settlement.close_idle() == [address]
            manager = manager_on(w, tmp_path / "payer.db")
            assert await manager.resume() == [] and manager.resume_stats["ended_on_chain"] == 1
            rec = await w.payer_store.run(w.payer_store.channel, address)
            assert rec is not None and rec.status == "closing"  # recorded; the watcher collects the refund
            m2 = await w.meter_for(manager)
            await w.run(chat(5), m2)
            assert m2.channel.address != address and manager.onchain_ops["open"] == 1


async def test_a_channel_the_payers_store_fell_behind_on_is_not_resumed(parties: Parties, tmp_path: Path) -> None:
    """A payer database restored from an older copy: the chain holds a voucher beyond its newest. Signing on
    from it would reuse seqnos the worker holds (the worker refuses them); the channel is retired instead."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(120):
            m = await w.meter_for()
            await w.run(chat(8), m)
            address = m.channel.address
            await tail_voucher_stored(w, m.channel)
            with sqlite3.connect(tmp_path / "payer.db") as src, sqlite3.connect(tmp_path / "old.db") as old:
                src.backup(old)  # an "old backup" of the payer's database
            await w.run(chat(9), await w.meter_for())
            newest = await tail_voucher_stored(w, m.channel)
            assert await w.settlement.claim_due(force=True) == [address]  # the chain now holds that voucher
            w.payer_store.close()
            manager = manager_on(w, tmp_path / "old.db")
            m2 = await w.meter_for(manager)  # the first request's look-up checks as resume() does at start
            assert m2.channel.address != address and manager.onchain_ops["open"] == 1
            await w.run(chat(5), m2)  # a fresh channel serves
            assert manager.resume_stats["refused"] == 1
            rec = await w.payer_store.run(w.payer_store.channel, address)
            assert rec is not None and rec.status == "closing"  # the watcher closes it alone
            assert (await w.p.payee.get_channel_state(address)).claimed == newest.cumulative
            assert w.meter.stats.rejected_vouchers == 0


async def test_a_restarted_worker_counts_what_its_vouchers_paid_as_served(parties: Parties, tmp_path: Path) -> None:
    """A worker killed before it stored a request's ``served`` total: what the newest voucher paid was served,
    so the restarted worker does not serve that much again as if it were prepaid."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            m = await w.meter_for()
            await w.run(chat(10), m)
            newest = await tail_voucher_stored(w, m.channel)
            await w.worker_store.run(partial(w.worker_store.set_channel, m.channel.address, served=0))  # lost
            meter2 = w.new_worker_meter()
            await meter2.admit("r2", m.payment_ref(), 3)
            acct = meter2.account(m.channel.address)
            assert acct is not None and acct.newest == newest
            assert acct.served == newest.cumulative + 3 * PP and acct.debt == 3 * PP


def requester_role(w: World, tmp_path: Path, idle: float) -> PaymentsRole:
    """The node's payments role of a requester paying with the test's payer key, on the test's chain."""
    seed = w.p.payer_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    cfg = load_config(env={}, overrides={"node": {"data_dir": str(tmp_path / "req")},
                                         "requester": {"enabled": True},
                                         "payments": {"payer_idle_close": idle, "credit_window": WINDOW}})
    return PaymentsRole(cfg, create_new_key_pair(seed), w.p.payer, w.payer_store)


async def test_an_idle_channel_is_closed_cooperatively(parties: Parties, tmp_path: Path,
                                                        mock_clock: trio.testing.MockClock) -> None:
    """Idle for ``payments.payer_idle_close`` (virtual time: trio's mock clock, jumped), a channel is closed
    with the worker's co-signature; one in use is not."""
    # Real time for the chain and the meshes; idleness is a jump of the clock (small: every deadline of the
    # test and its fixtures moves with it).
    mock_clock.rate = 1.0
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            role = requester_role(w, tmp_path, idle=20.0)
            assert role.channels is not None
            role._cosigner = lambda open_stream, peer: w.settlement.cosign_close  # type: ignore[method-assign]
            m = await role.channels.meter_for(WORKER_PEER, w.p.payee.wallet_address, public_key_bytes(w.p.payee_key),
                                              price_prompt=PP, price_completion=PC)
            await w.run(chat(6), m)
            await tail_voucher_stored(w, m.channel)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(role.close_idle, None, 20.0, poll=0.05))
                mock_clock.jump(10)  # used 10 s ago: not idle yet
                assert role.channels.idle_peers(20.0) == [] and WORKER_PEER in role.channels.channels
                mock_clock.jump(11)

                async def closed() -> bool:
                    rec = await w.payer_store.run(w.payer_store.channel, m.channel.address)
                    return rec is not None and rec.status == "closed"

                await wait_until(closed, timeout=30)
                nursery.cancel_scope.cancel()
            st = await w.p.payee.get_channel_state(m.channel.address)
            assert st.status is ChannelStatus.CLOSED and role.channels.onchain_ops["close"] == 1
            assert WORKER_PEER not in role.channels.channels
