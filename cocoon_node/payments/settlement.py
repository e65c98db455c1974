"""The worker's side of channel settlement: claim past a threshold, challenge stale closes, finish expired
ones, close idle or abandoned channels, co-sign cooperative closes.

Every status change is written to the store first; the worker's meter refuses a channel the store says is
closing or closed (``PaymentStore.ended``), so co-signing a close, seeing one on chain or failing a claim on a
channel that is no longer open stops service on it at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon_node.payments.chain.base import Chain, ChainError, ChannelStatus
from cocoon_node.payments.meter import norm_address
from cocoon_node.payments.store import PaymentStore
from cocoon_node.payments.voucher import VoucherError, close_cell, sign_close, verify_cell

log = logging.getLogger(__name__)

#: Bound on one chain operation (deploy, top-up, claim, close...).
CHAIN_OP_TIMEOUT = 60.0


@dataclass
class SettlementStats:
    """What the worker did on chain."""

    claims: int = 0
    challenges: int = 0
    finishes: int = 0
    failed_rounds: int = 0


class Settlement:
    """Worker side: claims past ``claim_threshold``, challenges stale closes, finishes expired ones."""

    def __init__(
        self,
        chain: Chain,
        store: PaymentStore,
        payee_key: Ed25519PrivateKey,
        *,
        claim_threshold: int,
        poll_interval: float = 5.0,
        idle_close_after: float | None = None,
        cosign_grace: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.chain = chain
        self.store = store
        self.payee_key = payee_key
        self.claim_threshold = claim_threshold
        self.poll_interval = poll_interval
        self.idle_close_after = idle_close_after
        # A channel whose cooperative close we co-signed is served no more; if the payer has not submitted
        # the close after this many seconds, we close it alone.
        self.cosign_grace = cosign_grace
        self._clock = clock
        self.stats = SettlementStats()

    async def claim_due(self, *, force: bool = False) -> list[str]:
        """Claim every open channel whose unclaimed vouchered amount reaches the threshold."""
        claimed: list[str] = []
        for rec in await self.store.run(partial(self.store.channels, "payee", status="open")):
            newest = await self.store.run(self.store.newest_voucher, rec.address)
            if newest is None:
                continue
            unclaimed = newest.cumulative - rec.claimed
            if unclaimed <= 0 or (unclaimed < self.claim_threshold and not force):
                continue
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                st = await self.chain.get_channel_state(rec.address)
                if st.status is not ChannelStatus.OPEN:  # closed under us: the meter must stop serving it
                    await self.store.run(partial(self.store.set_channel, rec.address, status=st.status.value))
                    continue
                if st.seqno >= newest.seqno:
                    await self.store.run(partial(self.store.set_channel, rec.address, claimed=st.claimed))
                    continue
                r = await self.chain.claim(rec.address, newest)
                if not r.success:
                    st = await self.chain.get_channel_state(rec.address)
            if r.success:
                self.stats.claims += 1
                claimed.append(rec.address)
                await self.store.run(partial(self.store.set_channel, rec.address, claimed=newest.cumulative))
            else:
                log.warning("claim on %s failed: %s", rec.address, r.error_name)
                if st.status is not ChannelStatus.OPEN:
                    await self.store.run(partial(self.store.set_channel, rec.address, status=st.status.value))
        return claimed

    async def close_idle(self) -> list[str]:
        """Start a unilateral close (with our newest voucher) on open channels idle past the limit.

        A requester that went away leaves its channel open; the worker's earnings would otherwise sit there
        unclaimed. After the challenge period :meth:`check_closes` finishes the close and pays out.
        """
        if self.idle_close_after is None:
            return []
        closed: list[str] = []
        now = self._clock()
        for rec in await self.store.run(partial(self.store.channels, "payee", status="open")):
            if now - rec.updated_at < self.idle_close_after:
                continue
            newest = await self.store.run(self.store.newest_voucher, rec.address)
            if newest is None:
                continue  # never paid: nothing to collect, leave the payer to close it
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                r = await self.chain.unilateral_close(rec.address, newest)
            if r.success:
                closed.append(rec.address)
                await self.store.run(partial(self.store.set_channel, rec.address, status="closing"))
                log.info("closed idle channel %s with voucher %s", rec.address, newest.seqno)
            else:
                log.warning("idle close of %s failed: %s", rec.address, r.error_name)
        return closed

    async def check_closes(self) -> list[str]:
        """Challenge closes that commit less than our newest voucher; finish those past the deadline; close
        alone a channel whose cooperative close we co-signed but the payer never submitted."""
        acted: list[str] = []
        for rec in await self.store.run(partial(self.store.channels, "payee")):
            if rec.status == "closed":
                continue
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                st = await self.chain.get_channel_state(rec.address)
                if st.status is ChannelStatus.CLOSED:
                    await self.store.run(partial(self.store.set_channel, rec.address, status="closed"))
                    continue
                if st.status is ChannelStatus.OPEN:
                    if rec.status == "closing" and self._clock() - rec.updated_at >= self.cosign_grace:
                        acted += await self._close_abandoned(rec.address)
                    continue
                await self.store.run(partial(self.store.set_channel, rec.address, status="closing"))
                newest = await self.store.run(self.store.newest_voucher, rec.address)
                now = await self.chain.now()
                if now < st.close_deadline:
                    # by amount only: a payer may close with a higher seqno for less (the contract ranks by amount)
                    if newest is not None and newest.cumulative > st.committed:
                        r = await self.chain.challenge(rec.address, newest)
                        if r.success:
                            self.stats.challenges += 1
                            acted.append(rec.address)
                        else:
                            log.warning("challenge on %s failed: %s", rec.address, r.error_name)
                else:
                    r = await self.chain.finish(rec.address)
                    if r.success:
                        self.stats.finishes += 1
                        acted.append(rec.address)
                        await self.store.run(partial(self.store.set_channel, rec.address, status="closed"))
        return acted

    async def _close_abandoned(self, address: str) -> list[str]:
        """We co-signed a close (and stopped serving the channel) but the payer never submitted it: close
        with our newest voucher so what we earned is not stuck."""
        newest = await self.store.run(self.store.newest_voucher, address)
        if newest is None:
            await self.store.run(partial(self.store.set_channel, address, status="closed"))  # nothing to collect
            return []
        r = await self.chain.unilateral_close(address, newest)
        if not r.success:
            log.warning("closing abandoned channel %s failed: %s", address, r.error_name)
            return []
        await self.store.run(partial(self.store.set_channel, address, status="closing"))  # the clock restarts
        return [address]

    async def cosign_close(self, address: str, cumulative: int, payer_sig: bytes) -> bytes:
        """Co-sign cooperative close terms when they pay at least our newest voucher."""
        address = norm_address(address)
        rec = await self.store.run(self.store.channel, address)
        if rec is None or rec.role != "payee":
            raise VoucherError("unknown channel")
        newest = await self.store.run(self.store.newest_voucher, address)
        if newest is not None and cumulative < newest.cumulative:
            raise VoucherError(f"close terms {cumulative} below our newest voucher {newest.cumulative}")
        if not verify_cell(rec.params.payer_key, close_cell(rec.params.channel_id, cumulative), payer_sig):
            raise VoucherError("bad payer signature on close terms")
        await self.store.run(partial(self.store.set_channel, address, status="closing"))
        return sign_close(self.payee_key, rec.params.channel_id, cumulative)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Poll forever: claim, then watch closes. A round that fails for any reason is logged and retried
        next round (an exception here must not end the node)."""
        task_status.started()
        while True:
            try:
                await self.claim_due()
                await self.close_idle()
                await self.check_closes()
            except Exception as e:
                self.stats.failed_rounds += 1
                log.warning("settlement round failed: %r", e, exc_info=not isinstance(e, ChainError))
            await trio.sleep(self.poll_interval)
