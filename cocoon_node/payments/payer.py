"""The requester's side of metering: what it owes on a channel and the cumulative vouchers it signs.

The prompt is charged when the worker's first token arrives (or when the request completes, or our own
client cancels it: the worker did the prefill), never up front, so a worker that dies or stalls before
answering is paid nothing. The worker's side of that risk stays bounded by its credit window (it admits a
prompt only within it, with room for the first tokens: ``cocoon_node.payments.meter``).

The requester only ever charges token counts its inference stream has already checked against its own
count (``cocoon_node.inference.audit``): a worker that claims more is a fault there, before a nanoton of the
excess is charged here. Vouchers are stored (fsync) before they are returned for sending; a store that cannot
be written raises :class:`PaymentStoreFailed`, which ends the request without blaming the worker.
"""

from __future__ import annotations

import math
import uuid
from functools import partial

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon_node.inference.port import MeterError, PaidBy, PaymentRef, TokenCounter
from cocoon_node.payments.store import PaymentStore, StoreError
from cocoon_node.payments.voucher import ChannelParams, SignedVoucher, sign_voucher

# Many streams share a channel and vouchers are cumulative: the periodic ones are paced per channel, so 32
# streams at 200 tok/s sign ~20 a second instead of ~200 (each costs a signature, an fsync and a frame on
# both ends). The worker's credit window, not this pace, bounds what it serves unpaid.
VOUCHER_INTERVAL = 0.05


class PaymentStoreFailed(MeterError):
    """The requester could not store a voucher it signed, so it was not sent (our disk, not the worker)."""


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
        self.last_used = trio.current_time()  # a request drew on it (trio clock): the requester's idle close

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
            try:
                await self.store.run(partial(self.store.add_voucher, self.address, v, usage=usage))
            except StoreError as e:  # never send a voucher we could not keep: a restart would reuse its seqno
                raise PaymentStoreFailed(f"voucher #{seqno} not sent: {e}") from e
            self.newest = v
            self.vouchers_signed += 1
            self.last_signed_at = self.last_used = trio.current_time()
            return v

    def signed_within(self, seconds: float) -> bool:
        """A voucher for this channel was signed in the last ``seconds`` (by any of its streams)."""
        return trio.current_time() - self.last_signed_at < seconds


class RequesterPaymentMeter:
    """:class:`~cocoon_node.inference.port.RequesterMeter` for one request over a :class:`PayerChannel`.

    ``token_counter`` is the worker's own tokenizer when we hold one with the hash it announced: the stream
    then counts every claimed token itself instead of only bounding it.
    """

    def __init__(
        self,
        channel: PayerChannel,
        *,
        price_prompt: int,
        price_completion: int,
        credit_window: int,
        voucher_every: int = 32,
        voucher_interval: float = VOUCHER_INTERVAL,
        token_counter: TokenCounter | None = None,
    ) -> None:
        self.channel = channel
        self.price_prompt = price_prompt
        self.price_completion = price_completion
        self.credit_window = credit_window
        self.voucher_every = voucher_every
        self.voucher_interval = voucher_interval
        self.token_counter = token_counter
        self.usage_id = uuid.uuid4().hex
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.amount = 0
        self._since_voucher = 0
        self._prompt_charged = False

    def payment_ref(self) -> PaymentRef:
        """The request frame's ``payment`` field."""
        return PaymentRef(channel=self.channel.address, channel_id=self.channel.params.channel_id.to_bytes(32, "big"))

    async def _voucher(self) -> bytes | None:
        self._since_voucher = 0
        usage = (self.usage_id, self.prompt_tokens, self.completion_tokens, self.amount)
        v = await self.channel.sign(usage)
        return v.to_boc() if v else None

    def _window_half_used(self) -> bool:
        return self.channel.unpaid * 2 >= self.credit_window

    async def on_accept(self, prompt_tokens: int) -> bytes | None:
        """Note the prompt; nothing is charged yet: the prompt falls due with the worker's first token."""
        self.prompt_tokens = prompt_tokens
        return None

    def charge_prompt(self) -> bool:
        """Charge the prompt once (it falls due with the first token); True when this call charged it."""
        if self._prompt_charged:
            return False
        self._prompt_charged = True
        cost = self.prompt_tokens * self.price_prompt
        self.amount += cost
        self.channel.charged += cost
        return True

    def respect_credit_window(self, window: int) -> None:
        """Vouchers fall due at half the smaller of our window and the worker's, so a worker that extends
        less credit than we assumed is paid before it has to stop and wait."""
        self.credit_window = min(self.credit_window, window)

    def _charge_completion(self, completion_tokens: int) -> bool:
        """Charge tokens not charged yet (``completion_tokens`` is cumulative); True when a voucher is due."""
        n = completion_tokens - self.completion_tokens
        if n <= 0:
            return False
        first = self.charge_prompt()  # the first token is here: the prompt is owed now
        self.completion_tokens = completion_tokens
        cost = n * self.price_completion
        self.amount += cost
        self.channel.charged += cost
        self._since_voucher += n
        if self._window_half_used():
            return True
        if self.channel.signed_within(self.voucher_interval):  # another stream's voucher a moment ago
            return False
        # The first token pays the prompt (and any unpaid tail of the channel) at once: the worker admitted it
        # on credit and may wait for that voucher before it streams much more.
        return first or self._since_voucher >= self.voucher_every

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        """Charge newly received tokens; a voucher every ``voucher_every`` tokens (but at most one per
        ``voucher_interval`` for the whole channel: vouchers are cumulative, so one pays every stream) or
        at once when half the credit window is used."""
        return await self._voucher() if self._charge_completion(completion_tokens) else None

    async def on_final(self, completion_tokens: int) -> bytes | None:
        """Pay the tail: charge any tokens not yet seen and sign once for everything still unpaid (a voucher
        signed for the charge alone and then dropped would be stored by us and never reach the worker).

        A completed request owes its prompt even with no completion token, and so does one our own client
        cancelled (the worker ran the prefill); the stream does not call this when the worker failed first."""
        self.charge_prompt()
        self._charge_completion(completion_tokens)
        return await self._voucher() if self.channel.unpaid > 0 else None

    def paid_by(self) -> PaidBy | None:
        """The channel's newest voucher: after :meth:`on_final` it covers every token of this request (vouchers
        are cumulative), whichever stream carried it. The receipt names it."""
        v = self.channel.newest
        return PaidBy(v.to_boc(), self.channel.address, v.seqno, v.cumulative) if v is not None else None
