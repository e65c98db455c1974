"""Metered inference over payment channels on the EMULATED local chain, between two real in-process meshes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.inference.chat import ChatRequest
from cocoon_node.inference.stream import (
    PROTOCOL_ID,
    InferenceServer,
    PaymentRequired,
    WorkerFailure,
    WorkerTerms,
    call_worker,
)
from cocoon_node.inference.synthetic import SyntheticBackend
from cocoon_node.mesh import Mesh, MeshSettings
from cocoon_node.payments.chain.base import ChannelStatus
from cocoon_node.payments.channels import ChannelManager, Settlement
from cocoon_node.payments.meter import PayerChannel, RequesterPaymentMeter, VoucherRejected, WorkerPaymentMeter
from cocoon_node.payments.store import PaymentStore, StoreError
from cocoon_node.payments.voucher import ChannelParams, public_key_bytes, sign_voucher
from cocoon_node.wire.messages.inference import PaymentRef
from tests.conftest import chat_request
from tests.payments.conftest import TON, Parties, party_key
from tests.waiting import wait_until

PP, PC = 1_000, 3_000  # nanotons per prompt / completion token
WINDOW = 60_000  # 20 completion tokens
MODEL = "synthetic-echo"
WORKER_PEER = "worker-peer"


async def tail_voucher_stored(w: World, channel: Any) -> Any:
    """The worker stores the requester's last (tail) voucher just after the stream ends; wait for it."""

    async def stored() -> Any:
        newest = await w.worker_store.run(w.worker_store.newest_voucher, channel.address)
        return newest if newest is not None and channel.newest is not None and \
            newest.seqno == channel.newest.seqno else None

    return await wait_until(stored, timeout=30)


#: ``chat(n)``: a request of n distinct words, one synthetic token each (the suite's shared helper).
chat = chat_request


@dataclass
class World:
    p: Parties
    tmp: Path
    worker_store: PaymentStore
    payer_store: PaymentStore
    meter: WorkerPaymentMeter
    manager: ChannelManager
    settlement: Settlement
    backend: SyntheticBackend
    worker_mesh: Mesh
    req_mesh: Mesh
    server: InferenceServer

    def new_worker_meter(self, **kw: Any) -> WorkerPaymentMeter:
        args: dict[str, Any] = dict(
            payee_key=public_key_bytes(self.p.payee_key),
            price_prompt=PP,
            price_completion=PC,
            credit_window=WINDOW,
            payment_timeout=5.0,
        )
        args.update(kw)
        return WorkerPaymentMeter(self.p.payee, self.worker_store, **args)

    async def meter_for(self, manager: ChannelManager | None = None) -> RequesterPaymentMeter:
        m = manager or self.manager
        return await m.meter_for(
            WORKER_PEER,
            self.p.payee.wallet_address,
            public_key_bytes(self.p.payee_key),
            price_prompt=PP,
            price_completion=PC,
        )

    async def run(self, req: ChatRequest, meter: Any) -> tuple[int, int]:
        """One request over a real libp2p stream; returns (prompt_tokens, completion_tokens)."""
        stream = await self.req_mesh.new_stream(self.worker_mesh.peer_id, PROTOCOL_ID, self.worker_mesh.listen_addrs())
        async with call_worker(
            stream, req, price_prompt=PP, price_completion=PC, meter=meter, token_timeout=30.0
        ) as call:
            async for _ in call.deltas():
                pass
            assert call.final is not None
            return call.final.prompt_tokens, call.final.completion_tokens


@asynccontextmanager
async def world(p: Parties, tmp: Path, *, payment_timeout: float = 15.0,
                server_factory: Callable[..., InferenceServer] = InferenceServer) -> AsyncIterator[World]:
    worker_store = PaymentStore.open(tmp / "worker.db")
    payer_store = PaymentStore.open(tmp / "payer.db")
    meter = WorkerPaymentMeter(
        p.payee,
        worker_store,
        payee_key=public_key_bytes(p.payee_key),
        price_prompt=PP,
        price_completion=PC,
        credit_window=WINDOW,
        payment_timeout=payment_timeout,
    )
    manager = ChannelManager(p.payer, payer_store, p.payer_key, deposit=2 * TON, credit_window=WINDOW, voucher_every=8)
    settlement = Settlement(p.payee, worker_store, p.payee_key, claim_threshold=100_000)
    backend = SyntheticBackend(model_name=MODEL, tokens_per_second=2000)
    server = server_factory(backend, WorkerTerms(MODEL, PP, PC, 4, 4096), meter=meter)
    settings = MeshSettings(local_cluster=True)
    async with Mesh(create_new_key_pair(), settings).start() as wm:
        wm.set_stream_handler(PROTOCOL_ID, server.handle)
        # As in the node, the requester's libp2p identity is its payer key: the worker checks that the
        # stream's authenticated key owns the channel it is asked to draw on.
        payer_seed = p.payer_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        async with Mesh(
            create_new_key_pair(payer_seed), MeshSettings(local_cluster=True, bootstrap=(wm.listen_addrs()[0],))
        ).start() as rm:
            try:
                yield World(p, tmp, worker_store, payer_store, meter, manager, settlement, backend, wm, rm, server)
            finally:
                worker_store.close()
                payer_store.close()


def test_store_never_reuses_a_seqno(tmp_path: Path) -> None:
    store = PaymentStore.open(tmp_path / "s.db")
    params = ChannelParams(b"\x01" * 32, b"\x02" * 32, "0:" + "11" * 32, "0:" + "22" * 32, 5, 600)
    store.upsert_channel("addr", "payer", "peer", params, 100)
    k = party_key("payer")
    store.add_voucher("addr", sign_voucher(k, 5, 1, 10), usage=("r1", 3, 4, 10))
    store.add_voucher("addr", sign_voucher(k, 5, 2, 20))
    with pytest.raises(StoreError):
        store.add_voucher("addr", sign_voucher(k, 5, 2, 30))  # used seqno, other amount
    with pytest.raises(StoreError):
        store.add_voucher("addr", sign_voucher(k, 5, 3, 19))  # backwards
    store.close()
    store = PaymentStore.open(tmp_path / "s.db")  # "restart"
    newest = store.newest_voucher("addr")
    assert newest is not None and (newest.channel_id, newest.seqno, newest.cumulative) == (5, 2, 20)
    assert store.voucher_count("addr") == 2 and store.usage("r1") == (3, 4, 10)
    assert store.channels("payer", peer="peer")[0].params == params
    store.close()


async def test_paid_stream_claim_and_cooperative_close(parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            total = 0
            for words in (50, 7, 55):  # prompts fit the credit window (a worker admits no prefill beyond it)
                meter = await w.meter_for()
                pt, ct = await w.run(chat(words), meter)
                assert (pt, ct) == (words, words)
                total += pt * PP + ct * PC
            ch = w.manager.channels[WORKER_PEER]
            assert ch.charged == total
            acct = w.meter.account(ch.address)
            await wait_until(lambda: acct is not None and acct.paid >= total, timeout=30)
            # the worker served exactly what the requester was charged (its exposure forgives in-flight tails)
            assert acct is not None and acct.served + acct.forgiven == total
            # the requester pays the tail after `final` and the worker waits for it: nothing is left unpaid
            assert acct.paid == total, (total, acct.paid)
            # settlement claims everything vouchered so far
            assert await w.settlement.claim_due() == [ch.address]
            st = await w.p.payee.get_channel_state(ch.address)
            stored = await w.worker_store.run(w.worker_store.newest_voucher, ch.address)
            assert stored is not None and st.claimed == acct.paid == stored.cumulative
            claimed = st.claimed
            # cooperative close pays the tail, to the nanoton
            r = await w.manager.close(WORKER_PEER, w.settlement.cosign_close)
            assert r.success, r.error_name
            payouts = [
                int(m["value"])
                for t in r.transactions
                if t["account"] == ch.address
                for m in t["outMessages"]
                if m["to"] == w.p.payee.wallet_address
            ]
            assert payouts == ([total - claimed] if total > claimed else [])  # no zero-value payout message
            assert (await w.p.payee.get_channel_state(ch.address)).status is ChannelStatus.CLOSED
            # on-chain ops: open + claim + close; vouchers stayed off chain
            assert w.manager.onchain_ops == {"open": 1, "top_up": 0, "close": 1}
            assert w.settlement.stats.claims == 1


class StopsPaying(RequesterPaymentMeter):
    """Pays the prompt, then never again."""

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        await super().on_tokens(completion_tokens)
        self.channel.newest  # noqa: B018 - state kept, voucher withheld
        return None


async def test_requester_that_stops_paying_costs_at_most_the_window(parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path, payment_timeout=1.0) as w:
        with trio.fail_after(60):
            honest = await w.meter_for()
            bad = StopsPaying(honest.channel, price_prompt=PP, price_completion=PC, credit_window=WINDOW)
            before = w.backend.tokens_generated
            with pytest.raises(WorkerFailure):
                await w.run(chat(55), bad)  # 55 completion tokens would cost 165 000, the window is 60 000
            assert w.meter.stats.payment_timeouts == 1
            acct = w.meter.account(honest.channel.address)
            assert acct is not None
            # served beyond payment never exceeds the credit window (+ one token step)
            assert acct.served - acct.paid <= WINDOW
            served_tokens = (acct.served - 55 * PP) // PC
            assert served_tokens <= WINDOW // PC + 8 + 1
            assert w.backend.tokens_generated - before <= WINDOW // PC + 8 + 2  # generation stopped too


async def test_stale_close_by_payer_is_challenged(parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(30), meter)
            ch = meter.channel
            newest = await tail_voucher_stored(w, ch)
            assert newest is not None and newest.seqno > 1
            # the payer tries to close on its first (prompt-only) voucher
            old = sign_voucher(w.p.payer_key, ch.params.channel_id, 1, 30 * PP)
            assert (await w.p.payer.unilateral_close(ch.address, old)).success
            assert await w.settlement.check_closes() == [ch.address]
            assert w.settlement.stats.challenges == 1
            st = await w.p.payee.get_channel_state(ch.address)
            assert st.committed == newest.cumulative
            await w.p.payer.advance_time(3601)
            assert await w.settlement.check_closes() == [ch.address]  # finish
            assert (await w.p.payee.get_channel_state(ch.address)).status is ChannelStatus.CLOSED


async def test_bad_vouchers_rejected_and_replays_ignored(parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            m = await w.meter_for()
            ch = m.channel
            cid = ch.params.channel_id
            ref = m.payment_ref()
            # a stranger's channel or a wrong id is refused at admission
            with pytest.raises(PaymentRequired):
                await w.meter.admit("x", PaymentRef(channel=ch.address, channel_id=(cid ^ 1).to_bytes(32, "big")), 1)
            with pytest.raises(PaymentRequired):
                await w.meter.admit("x", None, 1)
            other = await ChannelManager(
                w.p.payer, w.payer_store, w.p.payer_key, deposit=TON, credit_window=WINDOW
            ).channel_for("p2", w.p.stranger.wallet_address, public_key_bytes(party_key("s")))
            with pytest.raises(PaymentRequired, match="does not pay"):
                await w.meter.admit(
                    "x", PaymentRef(channel=other.address, channel_id=other.params.channel_id.to_bytes(32, "big")), 1
                )

            await w.meter.admit("r", ref, 10)
            good = sign_voucher(w.p.payer_key, cid, 5, 10 * PP)
            await w.meter.on_voucher("r", good.to_boc())
            acct = w.meter.account(ch.address)
            assert acct is not None and acct.debt == 0
            bad = {
                "forged": sign_voucher(party_key("mallory"), cid, 6, 20 * PP),
                "cross-channel": sign_voucher(w.p.payer_key, other.params.channel_id, 6, 20 * PP),
                "reordered": sign_voucher(w.p.payer_key, cid, 4, 20 * PP),
                "backwards": sign_voucher(w.p.payer_key, cid, 6, 5 * PP),
                "overdraw": sign_voucher(w.p.payer_key, cid, 6, 3 * TON),
            }
            for name, v in bad.items():
                with pytest.raises(VoucherRejected):
                    await w.meter.on_voucher("r", v.to_boc())
                assert acct.newest == good, name
            with pytest.raises(VoucherRejected):
                await w.meter.on_voucher("r", b"garbage")
            # replay / harmless reordering (older and not larger) changes nothing
            await w.meter.on_voucher("r", good.to_boc())
            await w.meter.on_voucher("r", sign_voucher(w.p.payer_key, cid, 3, 9 * PP).to_boc())
            assert w.meter.stats.stale_vouchers == 2 and acct.newest == good
            assert await w.worker_store.run(w.worker_store.voucher_count, ch.address) == 1
            await w.meter.finish("r", 10, 0)


async def test_restart_of_both_sides_from_the_store(parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            m = await w.meter_for()
            await w.run(chat(40), m)
            address = m.channel.address
            last = m.channel.newest
            assert last is not None
            # let the tail voucher land, so the "kill" below happens at a known point
            worker_last = await tail_voucher_stored(w, m.channel)
            # "kill" both sides: drop the objects, reopen the databases
            w.payer_store.close()
            w.worker_store.close()
            w.payer_store = PaymentStore.open(tmp_path / "payer.db")
            w.worker_store = PaymentStore.open(tmp_path / "worker.db")
            manager2 = ChannelManager(
                w.p.payer, w.payer_store, w.p.payer_key, deposit=2 * TON, credit_window=WINDOW, voucher_every=8
            )
            meter2 = w.new_worker_meter()
            m2 = await w.meter_for(manager2)
            assert m2.channel.address == address and m2.channel.newest == last
            assert manager2.onchain_ops["open"] == 0  # no second channel
            await meter2.admit("r2", m2.payment_ref(), 5)
            acct = meter2.account(address)
            assert acct is not None and acct.newest == worker_last  # the worker remembers its newest voucher
            with pytest.raises(VoucherRejected):  # a replayed seqno with a new amount
                await meter2.on_voucher(
                    "r2",
                    sign_voucher(
                        w.p.payer_key, m2.channel.params.channel_id, worker_last.seqno, worker_last.cumulative + 1
                    ).to_boc(),
                )
            assert await m2.on_accept(5) is None  # the prompt falls due with the first token, or at the end
            v = await m2.on_final(0)
            assert v is not None
            await meter2.on_voucher("r2", v)
            assert acct.newest is not None and acct.newest.seqno == last.seqno + 1
            assert acct.newest.cumulative == last.cumulative + 5 * PP
            await meter2.finish("r2", 5, 0)
            s2 = Settlement(w.p.payee, w.worker_store, w.p.payee_key, claim_threshold=1)
            assert await s2.claim_due() == [address]
            assert (await w.p.payee.get_channel_state(address)).claimed == acct.newest.cumulative


async def test_worker_closes_idle_channel_and_collects(parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(12), meter)
            ch = meter.channel
            newest = await tail_voucher_stored(w, ch)
            w.settlement.idle_close_after = 3600.0
            assert await w.settlement.close_idle() == []  # not idle yet
            w.settlement.idle_close_after = 0.0  # the requester went away long ago
            assert await w.settlement.close_idle() == [ch.address]
            st = await w.p.payee.get_channel_state(ch.address)
            assert st.status is ChannelStatus.CLOSING and st.committed == newest.cumulative
            await w.p.payee.advance_time(3601)
            assert await w.settlement.check_closes() == [ch.address]  # finish pays out
            assert (await w.p.payee.get_channel_state(ch.address)).status is ChannelStatus.CLOSED


async def test_channel_of_another_requester_is_refused(parties: Parties, tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            meter = await w.meter_for()  # the honest requester's channel
            async with Mesh(create_new_key_pair(), MeshSettings(
                    local_cluster=True, bootstrap=(w.worker_mesh.listen_addrs()[0],))).start() as stranger:
                stream = await stranger.new_stream(w.worker_mesh.peer_id, PROTOCOL_ID)
                with pytest.raises(WorkerFailure) as err:
                    async with call_worker(stream, chat(5), price_prompt=PP, price_completion=PC, meter=meter):
                        pass
            assert err.value.code == "payment_required" and "another requester" in str(err.value)
            assert w.meter.stats.refused == 1


async def test_tail_voucher_is_returned_when_the_tail_alone_makes_one_due(parties: Parties, tmp_path: Path) -> None:
    """Regression: on_final once signed a voucher for the charge, dropped it and returned None, so the worker
    never saw the newest voucher the requester had stored."""
    from cocoon_node.payments.voucher import SignedVoucher

    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            meter = await w.meter_for()
            assert await meter.on_accept(12) is None  # nothing is owed before the worker answers
            tail = await meter.on_final(12)  # 12 x PC = 36 000: over half the 60 000 window by itself
            assert tail is not None
            newest = meter.channel.newest
            assert newest is not None
            assert SignedVoucher.from_boc(tail).cumulative == newest.cumulative == 12 * PP + 12 * PC


class PromptOnly(RequesterPaymentMeter):
    """Pays prompts (when their first token arrives, as honest requesters do) and never a completion token:
    tokens received are counted here, never charged to the channel, so no later voucher pays them either
    (vouchers are cumulative over what was charged)."""

    received = 0  # completion tokens received, over every request of this class

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        first = completion_tokens > 0 and self.charge_prompt()
        PromptOnly.received += completion_tokens - self.completion_tokens
        self.completion_tokens = completion_tokens
        return await self._voucher() if first else None

    async def on_final(self, completion_tokens: int) -> bytes | None:
        await self.on_tokens(completion_tokens)
        return None


async def test_requester_that_never_pays_completions_gains_no_tail_slack(parties: Parties, tmp_path: Path) -> None:
    """Three requests from a payer that pays prompts only: the worker's loss stays within one credit window
    (before the fix, each request that ended in a payment timeout forgave up to 8 tokens of tail, so every
    new request bought 8 more unpaid tokens). The first request is cut off at the window; the payer still
    owes a full window, so the next two are refused before any prefill."""
    PromptOnly.received = 0
    async with world(parties, tmp_path, payment_timeout=0.5) as w:
        with trio.fail_after(60):
            honest = await w.meter_for()
            codes = []
            for _ in range(3):
                bad = PromptOnly(honest.channel, price_prompt=PP, price_completion=PC, credit_window=WINDOW)
                with pytest.raises(WorkerFailure) as err:
                    await w.run(chat(55), bad)
                codes.append(err.value.code)
            assert codes == ["payment", "payment_required", "payment_required"]
            acct = w.meter.account(honest.channel.address)
            assert acct is not None
            await wait_until(lambda: acct.paid == 55 * PP, timeout=10)  # the admitted prompt was paid
            assert w.meter.stats.payment_timeouts == 1 and w.meter.stats.admitted == 1
            assert acct.forgiven == 0
            loss = PromptOnly.received * PC  # delivered and never paid, as the requester counted it
            assert 0 < loss <= WINDOW, (loss, WINDOW)
            assert acct.served - acct.paid == loss  # the worker's own books agree


async def test_payer_watch_sees_a_stale_close_by_the_worker_and_collects_the_refund(
    parties: Parties, tmp_path: Path
) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(30), meter)
            ch = meter.channel
            newest = await tail_voucher_stored(w, ch)
            assert newest.seqno > 1
            assert await w.manager.check_closes() == []  # open: nothing to do
            # the worker closes on the first (prompt-only) voucher although it holds a newer one
            first = sign_voucher(w.p.payer_key, ch.params.channel_id, 1, 30 * PP)
            assert (await w.p.payee.unilateral_close(ch.address, first)).success
            # replaying a voucher or claiming on a closing channel is refused by the contract
            assert (await w.p.payee.challenge(ch.address, first)).error_name == "AMOUNT_BACKWARDS"
            assert (await w.p.payee.claim(ch.address, newest)).error_name == "WRONG_STATE"
            assert await w.manager.check_closes() == [ch.address]
            seen = w.manager.closes_seen[ch.address]
            assert (seen.initiator, seen.committed, seen.newest, seen.stale) == ("payee", 30 * PP, newest.cumulative,
                                                                                True)
            assert w.manager.watch_stats == {"closes_seen": 1, "stale_closes": 1, "finishes": 0,
                                             "bad_close_signatures": 0, "unfinished_closed": 0, "failed_rounds": 0}
            # the requester stops drawing on it: the next request opens a fresh channel
            assert WORKER_PEER not in w.manager.channels
            m2 = await w.meter_for()
            assert m2.channel.address != ch.address and w.manager.onchain_ops["open"] == 2
            assert await w.manager.check_closes() == []  # seen once; the deadline is an hour away
            before = await w.p.payer.get_balance(w.p.payer.wallet_address)
            await w.p.payer.advance_time(3601)
            assert await w.manager.check_closes() == [ch.address]  # finish
            assert (await w.p.payer.get_channel_state(ch.address)).status is ChannelStatus.CLOSED
            assert seen.finished and w.manager.watch_stats["finishes"] == 1
            # the worker got the stale amount and not a nanoton more; the payer got the rest of its deposit back
            payouts = [(m["op"], int(m["value"])) for t in await w.p.payer.transactions(ch.address)
                       for m in t["outMessages"] if m["to"] == w.p.payee.wallet_address
                       and m["op"] in (0x5C0C0010, 0x5C0C0011)]  # claim / close payouts, not bounced op values
            assert payouts == [(0x5C0C0011, 30 * PP)]  # one close payout
            assert await w.p.payer.get_balance(w.p.payer.wallet_address) - before >= 2 * TON - 30 * PP
            rec = await w.payer_store.run(w.payer_store.channel, ch.address)
            assert rec is not None and rec.status == "closed"


async def test_requester_pays_within_the_workers_smaller_window(parties: Parties, tmp_path: Path) -> None:
    """A requester that assumes a window 1 000x the worker's still pays in time: it adopts the window the
    worker announces in its accept, so the stream never stalls into a payment timeout."""
    async with world(parties, tmp_path, payment_timeout=2.0) as w:
        with trio.fail_after(60):
            generous = ChannelManager(w.p.payer, w.payer_store, w.p.payer_key, deposit=2 * TON,
                                      credit_window=1000 * WINDOW, voucher_every=10_000)
            meter = await w.meter_for(generous)
            _, completion = await w.run(chat(55, max_tokens=50), meter)
            assert completion == 50
            assert meter.credit_window == WINDOW
            assert w.meter.stats.payment_timeouts == 0


async def test_periodic_vouchers_are_paced_per_channel(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Streams of one channel share its vouchers (they are cumulative): a stream due for a periodic voucher
    skips it when another signed within the interval, unless half the credit window is used; the tail of each
    request is always paid."""
    payer, payee = party_key("payer"), party_key("payee")
    params = ChannelParams(payer_key=public_key_bytes(payer), payee_key=public_key_bytes(payee), payer="0:" + "11" * 32,
                           payee="0:" + "22" * 32, channel_id=7, challenge_period=60)
    store = PaymentStore.open(tmp_path / "payer.db")
    store.upsert_channel("addr", "payer", "worker", params, TON)
    channel = PayerChannel(store, payer, "addr", params, deposit=TON, newest=None)

    def meter() -> RequesterPaymentMeter:
        return RequesterPaymentMeter(channel, price_prompt=1, price_completion=10, credit_window=10_000,
                                     voucher_every=4, voucher_interval=0.05)

    a, b = meter(), meter()
    assert await a.on_accept(3) is None and await b.on_accept(3) is None  # prompts fall due with a first token
    assert await a.on_tokens(1) is not None  # a's first token: the channel's first voucher pays its prompt
    assert await b.on_tokens(1) is None  # a signed a moment ago: b's prompt rides on the next voucher
    await trio.sleep(0.01)  # virtual time: the autojump clock
    assert await a.on_tokens(4) is None and await b.on_tokens(4) is None  # due by count, but paced
    await trio.sleep(0.05)  # virtual time: the autojump clock
    paid = await b.on_tokens(5)
    assert paid is not None and channel.paid == channel.charged == 6 + 90  # everything so far, both streams
    assert await a.on_tokens(8) is None  # a's count is due, the pace is not
    assert await a.on_tokens(600) is not None  # half the window (5 000) is used: paid at once, pace or not
    assert await b.on_final(6) is not None  # the tail is always paid
    assert channel.unpaid == 0 and channel.vouchers_signed == 4
    store.close()
