"""Channel lifecycle: the requester's :class:`ChannelManager` (open on first use, resume after a restart, top up,
close on command or when idle, watch closes) and the worker's :class:`Settlement` (claim past a threshold,
challenge stale closes, finish, co-sign closes; in ``payments.settlement``, re-exported here).

Both persist before acting: a channel row is written (status ``opening``) before the deploy is sent, so
a crash between the two leaves a record to reconcile rather than an orphaned deposit. Channels outlive the
process: a restarted requester resumes what the chain and its vouchers agree on (``payments.resume``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon_node.inference.port import TokenCounter
from cocoon_node.payments.chain.base import Chain, ChainError, ChannelStatus, TxResult
from cocoon_node.payments.meter import PayerChannel, PaymentStoreFailed, RequesterPaymentMeter, norm_address
from cocoon_node.payments.resume import check_stored_channel
from cocoon_node.payments.rules import ChannelRulesError, RulesSource
from cocoon_node.payments.settlement import CHAIN_OP_TIMEOUT, Settlement, SettlementStats
from cocoon_node.payments.store import ChannelRecord, PaymentStore, StoreError
from cocoon_node.payments.voucher import (
    ChannelParams,
    SignedClose,
    VoucherError,
    channel_address,
    close_cell,
    new_channel_id,
    public_key_bytes,
    sign_close,
    verify_cell,
)

__all__ = ["CHAIN_OP_TIMEOUT", "ChannelManager", "CloseSeen", "CoSigner", "Settlement", "SettlementStats"]

log = logging.getLogger(__name__)

#: Worker-side co-signer the requester calls for a cooperative close: (address, cumulative, payer_sig) -> payee_sig.
CoSigner = Callable[[str, int, bytes], Awaitable[bytes]]


class ChannelManager:
    """Requester side: one open channel per worker peer, opened lazily (or resumed from the store), topped up,
    closed only on command or after ``idle_close_after`` seconds unused."""

    def __init__(
        self,
        chain: Chain,
        store: PaymentStore,
        payer_key: Ed25519PrivateKey,
        *,
        deposit: int,
        credit_window: int,
        challenge_period: int = 3600,
        low_water: int | None = None,
        voucher_every: int = 32,
        rules: RulesSource | None = None,
    ) -> None:
        self.chain = chain
        self.store = store
        self.payer_key = payer_key
        self.deposit = deposit
        self.credit_window = credit_window
        self.challenge_period = challenge_period
        self.low_water = deposit // 4 if low_water is None else low_water
        self.voucher_every = voucher_every
        self.rules = rules  # the network's channel rules (registry), checked before each deploy
        self.channels: dict[str, PayerChannel] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.onchain_ops = {"open": 0, "top_up": 0, "close": 0}
        # Closes the watcher saw on our channels (by address), and what it did about them.
        self.closes_seen: dict[str, CloseSeen] = {}
        self.watch_stats = {"closes_seen": 0, "stale_closes": 0, "finishes": 0, "bad_close_signatures": 0,
                            "unfinished_closed": 0, "failed_rounds": 0}
        self._in_flight: set[str] = set()  # deploys and closes in flight (the watcher leaves their rows alone)
        self.resume_stats = {"resumed": 0, "ended_on_chain": 0, "refused": 0, "duplicates": 0}

    async def channel_for(self, peer: str, payee_wallet: str, payee_key: bytes) -> PayerChannel:
        """The open channel to ``peer`` (from memory, the store after a restart, or a fresh deploy)."""
        lock = self._locks.setdefault(peer, trio.Lock())
        async with lock:
            ch = self.channels.get(peer)
            if ch is not None and not _pays(ch.params.payee, ch.params.payee_key, payee_wallet, payee_key):
                # the worker announces another payout now: the old channel pays a wallet it no longer names
                del self.channels[peer]
                await self._retire(ch.address, "the worker's payout wallet changed")
                ch = None
            if ch is None:
                ch = await self._restore(peer, payee_wallet, payee_key) or await self._open(
                    peer, payee_wallet, payee_key
                )
                self.channels[peer] = ch
            return ch

    async def resume(self) -> list[str]:
        """At start: take up every stored open channel the chain and our vouchers agree on (the newest per
        worker), so a restart costs no close and no reopen. Returns the resumed addresses. A channel the chain
        has closed is recorded as such; one that fails a check is retired (``closing``: the watcher closes it
        alone); a chain that cannot be read leaves the rest to the first request's :meth:`channel_for`."""
        resumed: list[str] = []
        for rec in reversed(await self.store.run(partial(self.store.channels, "payer", status="open"))):
            if rec.peer in self.channels:
                self.resume_stats["duplicates"] += 1
                await self._retire(rec.address, f"an older open channel to {rec.peer} than the one resumed")
                continue
            try:
                ch = await self._check(rec)
            except (ChainError, trio.TooSlowError) as e:
                log.warning("cannot check stored channel %s on chain now (%r): resumed on first use", rec.address, e)
                continue
            if ch is not None:
                self.channels[rec.peer] = ch
                self.resume_stats["resumed"] += 1
                resumed.append(rec.address)
                log.info("resumed channel %s to %s (voucher #%d, %d nanotons of a %d deposit)", rec.address,
                         rec.peer, ch.newest.seqno if ch.newest else 0, ch.paid, ch.deposit)
        return resumed

    async def _check(self, rec: ChannelRecord) -> PayerChannel | None:
        verdict = await check_stored_channel(self.chain, self.store, self.payer_key, rec)
        if verdict.channel is not None:
            return verdict.channel
        if verdict.ended_on_chain:
            assert verdict.chain_status is not None
            self.resume_stats["ended_on_chain"] += 1
            log.info("stored channel %s is not resumed: %s", rec.address, verdict.reason)
            await self.store.run(partial(self.store.set_channel, rec.address, status=verdict.chain_status.value))
        else:
            self.resume_stats["refused"] += 1
            await self._retire(rec.address, verdict.reason)
        return None

    async def _retire(self, address: str, why: str) -> None:
        """Draw on the channel no more: mark it ``closing``, so the watcher closes it alone (refund after the
        challenge period)."""
        log.warning("channel %s is not used again (%s): the watcher closes it", address, why)
        await self.store.run(partial(self.store.set_channel, address, status="closing"))

    async def _restore(self, peer: str, payee_wallet: str, payee_key: bytes) -> PayerChannel | None:
        for rec in reversed(await self.store.run(partial(self.store.channels, "payer", peer=peer, status="open"))):
            if not _pays(rec.params.payee, rec.params.payee_key, payee_wallet, payee_key):
                continue
            ch = await self._check(rec)
            if ch is not None:
                return ch
        return None

    async def _open(self, peer: str, payee_wallet: str, payee_key: bytes) -> PayerChannel:
        rules = self.rules() if self.rules is not None else None
        problems = rules.problems(self.deposit, self.challenge_period) if rules is not None else []
        if problems:  # workers would refuse it: deploying would only lock the deposit
            raise ChannelRulesError("not opening a channel the network's rules refuse (payments.channel_deposit, "
                                    "payments.challenge_period): " + "; ".join(problems))
        params = ChannelParams(
            payer_key=public_key_bytes(self.payer_key),
            payee_key=payee_key,
            payer=self.chain.wallet_address,
            payee=payee_wallet,
            channel_id=new_channel_id(),
            challenge_period=self.challenge_period,
        )
        address = norm_address(channel_address(params))
        self._in_flight.add(address)  # until the row says "open": the watcher must not take it for a leftover
        try:
            await self.store.run(partial(self.store.upsert_channel, address, "payer", peer, params, 0,
                                         status="opening"))
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                got = await self.chain.open_channel(params, self.deposit)
            if norm_address(got) != address:
                raise ChainError(f"chain deployed {got}, expected {address}")
            self.onchain_ops["open"] += 1
            await self.store.run(partial(self.store.upsert_channel, address, "payer", peer, params, self.deposit))
        finally:
            self._in_flight.discard(address)
        return PayerChannel(self.store, self.payer_key, address, params, self.deposit, None)

    async def ensure_funds(self, ch: PayerChannel, need: int = 0) -> None:
        """Top up by one deposit when what is left falls below the low-water mark (or ``need``)."""
        if ch.deposit - ch.charged >= max(need, self.low_water):
            return
        amount = max(self.deposit, need)
        with trio.fail_after(CHAIN_OP_TIMEOUT):
            (await self.chain.top_up(ch.address, amount)).raise_for_status()
            st = await self.chain.get_channel_state(ch.address)
        self.onchain_ops["top_up"] += 1
        ch.deposit = st.deposit
        await self.store.run(partial(self.store.set_channel, ch.address, deposit=st.deposit))

    async def meter_for(
        self, peer: str, payee_wallet: str, payee_key: bytes, *, price_prompt: int, price_completion: int,
        need: int = 0, token_counter: TokenCounter | None = None,
    ) -> RequesterPaymentMeter:
        """A fresh meter for one request to ``peer`` at the announced prices (``token_counter``: the worker's
        tokenizer, when we hold it)."""
        ch = await self.channel_for(peer, payee_wallet, payee_key)
        ch.last_used = trio.current_time()
        await self.ensure_funds(ch, need)
        return RequesterPaymentMeter(
            ch,
            price_prompt=price_prompt,
            price_completion=price_completion,
            credit_window=self.credit_window,
            voucher_every=self.voucher_every,
            token_counter=token_counter,
        )

    async def close(self, peer: str, cosign: CoSigner | None = None) -> TxResult:
        """Pay everything owed and close: cooperatively when the worker co-signs terms that verify and the
        chain accepts them, else unilaterally (presenting the newest voucher; the watcher calls ``finish``
        after the challenge period). The row says ``closing`` until the chain says the channel is gone, so a
        close that fails here, or a crash, is picked up again by :meth:`check_closes`."""
        ch = self.channels.pop(peer)
        self._in_flight.add(ch.address)
        try:
            await ch.sign()  # a final voucher for the unpaid tail, stored first
            total = ch.paid
            await self.store.run(partial(self.store.set_channel, ch.address, status="closing"))
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                result = await self._cooperative_close(ch, total, cosign) if cosign is not None else None
                cooperative = result is not None and result.success
                if result is None or not result.success:
                    result = await self.chain.unilateral_close(ch.address, ch.newest)
                    if not result.success:
                        log.warning("unilateral close of %s failed (%s); the watcher retries", ch.address,
                                    result.error_name)
        finally:
            self._in_flight.discard(ch.address)
        self.onchain_ops["close"] += 1
        if cooperative:
            await self.store.run(partial(self.store.set_channel, ch.address, status="closed"))
        return result

    async def _cooperative_close(self, ch: PayerChannel, total: int, cosign: CoSigner) -> TxResult | None:
        """The cooperative close, or None when the worker is gone, refused, or signed something that does not
        verify (a bad signature only makes the contract refuse; it must never leave the deposit locked)."""
        payer_sig = sign_close(self.payer_key, ch.params.channel_id, total)
        try:
            payee_sig = await cosign(ch.address, total, payer_sig)
        except Exception as exc:  # the worker is gone or refused: close alone, it can still challenge
            log.warning("cooperative close of %s failed (%s); closing unilaterally", ch.address, exc)
            return None
        if not isinstance(payee_sig, bytes) or not verify_cell(
            ch.params.payee_key, close_cell(ch.params.channel_id, total), payee_sig
        ):
            self.watch_stats["bad_close_signatures"] += 1
            log.warning("worker's signature on the close of %s does not verify; closing unilaterally", ch.address)
            return None
        result = await self.chain.cooperative_close(
            ch.address, SignedClose(ch.params.channel_id, total, payer_sig, payee_sig)
        )
        if not result.success:
            log.warning("cooperative close of %s refused on chain (%s); closing unilaterally", ch.address,
                        result.error_name)
        return result

    async def check_closes(self) -> list[str]:
        """Watch our channels for closes we did not make, and collect the refund once they can finish.

        A worker may start a unilateral close at any time, with any voucher we signed. The contract keeps it
        honest towards us: it only accepts our signature, never more than the deposit, and a close commits the
        highest amount we ever signed that anyone presented. So a close on an *older* voucher than our newest only
        costs the worker (it settles at the older amount unless the worker itself challenges with a newer
        one); we never challenge on its behalf. What we must do: stop drawing on the channel (the next request
        to that worker opens a fresh one), and after the challenge period call ``finish``, which refunds the
        rest of the deposit to us. Returns the addresses acted on (newly seen closes and finishes).
        """
        acted: list[str] = []
        for rec in await self.store.run(partial(self.store.channels, "payer")):
            if rec.status == "closed" or rec.address in self._in_flight:
                continue  # done, or its deploy is in flight right now
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                st = await self.chain.get_channel_state(rec.address)
            if st.status is ChannelStatus.OPEN:
                if rec.status != "open" and await self._close_unfinished(rec.address):
                    acted.append(rec.address)
                continue
            ch = self.channels.get(rec.peer)
            if ch is not None and ch.address == rec.address:
                del self.channels[rec.peer]  # no new request draws on a closing channel
            if st.status is ChannelStatus.CLOSED:
                await self.store.run(partial(self.store.set_channel, rec.address, status="closed"))
                continue
            if rec.status == "opening":  # deployed after all (we crashed, or the answer was lost): it is closing
                await self.store.run(partial(self.store.set_channel, rec.address, status="closing"))
            seen = self.closes_seen.get(rec.address)
            if seen is None:
                newest = await self.store.run(self.store.newest_voucher, rec.address)
                seen = CloseSeen(
                    address=rec.address, peer=rec.peer,
                    initiator={1: "payer", 2: "payee"}.get(st.close_initiator, "unknown"),
                    committed=st.committed, seqno=st.seqno,
                    newest=newest.cumulative if newest else 0, newest_seqno=newest.seqno if newest else 0,
                    deadline=st.close_deadline,
                )
                self.closes_seen[rec.address] = seen
                self.watch_stats["closes_seen"] += 1
                acted.append(rec.address)
                await self.store.run(partial(self.store.set_channel, rec.address, status="closing"))
                if seen.initiator == "payee" and seen.stale:
                    self.watch_stats["stale_closes"] += 1
                    log.warning(
                        "worker %s closed channel %s on voucher #%d (%d nanotons) though we signed up to #%d (%d):"
                        " it forgoes %d; the channel settles at %d after the challenge period",
                        rec.peer, rec.address, st.seqno, st.committed, seen.newest_seqno, seen.newest,
                        seen.newest - st.committed, st.committed)
                elif st.committed > seen.newest:
                    log.error("channel %s is closing on %d nanotons, more than our newest voucher (%d): our "
                              "voucher store is behind the chain", rec.address, st.committed, seen.newest)
                else:
                    log.info("channel %s to %s is closing (by %s, %d nanotons)", rec.address, rec.peer,
                             seen.initiator, st.committed)
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                if await self.chain.now() < st.close_deadline:
                    continue
                r = await self.chain.finish(rec.address)
            if r.success:
                seen.finished = True
                self.watch_stats["finishes"] += 1
                acted.append(rec.address)
                await self.store.run(partial(self.store.set_channel, rec.address, status="closed"))
            else:  # the worker may have finished it first; the next round sees it CLOSED
                log.info("finish on %s failed: %s", rec.address, r.error_name)
        return acted

    async def _close_unfinished(self, address: str) -> bool:
        """A channel we meant to close (``closing``) or never finished opening (``opening``, from an earlier
        run) is still OPEN on chain: nothing draws on it, so close it alone with our newest voucher; the
        deposit comes back after the challenge period. True when the close went through.

        The row is read again here, after the caller's chain query: an open or a close of this process may
        have finished (or begun) meanwhile, and a channel in use is never closed from under its requests."""
        rec = await self.store.run(self.store.channel, address)
        newest = await self.store.run(self.store.newest_voucher, address)
        if (rec is None or rec.status in ("open", "closed") or address in self._in_flight
                or any(ch.address == address for ch in self.channels.values())):
            return False
        with trio.fail_after(CHAIN_OP_TIMEOUT):
            r = await self.chain.unilateral_close(address, newest)
        if r.success:
            self.watch_stats["unfinished_closed"] += 1
            await self.store.run(partial(self.store.set_channel, address, status="closing"))
            log.info("closed unfinished channel %s alone (voucher #%d)", address, newest.seqno if newest else 0)
        else:
            log.warning("closing unfinished channel %s failed: %s", address, r.error_name)
        return r.success

    async def watch(self, *, poll_interval: float = 5.0, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run :meth:`check_closes` forever. A round that fails for any reason (chain, store, a bug in an
        adapter) is logged and retried next round: the watch must outlive it, or closes go unseen."""
        task_status.started()
        while True:
            try:
                await self.check_closes()
            except Exception as e:
                self.watch_stats["failed_rounds"] += 1
                log.warning("payer close watch round failed: %r", e, exc_info=not isinstance(e, ChainError))
            await trio.sleep(poll_interval)

    def idle_peers(self, idle_after: float) -> list[str]:
        """Workers whose channel no request drew on for ``idle_after`` seconds (trio clock) and that no voucher
        is being signed on right now: what an idle close may take."""
        now = trio.current_time()
        return [peer for peer, ch in self.channels.items()
                if now - ch.last_used >= idle_after and not ch.lock.locked() and ch.address not in self._in_flight]

    async def close_all(self, cosigners: dict[str, CoSigner] | None = None) -> None:
        """Close every open channel (shutdown); errors are logged, not raised (each row stays ``closing``, so
        the watcher of the next run closes it)."""
        for peer in list(self.channels):
            try:
                await self.close(peer, (cosigners or {}).get(peer))
            except (ChainError, trio.TooSlowError, VoucherError, StoreError, PaymentStoreFailed) as e:
                log.warning("closing channel to %s failed: %r", peer, e)


def _pays(payee: str, payee_key: bytes, wallet: str, key: bytes) -> bool:
    """A channel to ``payee``/``payee_key`` pays the worker that announces ``wallet``/``key``."""
    return payee_key == key and norm_address(payee) == norm_address(wallet)


@dataclass
class CloseSeen:
    """A close of one of our (payer) channels, as the watcher first saw it."""

    address: str
    peer: str
    initiator: str          # "payer", "payee" or "unknown"
    committed: int          # what the close pays the worker if nobody presents a newer voucher
    seqno: int              # seqno of the voucher the close committed
    newest: int             # cumulative of the newest voucher we signed
    newest_seqno: int
    deadline: int           # chain time from which finish pays out
    finished: bool = False  # we called finish (the worker may have done it instead)

    @property
    def stale(self) -> bool:
        """The close commits less than we signed: it costs the worker, not us."""
        return self.committed < self.newest
