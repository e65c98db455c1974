"""The node's payments role: one store, one chain connection, meters for streams, settlement in the background.

Workers meter every stream through :class:`WorkerPaymentMeter` and claim / challenge on chain with
:class:`Settlement`; requesters open a channel per worker on first use (:class:`ChannelManager`) and sign
cumulative vouchers as tokens arrive. On a ``local`` network the chain is the EMULATED sidecar, shared by
a cluster through ``payments.chain_url``; ``ton`` uses pytoniq against a real network.

A requester's channels outlive the process: it resumes them at start and closes one, cooperatively over
``/cocoon/channel/1.0.0`` while the worker answers, only on command (:meth:`PaymentsRole.close_peers`, behind
the admin API's ``POST /channels/close`` and ``cocoon-node channels close``) or when it has been idle for
``payments.payer_idle_close`` (:meth:`PaymentsRole.close_idle`); at shutdown only with
``payments.close_on_shutdown``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict
from functools import partial
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from cocoon_node.config import Config
from cocoon_node.inference import TokenizerRegistry
from cocoon_node.mesh import Announcement
from cocoon_node.payments import (
    Chain,
    ChainError,
    ChannelManager,
    PaymentStore,
    RequesterPaymentMeter,
    Settlement,
    VoucherError,
    WorkerPaymentMeter,
)
from cocoon_node.payments.meter import PaymentStoreFailed
from cocoon_node.payments.store import StoreError
from cocoon_node.wire import FrameError, FrameStream, frame_tag, utf8_clip
from cocoon_node.wire.messages import channel as channel_frames
from cocoon_node.wire.messages.channel import CloseRefused, CloseReply, CloseRequest

log = logging.getLogger(__name__)

CHANNEL_PROTOCOL_ID: str = channel_frames.PROTOCOL_ID


class PaymentsRole:
    """Owns the store and the chain for one node; build with :meth:`open`."""

    def __init__(self, config: Config, key_pair: KeyPair, chain: Chain, store: PaymentStore) -> None:
        self.config = config
        self.chain = chain
        self.store = store
        self._seed_key = Ed25519PrivateKey.from_private_bytes(key_pair.private_key.to_bytes())
        self.public_key = key_pair.public_key.to_bytes()
        p = config.payments
        self.worker_meter: WorkerPaymentMeter | None = None
        self.settlement: Settlement | None = None
        self.channels: ChannelManager | None = None
        if config.worker.enabled:
            self.worker_meter = WorkerPaymentMeter(
                chain, store, payee_key=self.public_key, price_prompt=config.worker.price_prompt,
                price_completion=config.worker.price_completion, credit_window=p.credit_window,
                payment_timeout=p.payment_timeout)
            self.settlement = Settlement(chain, store, self._seed_key, claim_threshold=p.claim_threshold,
                                         idle_close_after=p.idle_close_after)
        # Requester: the tokenizers we can count a worker's tokens with (by the hash it announces).
        self.tokenizers = TokenizerRegistry(config.requester.tokenizer_files, config.data_dir / "tokenizers")
        if config.requester.enabled:
            self.channels = ChannelManager(chain, store, self._seed_key, deposit=p.channel_deposit,
                                           credit_window=p.credit_window, challenge_period=p.challenge_period,
                                           voucher_every=p.voucher_every)

    @classmethod
    @asynccontextmanager
    async def open(cls, config: Config, key_pair: KeyPair) -> AsyncIterator[PaymentsRole]:
        p = config.payments
        wallet = ID.from_pubkey(key_pair.public_key).to_base58()
        async with AsyncExitStack() as stack:
            store = PaymentStore.open(config.data_dir / "payments.db")
            stack.callback(store.close)
            chain: Chain
            if p.chain == "local":
                from cocoon_node.payments import LocalChain

                log.warning("payments use the EMULATED local chain: dev/test only, no real TON moves")
                if p.chain_url:
                    chain = await stack.enter_async_context(
                        LocalChain.connect(p.chain_url, wallet, balance=p.dev_wallet_balance))
                else:
                    chain = await stack.enter_async_context(
                        LocalChain.start(wallet, balance=p.dev_wallet_balance,
                                         state_file=config.data_dir / "local-chain.json"))
            else:
                from cocoon_node.payments import TonChain

                chain = await stack.enter_async_context(
                    TonChain.connect(key_pair.private_key.to_bytes(), network=p.ton_network))  # type: ignore[arg-type]
            role = cls(config, key_pair, chain, store)
            if role.channels is not None:
                with trio.move_on_after(60):  # what is not checked now is checked on first use
                    await role.channels.resume()
                nursery = await stack.enter_async_context(trio.open_nursery())
                nursery.start_soon(role.tokenizers.run)
                stack.callback(nursery.cancel_scope.cancel)
            try:
                yield role
            finally:
                if p.close_on_shutdown and role.channels is not None and role.channels.channels:
                    with trio.CancelScope(shield=True), trio.move_on_after(20):
                        await role.channels.close_all()  # not closed through the mesh: alone

    @property
    def payout_address(self) -> str:
        return self.chain.wallet_address

    async def meter_for(self, worker: Announcement) -> RequesterPaymentMeter | None:
        """Requester: a meter for one request to ``worker`` (opens the channel on first use)."""
        if self.channels is None or not worker.payout:
            return None  # the worker does not ask to be paid
        payee = worker.peer.extract_public_key()
        if payee is None:
            raise ChainError("worker peer id does not embed its public key")
        return await self.channels.meter_for(worker.peer.to_base58(), worker.payout, payee.to_bytes(),
                                             price_prompt=worker.price_prompt,
                                             price_completion=worker.price_completion,
                                             token_counter=self.tokenizers.counter(worker.tokenizer))

    # ----- cooperative close over /cocoon/channel/1.0.0 -------------------------------------------------

    async def handle_close_stream(self, stream: Any) -> None:
        """Worker: co-sign close terms that pay at least our newest voucher; refuse anything else."""
        frames = FrameStream(stream, channel_frames.CODEC)
        try:
            with trio.fail_after(30):
                request = await frames.receive()
                if not isinstance(request, CloseRequest) or self.settlement is None:
                    raise FrameError("expected a close_request")
                try:
                    payee_sig = await self.settlement.cosign_close(request.channel, request.cumulative,
                                                                   request.payer_sig)
                except VoucherError as exc:
                    await frames.send(CloseRefused(reason=utf8_clip(str(exc), 500)))
                    return
                await frames.send(CloseReply(payee_sig=payee_sig))
        except (FrameError, trio.TooSlowError) as exc:
            log.info("channel control stream closed: %s", exc)
        finally:
            with trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass

    async def close_channels(self, open_stream: Any) -> None:
        """Requester: close every channel cooperatively when the worker answers, else alone.

        ``open_stream(peer_id_base58, protocol)`` opens a stream to the worker through the mesh.
        """
        if self.channels is None or not self.channels.channels:
            return
        cosigners = {peer: self._cosigner(open_stream, peer) for peer in self.channels.channels}
        await self.channels.close_all(cosigners)

    async def close_peers(self, open_stream: Any, peers: list[str] | None = None) -> list[dict[str, Any]]:
        """Close our channels to ``peers`` (None: all), cooperatively while the worker answers, else alone;
        one entry per channel: its address, ``cooperative`` (closed now) or not (closing: the refund comes
        after the challenge period), or the error."""
        if self.channels is None:
            return []
        out: list[dict[str, Any]] = []
        for peer in [p for p in self.channels.channels if peers is None or p in peers]:
            ch = self.channels.channels[peer]
            entry: dict[str, Any] = {"peer": peer, "address": ch.address, "voucher_seqno": ch.newest.seqno
                                     if ch.newest else 0, "paid": ch.paid}
            try:
                result = await self.channels.close(peer, self._cosigner(open_stream, peer))
                rec = await self.store.run(partial(self.store.channel, ch.address))
                entry.update(success=result.success, cooperative=rec is not None and rec.status == "closed",
                             paid=ch.paid, voucher_seqno=ch.newest.seqno if ch.newest else 0)
            except (ChainError, trio.TooSlowError, VoucherError, StoreError, PaymentStoreFailed) as e:
                entry.update(success=False, cooperative=False, error=repr(e))
                log.warning("closing channel to %s failed: %r", peer, e)
            out.append(entry)
        return out

    async def close_idle(self, open_stream: Any, idle_after: float, *, poll: float = 5.0) -> None:
        """Requester: forever, close (cooperatively) every channel no request drew on for ``idle_after`` s."""
        assert self.channels is not None
        while True:
            await trio.sleep(poll)
            idle = self.channels.idle_peers(idle_after)
            if idle:
                log.info("closing %d channel(s) idle for %.0f s", len(idle), idle_after)
                await self.close_peers(open_stream, idle)

    def _cosigner(self, open_stream: Any, peer: str) -> Any:
        """The worker's co-signature on close terms, asked over ``/cocoon/channel/1.0.0``."""
        async def cosign(address: str, cumulative: int, payer_sig: bytes) -> bytes:
            stream = await open_stream(peer, CHANNEL_PROTOCOL_ID)
            frames = FrameStream(stream, channel_frames.CODEC)
            try:
                with trio.fail_after(15):
                    channel_id = await self._channel_id(address)
                    await frames.send(CloseRequest(channel=address, channel_id=channel_id.to_bytes(32, "big"),
                                                   cumulative=cumulative, payer_sig=payer_sig))
                    reply = await frames.receive()
            finally:
                with trio.move_on_after(2):
                    await stream.close()
            match reply:
                case CloseReply(payee_sig=payee_sig):
                    return payee_sig
                case CloseRefused(reason=reason):
                    raise ChainError(f"worker refused to co-sign: {reason}")
                case None:
                    raise ChainError("worker refused to co-sign: no answer")
                case _:
                    raise ChainError(f"worker refused to co-sign: answered {frame_tag(reply)!r}")

        return cosign

    async def _channel_id(self, address: str) -> int:
        rec = await self.store.run(partial(self.store.channel, address))
        if rec is None:
            raise ChainError(f"unknown channel {address}")
        return rec.params.channel_id

    async def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chain": getattr(self.chain, "label", type(self.chain).__name__),
                               "wallet": self.chain.wallet_address}
        try:
            with trio.fail_after(5):
                out["wallet_balance"] = await self.chain.get_balance(self.chain.wallet_address)
        except (ChainError, trio.TooSlowError) as exc:
            out["wallet_balance"] = None
            out["chain_error"] = str(exc)
        channels = []
        for role in ("payer", "payee"):
            for rec in await self.store.run(partial(self.store.channels, role)):
                newest = await self.store.run(partial(self.store.newest_voucher, rec.address))
                channels.append({
                    "address": rec.address, "role": rec.role, "peer": rec.peer, "status": rec.status,
                    "deposit": rec.deposit, "claimed": rec.claimed, "served": rec.served,
                    "voucher_seqno": newest.seqno if newest else 0,
                    "voucher_cumulative": newest.cumulative if newest else 0,
                })
        out["channels"] = channels
        out["earned"] = sum(c["voucher_cumulative"] for c in channels if c["role"] == "payee")
        out["spent"] = sum(c["voucher_cumulative"] for c in channels if c["role"] == "payer")
        if self.worker_meter is not None:
            out["worker_meter"] = dict(vars(self.worker_meter.stats))
        if self.settlement is not None:
            out["settlement"] = dict(vars(self.settlement.stats))
        if self.channels is not None:
            out["onchain_ops"] = dict(self.channels.onchain_ops)
            out["resume"] = dict(self.channels.resume_stats)
            out["tokenizers"] = {"known": self.tokenizers.known(), "errors": self.tokenizers.errors}
            closes = [{**asdict(c), "stale": c.stale} for c in self.channels.closes_seen.values()]
            out["payer_watch"] = {**self.channels.watch_stats, "closes": closes}
        if self.worker_meter is not None:
            out["credit_window"] = self.worker_meter.credit_window
            out["payment_timeout"] = self.worker_meter.payment_timeout
        return out
