"""Per-token metering over payment channels: the worker's credit window and the requester's vouchers.

Accounting is per channel, not per request: the payer's voucher says "everything so far costs
``cumulative``", so concurrent requests on one channel share one counter, and the unpaid tail of one
request is paid by the next voucher (at the latest the first voucher of the next request).

Worker: ``served`` (nanotons of tokens sent, prompt charged at admission) minus the newest voucher's
``cumulative`` is its exposure; :meth:`WorkerPaymentMeter.before_tokens` waits while sending more
would push it past ``credit_window`` and gives up after ``payment_timeout``. So a payer that stops
paying costs the worker at most the credit window (plus ``tail_slack_tokens`` forgiven per finished
request, which covers tokens in flight when a requester cancels; a request that ended because no voucher
came within ``payment_timeout`` is forgiven nothing, or a payer that never pays would gain that slack on
every request it opens).
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address

from cocoon_node.inference.stream import PaymentRequired
from cocoon_node.payments.chain.base import Chain, ChainError, ChannelStatus
from cocoon_node.payments.store import PaymentStore, StoreError
from cocoon_node.payments.voucher import (
    ChannelParams,
    SignedVoucher,
    VoucherError,
    channel_address,
    check_next_voucher,
    sign_voucher,
)

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


@dataclass
class _PayeeAccount:
    address: str
    params: ChannelParams
    deposit: int
    newest: SignedVoucher | None
    served: int
    forgiven: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def paid(self) -> int:
        return self.newest.cumulative if self.newest else 0

    @property
    def debt(self) -> int:
        return self.served - self.paid

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass
class _Req:
    account: _PayeeAccount
    prompt_tokens: int
    completion_tokens: int = 0
    amount: int = 0
    payment_timed_out: bool = False


@dataclass
class WorkerMeterStats:
    """Counters for tests and metrics."""

    admitted: int = 0
    refused: int = 0
    vouchers: int = 0
    stale_vouchers: int = 0
    rejected_vouchers: int = 0
    payment_timeouts: int = 0


class WorkerPaymentMeter:
    """:class:`~cocoon_node.inference.stream.WorkerMeter` backed by on-chain channels and a store."""

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
        self.stats = WorkerMeterStats()
        self._accounts: dict[str, _PayeeAccount] = {}
        self._account_lock = trio.Lock()
        self._requests: dict[str, _Req] = {}
        # Finished requests whose last voucher may still be in flight (insertion-ordered, bounded).
        self._finished: dict[str, _PayeeAccount] = {}

    def account(self, address: str) -> _PayeeAccount | None:
        """The cached account of a channel (tests and settlement read it)."""
        return self._accounts.get(norm_address(address))

    async def _load_account(self, address: str, channel_id: int) -> _PayeeAccount:
        async with self._account_lock:
            acct = self._accounts.get(address)
            if acct is None:
                with trio.fail_after(CHAIN_TIMEOUT):
                    try:
                        st = await self.chain.get_channel_state(address)
                    except ChainError as e:
                        raise PaymentRequired(f"cannot read channel from chain: {e}") from e
                if st.status is not ChannelStatus.OPEN:
                    raise PaymentRequired(f"channel is {st.status.value}")
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
                rec = await self.store.run(self.store.channel, address)
                if rec is None:
                    await self.store.run(self.store.upsert_channel, address, "payee", st.payer, params, st.deposit)
                else:
                    await self.store.run(partial(self.store.set_channel, address, deposit=st.deposit))
                newest = await self.store.run(self.store.newest_voucher, address)
                acct = _PayeeAccount(address, params, st.deposit, newest, rec.served if rec else 0)
                self._accounts[address] = acct
        if acct.params.channel_id != channel_id:
            raise PaymentRequired("channel id does not match the channel")
        return acct

    async def _refresh_deposit(self, acct: _PayeeAccount) -> None:
        with trio.fail_after(CHAIN_TIMEOUT):
            st = await self.chain.get_channel_state(acct.address)
        if st.status is ChannelStatus.OPEN and st.deposit <= st.balance and st.deposit > acct.deposit:
            acct.deposit = st.deposit
            await self.store.run(partial(self.store.set_channel, acct.address, deposit=st.deposit))

    async def _reserve(self, acct: _PayeeAccount, cost: int) -> None:
        """Raise unless ``cost`` more can still be paid out of the deposit."""
        if acct.served + cost > acct.deposit:
            await self._refresh_deposit(acct)
            if acct.served + cost > acct.deposit:
                raise PaymentRequired("channel deposit exhausted; top it up")

    async def admit(self, request_id: str, payment: dict[str, Any] | None, prompt_tokens: int,
                    payer_key: bytes | None = None) -> None:
        """Check the channel (cached after the first request), charge the prompt up front.

        ``payer_key`` is the raw Ed25519 key the requester authenticated with on this stream (Noise); the
        channel must be that requester's, or anyone who learned a channel address could run up its debt.
        """
        try:
            if not payment:
                raise PaymentRequired("this worker needs a payment channel")
            try:
                address = norm_address(str(payment["channel"]))
                cid = payment["channel_id"]
                channel_id = int.from_bytes(cid, "big") if isinstance(cid, bytes) else int(cid)
            except (KeyError, ValueError, TypeError) as e:
                raise PaymentRequired(f"malformed payment reference: {e}") from e
            acct = await self._load_account(address, channel_id)
            if payer_key is not None and acct.params.payer_key != payer_key:
                raise PaymentRequired("this payment channel belongs to another requester")
            cost = prompt_tokens * self.price_prompt
            await self._reserve(acct, cost)
        except PaymentRequired:
            self.stats.refused += 1
            raise
        acct.served += cost
        self._requests[request_id] = _Req(acct, prompt_tokens, 0, cost)
        self.stats.admitted += 1

    async def before_tokens(self, request_id: str, completion_tokens: int) -> None:
        """Wait until the channel's unpaid amount plus these tokens fits in the credit window."""
        req = self._requests[request_id]
        acct = req.account
        cost = completion_tokens * self.price_completion
        if acct.served + cost > acct.deposit:
            await self._reserve(acct, cost)
        try:
            if acct.debt + cost > self.credit_window and acct.debt > 0:  # else no timer: this runs per token
                with trio.fail_after(self.payment_timeout):
                    while acct.debt + cost > self.credit_window and acct.debt > 0:
                        await acct.changed.wait()
        except trio.TooSlowError:
            self.stats.payment_timeouts += 1
            req.payment_timed_out = True
            raise PaymentRequired(f"no voucher for {self.payment_timeout}s; unpaid {acct.debt}") from None
        acct.served += cost
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
                    await self._refresh_deposit(acct)
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
            self.stats.vouchers += 1
            acct.notify()

    async def finish(self, request_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Persist the request's usage; forgive at most ``tail_slack_tokens`` of in-flight tail (nothing when the
        request ended because the payer stopped paying)."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        acct = req.account
        self._finished[request_id] = acct
        while len(self._finished) > FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]
        forgive = 0 if req.payment_timed_out else min(max(acct.debt, 0), self.tail_slack)
        acct.served -= forgive
        acct.forgiven += forgive
        with trio.move_on_after(10):
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


# Many streams share a channel and vouchers are cumulative: the periodic ones are paced per channel, so 32
# streams at 200 tok/s sign ~20 a second instead of ~200 (each costs a signature, an fsync and a frame on
# both ends). The worker's credit window, not this pace, bounds what it serves unpaid.
VOUCHER_INTERVAL = 0.05


# ---- requester side ----------------------------------------------------------------------------


class PayerChannel:
    """The payer's side of one open channel: what it owes and the vouchers it has signed."""

    def __init__(
        self,
        store: PaymentStore,
        key: Ed25519PrivateKey,
        address: str,
        params: ChannelParams,
        deposit: int,
        newest: SignedVoucher | None,
    ) -> None:
        self.store = store
        self.key = key
        self.address = address
        self.params = params
        self.deposit = deposit
        self.newest = newest
        self.charged = newest.cumulative if newest else 0
        self.lock = trio.Lock()
        self.vouchers_signed = 0
        self.last_signed_at = -math.inf  # trio clock

    @property
    def paid(self) -> int:
        return self.newest.cumulative if self.newest else 0

    @property
    def unpaid(self) -> int:
        return self.charged - self.paid

    async def sign(self, usage: tuple[str, int, int, int] | None = None) -> SignedVoucher | None:
        """Sign a voucher for everything charged (capped at the deposit); stored before returned."""
        async with self.lock:
            target = min(self.charged, self.deposit)
            if self.newest is not None and target <= self.newest.cumulative:
                return None
            seqno = self.newest.seqno + 1 if self.newest else 1
            v = sign_voucher(self.key, self.params.channel_id, seqno, target)
            await self.store.run(partial(self.store.add_voucher, self.address, v, usage=usage))
            self.newest = v
            self.vouchers_signed += 1
            self.last_signed_at = trio.current_time()
            return v

    def signed_within(self, seconds: float) -> bool:
        """A voucher for this channel was signed in the last ``seconds`` (by any of its streams)."""
        return trio.current_time() - self.last_signed_at < seconds


class RequesterPaymentMeter:
    """:class:`~cocoon_node.inference.stream.RequesterMeter` for one request over a :class:`PayerChannel`."""

    def __init__(
        self,
        channel: PayerChannel,
        *,
        price_prompt: int,
        price_completion: int,
        credit_window: int,
        voucher_every: int = 32,
        voucher_interval: float = VOUCHER_INTERVAL,
    ) -> None:
        self.channel = channel
        self.price_prompt = price_prompt
        self.price_completion = price_completion
        self.credit_window = credit_window
        self.voucher_every = voucher_every
        self.voucher_interval = voucher_interval
        self.usage_id = uuid.uuid4().hex
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.amount = 0
        self._since_voucher = 0

    def payment_ref(self) -> dict[str, Any]:
        """The request frame's ``payment`` field."""
        return {"channel": self.channel.address, "channel_id": self.channel.params.channel_id.to_bytes(32, "big")}

    async def _voucher(self) -> bytes | None:
        self._since_voucher = 0
        usage = (self.usage_id, self.prompt_tokens, self.completion_tokens, self.amount)
        v = await self.channel.sign(usage)
        return v.to_boc() if v else None

    def _window_half_used(self) -> bool:
        return self.channel.unpaid * 2 >= self.credit_window

    async def on_accept(self, prompt_tokens: int) -> bytes | None:
        """Charge the prompt and pay it (and any earlier unpaid tail) at once, unless another stream of this
        channel paid a moment ago and the window has room: its next voucher covers this prompt too."""
        self.prompt_tokens = prompt_tokens
        cost = prompt_tokens * self.price_prompt
        self.amount += cost
        self.channel.charged += cost
        if self.channel.signed_within(self.voucher_interval) and not self._window_half_used():
            return None
        return await self._voucher()

    def respect_credit_window(self, window: int) -> None:
        """Vouchers fall due at half the smaller of our window and the worker's, so a worker that extends
        less credit than we assumed is paid before it has to stop and wait."""
        self.credit_window = min(self.credit_window, window)

    def _charge_completion(self, completion_tokens: int) -> bool:
        """Charge tokens not charged yet (``completion_tokens`` is cumulative); True when a voucher is due."""
        n = completion_tokens - self.completion_tokens
        if n <= 0:
            return False
        self.completion_tokens = completion_tokens
        cost = n * self.price_completion
        self.amount += cost
        self.channel.charged += cost
        self._since_voucher += n
        if self._window_half_used():
            return True
        return self._since_voucher >= self.voucher_every and not self.channel.signed_within(self.voucher_interval)

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        """Charge newly received tokens; a voucher every ``voucher_every`` tokens (but at most one per
        ``voucher_interval`` for the whole channel: vouchers are cumulative, so one pays every stream) or
        at once when half the credit window is used."""
        return await self._voucher() if self._charge_completion(completion_tokens) else None

    async def on_final(self, completion_tokens: int) -> bytes | None:
        """Pay the tail: charge any tokens not yet seen and sign once for everything still unpaid (a voucher
        signed for the charge alone and then dropped would be stored by us and never reach the worker)."""
        self._charge_completion(completion_tokens)
        return await self._voucher() if self.channel.unpaid > 0 else None
