"""Per-token metering over payment channels, worker side: the credit window over everything a payer owes.

Accounting is per channel for vouchers (the payer's voucher says "everything so far on this channel costs
``cumulative``", so concurrent requests on one channel share one counter and the unpaid tail of one request
is paid by the next voucher), and per payer key for risk: ``credit_window`` bounds what one payer owes
across all its channels to this worker.

Worker: ``served`` (nanotons of tokens sent, prompt charged at admission) minus the newest voucher's
``cumulative`` is a channel's debt. :meth:`WorkerPaymentMeter.admit` admits a prompt (before any prefill)
only while the payer's debt plus the prompt and its first tokens fits in the window (requesters pay a prompt
with its first token), and :meth:`WorkerPaymentMeter.before_tokens`
waits while more tokens would not; both give up after ``payment_timeout``. A channel that is closing or
closed (a cooperative close we co-signed, the watcher, a failed claim, the chain itself on a periodic
re-check) is refused at once, in flight too.

Forgiveness: at most ``tail_slack_tokens`` of a finished request's unpaid tail (tokens in flight when a
requester cancels) is excused from the window, only when a voucher during that request paid for some of its
completion (a payer that pays only prompts, or nothing, never qualifies) and it did not end while the worker
waited for payment (timed out or cancelled), and at most
``forgive_cap`` (default: one credit window) per payer in all; a later voucher that pays the tail takes the
excuse back. So a payer costs the worker at most ``credit_window + forgive_cap`` however many channels or
requests it opens; a new payer key needs a new on-chain channel (a deploy and its fees).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio
from pytoniq_core import Address

from cocoon_node.inference.port import PaymentRef, PaymentRequired
from cocoon_node.payments._ledger import WorkerMeterStats, _PayeeAccount, _PayerBook, _Req
from cocoon_node.payments.chain.base import Chain, ChainError, ChannelStatus
from cocoon_node.payments.payer import VOUCHER_INTERVAL, PayerChannel, PaymentStoreFailed, RequesterPaymentMeter
from cocoon_node.payments.rules import RulesSource
from cocoon_node.payments.store import PaymentStore, StoreError
from cocoon_node.payments.voucher import (
    ChannelParams,
    SignedVoucher,
    VoucherError,
    channel_address,
    check_next_voucher,
)

__all__ = [
    "VOUCHER_INTERVAL",
    "PayerChannel",
    "PaymentStoreFailed",
    "RequesterPaymentMeter",
    "VoucherRejected",
    "WorkerPaymentMeter",
    "norm_address",
]

#: Completion tokens an admitted prompt keeps room for in the window: its first token, which brings the prompt's
#: voucher (backends yield a token per delta; a larger first delta may wait for the payer's other vouchers).
FIRST_TOKENS_ROOM = 1

log = logging.getLogger(__name__)

#: Bound on one chain query made while admitting a request.
CHAIN_TIMEOUT = 20.0
#: How many finished requests still accept a late voucher.
FINISHED_MEMORY = 1024


def norm_address(address: str) -> str:
    """Canonical (user-friendly, url-safe, bounceable) form of a TON address; raises ValueError."""
    try:
        return str(Address(address).to_str(is_user_friendly=True, is_url_safe=True, is_bounceable=True))
    except Exception as e:  # pytoniq raises assorted errors on garbage
        raise ValueError(f"bad address {address!r}: {e}") from e


class VoucherRejected(PaymentRequired):
    """A voucher was forged, for another channel, reordered, backwards or beyond the deposit."""


# ---- worker side -------------------------------------------------------------------------------


class WorkerPaymentMeter:
    """:class:`~cocoon_node.inference.port.WorkerMeter` backed by on-chain channels and a store."""

    def __init__(
        self,
        chain: Chain,
        store: PaymentStore,
        *,
        payee_key: bytes,
        price_prompt: int,
        price_completion: int,
        credit_window: int,
        payment_timeout: float = 30.0,
        tail_slack_tokens: int = 8,
        forgive_cap: int | None = None,
        chain_recheck: float = 30.0,
        rules: RulesSource | None = None,
    ) -> None:
        self.chain = chain
        self.store = store
        self.payee_key = payee_key
        self.wallet = norm_address(chain.wallet_address)
        self.price_prompt = price_prompt
        self.price_completion = price_completion
        self.credit_window = credit_window
        self.payment_timeout = payment_timeout
        self.tail_slack = tail_slack_tokens * price_completion
        # Requesters pay a prompt with its first token: the newest admitted request can always stream it.
        self.first_tokens_room = FIRST_TOKENS_ROOM * price_completion
        self.rules = rules  # the network's channel rules (registry): a channel breaking them is not served
        self.forgive_cap = credit_window if forgive_cap is None else forgive_cap
        self.chain_recheck = chain_recheck
        self.stats = WorkerMeterStats()
        self._accounts: dict[str, _PayeeAccount] = {}
        self._payers: dict[bytes, _PayerBook] = {}
        self._account_lock = trio.Lock()
        self._requests: dict[str, _Req] = {}
        # Finished requests whose last voucher may still be in flight (insertion-ordered, bounded).
        self._finished: dict[str, _PayeeAccount] = {}

    def account(self, address: str) -> _PayeeAccount | None:
        """The cached account of a channel (tests and settlement read it)."""
        return self._accounts.get(norm_address(address))

    def payer_exposure(self, payer_key: bytes) -> int:
        """What one payer key owes over all its channels (excused tails included)."""
        book = self._payers.get(payer_key)
        return book.unpaid if book else 0

    def _refuse_ended(self, address: str) -> None:
        if self.store.ended(address):
            self.stats.ended_channel_refusals += 1
            raise PaymentRequired("channel is closing or closed; open a new one")

    async def _chain_state_open(self, address: str) -> Any:
        """The channel's on-chain state; a channel no longer OPEN is marked ended in the store and refused."""
        with trio.fail_after(CHAIN_TIMEOUT):
            try:
                st = await self.chain.get_channel_state(address)
            except ChainError as e:
                raise PaymentRequired(f"cannot read channel from chain: {e}") from e
        if st.status is not ChannelStatus.OPEN:
            if await self.store.run(self.store.channel, address) is not None:
                await self.store.run(partial(self.store.set_channel, address, status=st.status.value))
            raise PaymentRequired(f"channel is {st.status.value}")
        return st

    async def _load_account(self, address: str, channel_id: int) -> _PayeeAccount:
        self._refuse_ended(address)
        async with self._account_lock:
            acct = self._accounts.get(address)
            if acct is not None and trio.current_time() - acct.checked_at > self.chain_recheck:
                await self._chain_state_open(address)  # a close we did not hear of (or made while down)
                acct.checked_at = trio.current_time()
            if acct is None:
                st = await self._chain_state_open(address)
                params = ChannelParams(
                    payer_key=st.payer_key,
                    payee_key=st.payee_key,
                    payer=st.payer,
                    payee=st.payee,
                    channel_id=st.channel_id,
                    challenge_period=st.challenge_period,
                )
                # The contract README: the address must be the one derived from canonical data, or the
                # "deposit" may be a forged storage field.
                if norm_address(channel_address(params)) != address:
                    raise PaymentRequired("channel address does not match its terms (non-canonical deploy)")
                if st.payee_key != self.payee_key or norm_address(st.payee) != self.wallet:
                    raise PaymentRequired("channel does not pay this worker")
                if st.deposit > st.balance:
                    raise PaymentRequired("channel deposit exceeds its balance")
                rules = self.rules() if self.rules is not None else None
                problems = rules.problems(st.deposit, st.challenge_period) if rules is not None else []
                if problems:
                    raise PaymentRequired("channel breaks the network's rules: " + "; ".join(problems))
                rec = await self.store.run(self.store.channel, address)
                if rec is None:
                    await self.store.run(self.store.upsert_channel, address, "payee", st.payer, params, st.deposit)
                else:
                    await self.store.run(partial(self.store.set_channel, address, deposit=st.deposit))
                newest = await self.store.run(self.store.newest_voucher, address)
                book = self._payers.setdefault(st.payer_key, _PayerBook(st.payer_key))
                served = max(rec.served if rec else 0, newest.cumulative if newest else 0)  # paid = served (crash)
                acct = _PayeeAccount(address, params, st.deposit, newest, served, book, checked_at=trio.current_time())
                book.accounts[address] = acct
                self._accounts[address] = acct
        if acct.params.channel_id != channel_id:
            raise PaymentRequired("channel id does not match the channel")
        return acct

    async def _refresh_deposit(self, acct: _PayeeAccount) -> None:
        st = await self._chain_state_open(acct.address)
        acct.checked_at = trio.current_time()
        if st.deposit <= st.balance and st.deposit > acct.deposit:
            acct.deposit = st.deposit
            await self.store.run(partial(self.store.set_channel, acct.address, deposit=st.deposit))

    async def _reserve(self, acct: _PayeeAccount, cost: int) -> None:
        """Raise unless ``cost`` more can still be paid out of the deposit."""
        if acct.served + cost > acct.deposit:
            await self._refresh_deposit(acct)
            if acct.served + cost > acct.deposit:
                raise PaymentRequired("channel deposit exhausted; top it up")

    def _no_room(self, book: _PayerBook, cost: int) -> bool:
        """``cost`` more would push the payer past the window (a payer that owes nothing may always go on)."""
        return book.exposure > 0 and book.exposure + cost > self.credit_window

    def _charge(self, acct: _PayeeAccount, cost: int) -> None:
        acct.served += cost
        self.stats.max_payer_exposure = max(self.stats.max_payer_exposure, acct.payer.unpaid)

    async def admit(self, request_id: str, payment: PaymentRef | None, prompt_tokens: int,
                    payer_key: bytes | None = None) -> None:
        """Check the channel, then charge the prompt, but only within the payer's credit window: no prefill
        runs on credit the window does not give (it waits up to ``payment_timeout`` for vouchers of the
        payer's other requests).

        ``payer_key`` is the raw Ed25519 key the requester authenticated with on this stream (Noise); the
        channel must be that requester's, or anyone who learned a channel address could run up its debt.
        """
        cost = prompt_tokens * self.price_prompt
        try:
            if payment is None:
                raise PaymentRequired("this worker needs a payment channel")
            try:
                address = norm_address(payment.channel)
                channel_id = int.from_bytes(payment.channel_id, "big")
            except (ValueError, TypeError) as e:
                raise PaymentRequired(f"malformed payment reference: {e}") from e
            need = cost + self.first_tokens_room
            if need > self.credit_window:
                raise PaymentRequired(f"a prompt of {prompt_tokens} tokens costs {cost} nanotons; with its first "
                                      f"token more than this worker's credit window of {self.credit_window}")
            acct = await self._load_account(address, channel_id)
            if payer_key is not None and acct.params.payer_key != payer_key:
                raise PaymentRequired("this payment channel belongs to another requester")
            with trio.move_on_after(self.payment_timeout):
                while True:
                    await self._reserve(acct, cost)
                    self._refuse_ended(address)
                    if not self._no_room(acct.payer, need):
                        break
                    await acct.payer.changed.wait()
            if self._no_room(acct.payer, need) or acct.served + cost > acct.deposit:
                raise PaymentRequired(f"no voucher for {self.payment_timeout}s and this payer owes "
                                      f"{acct.payer.exposure} of a {self.credit_window} credit window")
        except StoreError as e:
            self.stats.refused += 1
            raise PaymentRequired(f"worker's payment store is unavailable: {e}") from e
        except PaymentRequired:
            self.stats.refused += 1
            raise
        self._charge(acct, cost)  # no checkpoint since the room check: nobody else took the room meanwhile
        self._requests[request_id] = _Req(acct, prompt_tokens, 0, cost)
        self.stats.admitted += 1

    async def before_tokens(self, request_id: str, completion_tokens: int) -> None:
        """Wait until the payer's unpaid amount plus these tokens fits in the credit window."""
        req = self._requests[request_id]
        acct = req.account
        self._refuse_ended(acct.address)
        cost = completion_tokens * self.price_completion
        try:
            if acct.served + cost > acct.deposit:
                await self._reserve(acct, cost)
            if self._no_room(acct.payer, cost):  # else no timer: this runs per token
                with trio.fail_after(self.payment_timeout):
                    while self._no_room(acct.payer, cost):
                        await acct.payer.changed.wait()
                        self._refuse_ended(acct.address)
        except trio.TooSlowError:
            self.stats.payment_timeouts += 1
            req.payment_timed_out = True
            raise PaymentRequired(f"no voucher for {self.payment_timeout}s; unpaid {acct.payer.exposure}") from None
        except trio.Cancelled:  # the requester left while we waited for its payment: no forgiveness either
            req.payment_timed_out = True
            raise
        except StoreError as e:
            raise PaymentRequired(f"worker's payment store is unavailable: {e}") from e
        if req.completion_mark is None:
            req.completion_mark = acct.served
        self._charge(acct, cost)
        req.completion_tokens += completion_tokens
        req.amount += cost

    async def on_voucher(self, request_id: str, voucher: bytes) -> None:
        """Verify, store, then release waiters; raise VoucherRejected for a bad voucher.

        A correctly signed voucher that is not newer (replay, or reordering between two concurrent
        streams of one channel) changes nothing and is ignored.
        """
        req = self._requests.get(request_id)
        acct = req.account if req is not None else self._finished.get(request_id)
        if acct is None:
            raise VoucherRejected("voucher for an unknown request")
        try:
            v = SignedVoucher.from_boc(voucher)
        except VoucherError as e:
            self.stats.rejected_vouchers += 1
            raise VoucherRejected(str(e)) from e
        async with acct.lock:
            newest = acct.newest
            try:
                if v.channel_id != acct.params.channel_id:
                    raise VoucherError("voucher is for another channel")
                if newest is not None and v.seqno <= newest.seqno:
                    # Not newer: a correctly signed replay is ignored, a forged one rejected. (A newer one
                    # has its signature checked once, by check_next_voucher below.)
                    if not v.verify(acct.params.payer_key):
                        raise VoucherError("bad payer signature")
                    if v.cumulative <= newest.cumulative:
                        self.stats.stale_vouchers += 1
                        return
                    raise VoucherError(f"reordered voucher: seqno {v.seqno} <= {newest.seqno} but amount grew")
                if v.cumulative > acct.deposit:
                    try:
                        await self._refresh_deposit(acct)
                    except PaymentRequired:
                        pass  # a closing channel's vouchers still count in a challenge: check and keep it
                check_next_voucher(
                    v,
                    channel_id=acct.params.channel_id,
                    payer_public_key=acct.params.payer_key,
                    deposit=acct.deposit,
                    newest=newest,
                )
                await self.store.run(self.store.add_voucher, acct.address, v)
            except (VoucherError, StoreError) as e:
                self.stats.rejected_vouchers += 1
                raise VoucherRejected(str(e)) from e
            acct.newest = v
            acct.vouchers += 1
            acct.forgiven = min(acct.forgiven, max(acct.debt, 0))  # a paid tail needs no excuse
            self.stats.vouchers += 1
            acct.notify()

    async def finish(self, request_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Persist the request's usage; excuse at most ``tail_slack_tokens`` of its unpaid tail from the window,
        only when a voucher during the request paid for some of its completion (an honest requester that
        cancels pays what it received before its cancel frame) and it did not leave us waiting."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        acct = req.account
        self._finished[request_id] = acct
        while len(self._finished) > FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]
        if not req.payment_timed_out and req.completion_mark is not None and acct.paid > req.completion_mark:
            room = max(self.forgive_cap - acct.payer.forgiven, 0)
            acct.forgiven += min(max(acct.debt - acct.forgiven, 0), self.tail_slack, room)
            acct.notify()
        with trio.move_on_after(10):
            try:
                await self.store.run(
                    partial(
                        self.store.record_usage,
                        request_id,
                        acct.address,
                        req.prompt_tokens,
                        req.completion_tokens,
                        req.amount,
                        finished=True,
                        served=acct.served,
                    )
                )
            except StoreError as e:  # the vouchers are stored; only the usage row is missing
                log.warning("could not record usage of %s: %s", request_id, e)
