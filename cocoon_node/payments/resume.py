"""Resuming a payer's stored channel after a restart: only one the chain and our own vouchers agree on.

A requester keeps its channels open across restarts (a close and a reopen per worker per restart would cost
two on-chain operations and lock the deposit for a challenge period each time). Before it draws on a stored
channel again it checks, against the chain, that the channel is still open, that its terms are the ones we
stored (address derived from them, channel id, both keys), that our newest stored voucher is one we signed
for it, and that the chain has seen no voucher newer than that one (a worker's claim beyond our newest would
mean our store lost vouchers: signing on from it would reuse seqnos the worker already holds). A channel that
fails is not resumed: it is marked ``closing`` and the close watcher closes it alone with our newest voucher
(the deposit comes back after the challenge period); the next request to that worker opens a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon_node.payments.chain.base import Chain, ChannelStatus
from cocoon_node.payments.meter import norm_address
from cocoon_node.payments.payer import PayerChannel
from cocoon_node.payments.settlement import CHAIN_OP_TIMEOUT
from cocoon_node.payments.store import ChannelRecord, PaymentStore
from cocoon_node.payments.voucher import channel_address, public_key_bytes

__all__ = ["Resumed", "check_stored_channel"]


@dataclass(frozen=True, slots=True)
class Resumed:
    """The verdict on one stored channel: the channel to draw on, or why not (and the chain's status)."""

    channel: PayerChannel | None
    reason: str = ""
    chain_status: ChannelStatus | None = None

    @property
    def ended_on_chain(self) -> bool:
        """The chain no longer has it open (closing or closed): not ours to close, only to record."""
        return self.chain_status is not None and self.chain_status is not ChannelStatus.OPEN


async def check_stored_channel(chain: Chain, store: PaymentStore, key: Ed25519PrivateKey,
                               rec: ChannelRecord) -> Resumed:
    """Check one stored ``open`` payer channel against the chain and our vouchers (see the module doc)."""
    params = rec.params
    if norm_address(channel_address(params)) != rec.address:
        return Resumed(None, "stored terms do not derive the stored address")
    with trio.fail_after(CHAIN_OP_TIMEOUT):
        st = await chain.get_channel_state(rec.address)
    if st.status is not ChannelStatus.OPEN:
        return Resumed(None, f"the chain says {st.status.value}", st.status)
    if (st.channel_id, st.payer_key, st.payee_key) != (params.channel_id, params.payer_key, params.payee_key):
        return Resumed(None, "the chain's channel id or keys differ from the stored terms", st.status)
    if params.payer_key != public_key_bytes(key):
        return Resumed(None, "the channel is not paid by this node's key", st.status)
    newest = await store.run(store.newest_voucher, rec.address)
    if newest is not None and not newest.verify(params.payer_key):
        return Resumed(None, f"stored voucher #{newest.seqno} does not verify under our key", st.status)
    seqno, cumulative = (newest.seqno, newest.cumulative) if newest else (0, 0)
    if st.seqno > seqno or st.claimed > cumulative:
        return Resumed(None, f"the chain holds voucher #{st.seqno} ({st.claimed} claimed) beyond our newest "
                             f"#{seqno} ({cumulative}): our store lost vouchers", st.status)
    if st.deposit < cumulative:
        return Resumed(None, f"deposit {st.deposit} on chain is below our newest voucher {cumulative}", st.status)
    return Resumed(PayerChannel(store, key, rec.address, params, st.deposit, newest), chain_status=st.status)
