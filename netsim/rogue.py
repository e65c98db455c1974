"""NETSIM-ONLY rogue nodes: a real ``cocoon-node`` with one adversarial behaviour grafted on from outside.

Nothing here is reachable from the node's own code paths: this module builds the node's public classes
(:class:`~cocoon_node.node.Node`, :class:`~cocoon_node.inference.stream.InferenceServer`,
:class:`~cocoon_node.payments.channels.Settlement`, :class:`~cocoon_node.payments.meter.RequesterPaymentMeter`)
and overrides one behaviour each, and it refuses to run outside the ``local`` network with the EMULATED chain.

Kinds (``--kind``):

``overclaim``
    A worker that serves real streams but whose ``final`` frame claims ``--overclaim-tokens`` more completion
    tokens than it streamed. Every frame it put on the wire is counted per requester, so netsim can check that
    requesters paid for what was streamed and never for what was only claimed.
``stale_close``
    A worker that, once a channel holds ``--stale-after`` vouchers, starts an on-chain close with the *oldest*
    voucher it holds instead of the newest (one channel per payer), never challenges it, and then tries to
    replay that voucher and to present a voucher it forged itself; every attempt and the contract's exit code
    are recorded.
``nonpayer``
    A requester that pays each prompt and never a completion token: tokens are counted as they arrive but never
    charged to the channel, so no voucher (they are cumulative over what was charged) ever covers them.

Usage: ``python -m netsim.rogue --kind KIND [options] [--link-table PATH] run <cocoon-node run flags>``; prints
the same ready line as ``cocoon-node run`` and adds an ``adversary`` object to the node's admin status.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import msgspec
import trio

from cocoon_node.api import NodeHttp
from cocoon_node.cli import build_parser, overrides_from_args, serve_until_signalled
from cocoon_node.config import Config, ConfigError, load_config
from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer
from cocoon_node.mesh import Announcement, TransportFactory
from cocoon_node.node import Node
from cocoon_node.payments.chain.base import ChannelStatus
from cocoon_node.payments.channels import CHAIN_OP_TIMEOUT, Settlement
from cocoon_node.payments.meter import RequesterPaymentMeter
from cocoon_node.payments.voucher import SignedVoucher, sign_voucher
from cocoon_node.wire import FrameError, FrameStream, utf8_clip
from cocoon_node.wire.messages.inference import CODEC, AcceptFrame, DeltaFrame, ErrorFrame, FinalFrame, InferenceFrame
from netsim import paycheats, receiptcheats
from netsim.node import add_link_table_option, link_shaping

log = logging.getLogger("netsim.rogue")

# the latter: netsim/paycheats.py, netsim/receiptcheats.py
KINDS = ("overclaim", "stale_close", "nonpayer", *paycheats.KINDS, *receiptcheats.KINDS)


# ----- over-claiming worker ------------------------------------------------------------------------------


@dataclass
class WireBook:
    """What one over-claiming worker put on the wire for one requester peer."""

    requests: int = 0
    prompt_tokens: int = 0
    streamed_tokens: int = 0       # sum of the delta frames' token counts
    overclaims: int = 0            # final frames that claimed more than was streamed
    claimed_extra_tokens: int = 0
    streamed_amount: int = 0       # nanotons: prompt and streamed tokens at the worker's prices
    claimed_amount: int = 0        # what the final frames would have been worth


class _CountingFrames(FrameStream[InferenceFrame]):
    """A frame stream that counts what the worker sends and inflates the ``final`` frame's token counts."""

    def __init__(self, raw: Any, *, extra: int) -> None:
        super().__init__(raw, CODEC)
        self.extra = extra
        self.prompt_tokens = 0
        self.streamed = 0
        self.overclaimed = 0

    async def send(self, frame: InferenceFrame) -> None:
        match frame:
            case AcceptFrame():
                self.prompt_tokens = frame.prompt_tokens
            case DeltaFrame():
                self.streamed += frame.tokens
            case FinalFrame() if self.extra > 0:
                frame = msgspec.structs.replace(frame, completion_tokens=frame.completion_tokens + self.extra,
                                                total_tokens=frame.total_tokens + self.extra)
                self.overclaimed = self.extra
        await super().send(frame)


class OverclaimingServer(InferenceServer):
    """An :class:`InferenceServer` whose final frames claim ``extra`` completion tokens it never streamed."""

    def __init__(self, *args: Any, extra: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = extra
        self.books: dict[str, WireBook] = {}

    async def handle(self, raw_stream: Any) -> None:
        frames = _CountingFrames(raw_stream, extra=self.extra)
        peer = _remote_peer(raw_stream)
        try:
            await self._serve(frames, _remote_key(raw_stream))
        except FrameError as exc:
            await _send_quietly(frames, ErrorFrame(id="", code="protocol", message=utf8_clip(str(exc), 1000)))
        except trio.TooSlowError:
            await _send_quietly(frames, ErrorFrame(id="", code="timeout", message="request timed out"))
        except Exception as exc:
            log.warning("inference stream failed: %r", exc)
        finally:
            if frames.prompt_tokens or frames.streamed:
                book = self.books.setdefault(peer, WireBook())
                pp, pc = self.terms.price_prompt, self.terms.price_completion
                book.requests += 1
                book.prompt_tokens += frames.prompt_tokens
                book.streamed_tokens += frames.streamed
                book.streamed_amount += frames.prompt_tokens * pp + frames.streamed * pc
                book.claimed_amount += frames.prompt_tokens * pp + (frames.streamed + frames.overclaimed) * pc
                if frames.overclaimed:
                    book.overclaims += 1
                    book.claimed_extra_tokens += frames.overclaimed
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await raw_stream.close()
                except Exception:
                    pass


async def _send_quietly(frames: FrameStream[InferenceFrame], frame: InferenceFrame) -> None:
    with trio.move_on_after(2):
        try:
            await frames.send(frame)
        except Exception:
            pass


def _remote_peer(stream: Any) -> str:
    try:
        return str(stream.muxed_conn.peer_id.to_base58())
    except AttributeError:
        return "?"


def _remote_key(stream: Any) -> bytes | None:
    try:
        key = stream.muxed_conn.peer_id.extract_public_key()
    except AttributeError:
        return None
    return key.to_bytes() if key is not None else None


# ----- stale-closing worker ------------------------------------------------------------------------------


@dataclass
class Attempt:
    what: str
    success: bool
    exit_code: int | None
    error_name: str


@dataclass
class StaleClose:
    address: str
    payer: str                  # the payer's peer id
    stale_seqno: int
    stale_cumulative: int
    newest_seqno: int
    newest_cumulative: int
    success: bool
    error_name: str
    deadline: int = 0
    at: float = field(default_factory=time.time)
    attempts: list[Attempt] = field(default_factory=list)
    finished_by_us: bool = False


class StaleClosingSettlement(Settlement):
    """Closes each payer's first channel with its oldest voucher once it holds ``stale_after`` of them, then
    replays and forges vouchers against it; never challenges, finishes its own closes after the deadline."""

    def __init__(self, *args: Any, stale_after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stale_after = stale_after
        self.closes: dict[str, StaleClose] = {}

    def _history(self, address: str) -> list[SignedVoucher]:
        """Every voucher stored for the channel, oldest first (reads the store's table directly)."""
        rec = self.store.channel(address)
        assert rec is not None
        with self.store._thread_lock:
            rows = self.store._conn.execute(
                "SELECT seqno, cumulative, signature FROM vouchers WHERE address = ? ORDER BY seqno", (address,)
            ).fetchall()
        return [SignedVoucher(rec.params.channel_id, int(s), int(c), bytes(sig)) for s, c, sig in rows]

    async def stale_close_due(self) -> list[str]:
        done: list[str] = []
        payers = {c.payer for c in self.closes.values()}
        for rec in await self.store.run(partial(self.store.channels, "payee", status="open")):
            if rec.address in self.closes or rec.peer in payers:
                continue
            history = await self.store.run(self._history, rec.address)
            if len(history) < self.stale_after:
                continue
            stale, newest = history[0], history[-1]
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                r = await self.chain.unilateral_close(rec.address, stale)
                st = await self.chain.get_channel_state(rec.address)
            close = StaleClose(rec.address, rec.peer, stale.seqno, stale.cumulative, newest.seqno,
                               newest.cumulative, r.success, r.error_name, deadline=st.close_deadline)
            self.closes[rec.address] = close
            payers.add(rec.peer)
            log.warning("ROGUE: closed %s with voucher #%d (%d) while holding #%d (%d): %s", rec.address,
                        stale.seqno, stale.cumulative, newest.seqno, newest.cumulative, r.error_name)
            if r.success:
                await self.store.run(partial(self.store.set_channel, rec.address, status="closing"))
                await self._try_cheating(close, stale, rec.params.channel_id, rec.deposit)
            done.append(rec.address)
        return done

    async def _try_cheating(self, close: StaleClose, stale: SignedVoucher, channel_id: int, deposit: int) -> None:
        """Replay the voucher the close used, and present one signed with our own key for the whole deposit."""
        forged = sign_voucher(self.payee_key, channel_id, close.newest_seqno + 1000, deposit)
        attempts = (("replay the stale voucher as a challenge", partial(self.chain.challenge, close.address, stale)),
                    ("forged voucher for the whole deposit", partial(self.chain.challenge, close.address, forged)),
                    ("claim the stale voucher on the closing channel", partial(self.chain.claim, close.address, stale)))
        for what, op in attempts:
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                r = await op()
            close.attempts.append(Attempt(what, r.success, r.exit_code, r.error_name))

    async def check_closes(self) -> list[str]:
        """Never challenge (a cheater does not raise its own close); finish our closes after the deadline."""
        acted: list[str] = []
        for address, close in self.closes.items():
            if not close.success or close.finished_by_us:
                continue
            with trio.fail_after(CHAIN_OP_TIMEOUT):
                st = await self.chain.get_channel_state(address)
                if st.status is ChannelStatus.CLOSED:
                    await self.store.run(partial(self.store.set_channel, address, status="closed"))
                    continue
                if st.status is ChannelStatus.CLOSING and await self.chain.now() >= st.close_deadline:
                    r = await self.chain.finish(address)
                    if r.success:
                        close.finished_by_us = True
                        acted.append(address)
                        await self.store.run(partial(self.store.set_channel, address, status="closed"))
        return acted

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.stale_close_due()
                await self.check_closes()
            except Exception as e:  # a rogue that errors keeps trying, like the honest loop
                log.warning("rogue settlement round failed: %r", e)
            await trio.sleep(1.0)


# ----- non-paying requester ------------------------------------------------------------------------------


@dataclass
class UnpaidBook:
    """What a non-paying requester received from one worker and what it paid."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    received_amount: int = 0       # nanotons at the worker's announced prices
    channels: set[str] = field(default_factory=set)


class WithholdingMeter(RequesterPaymentMeter):
    """Pays the prompt; counts completion tokens as they arrive but never charges them to the channel."""

    def __init__(self, base: RequesterPaymentMeter, book: UnpaidBook) -> None:
        super().__init__(base.channel, price_prompt=base.price_prompt, price_completion=base.price_completion,
                         credit_window=base.credit_window, voucher_every=base.voucher_every,
                         token_counter=base.token_counter)
        self.book = book
        book.channels.add(base.channel.address)

    async def on_accept(self, prompt_tokens: int) -> bytes | None:
        self.book.requests += 1
        self.book.prompt_tokens += prompt_tokens
        self.book.received_amount += prompt_tokens * self.price_prompt
        return await super().on_accept(prompt_tokens)

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        n = completion_tokens - self.completion_tokens
        first = n > 0 and self.charge_prompt()  # prompts fall due with the first token, as for honest payers
        if n > 0:
            self.completion_tokens = completion_tokens
            self.book.completion_tokens += n
            self.book.received_amount += n * self.price_completion
        return await self._voucher() if first else None

    async def on_final(self, completion_tokens: int) -> bytes | None:
        return await self.on_tokens(completion_tokens)


# ----- the node ------------------------------------------------------------------------------------------


class _StartedHook:
    """A task status that runs ``hook`` just before reporting the node started."""

    def __init__(self, inner: Any, hook: Any) -> None:
        self._inner = inner
        self._hook = hook

    def started(self, value: Any = None) -> None:
        self._hook()
        self._inner.started(value)


class RogueNode(Node):
    def __init__(self, config: Config, kind: str, *, overclaim_tokens: int = 5, stale_after: int = 3,
                 transport_factory: TransportFactory | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown rogue kind {kind!r}")
        super().__init__(config, http=NodeHttp(), transport_factory=transport_factory)
        self.kind = kind
        self.overclaim_tokens = overclaim_tokens
        self.stale_after = stale_after
        self.overclaimer: OverclaimingServer | None = None
        self.stale: StaleClosingSettlement | None = None
        self.unpaid: dict[str, UnpaidBook] = {}

    async def _run_roles(self, nursery: trio.Nursery, task_status: Any) -> None:
        pay = self.payments
        if self.kind == "stale_close":
            assert pay is not None and pay.settlement is not None, "a stale closer is a paid worker"
            s = pay.settlement
            self.stale = StaleClosingSettlement(s.chain, s.store, s.payee_key, claim_threshold=s.claim_threshold,
                                                idle_close_after=None, stale_after=self.stale_after)
            pay.settlement = self.stale
        elif self.kind == "nonpayer":
            assert pay is not None and pay.channels is not None, "a non-payer is a paid requester"
            honest = pay.meter_for

            async def withholding_meter_for(worker: Announcement) -> RequesterPaymentMeter | None:
                meter = await honest(worker)
                if meter is None:
                    return None
                book = self.unpaid.setdefault(worker.peer.to_base58(), UnpaidBook())
                return WithholdingMeter(meter, book)

            pay.meter_for = withholding_meter_for  # type: ignore[method-assign]
        elif self.kind in paycheats.KINDS:
            paycheats.before_roles(self)
        await super()._run_roles(nursery, _StartedHook(task_status, self._after_roles))

    def _after_roles(self) -> None:
        if self.kind in paycheats.KINDS:
            paycheats.after_roles(self)
        if self.kind in receiptcheats.KINDS:
            receiptcheats.after_roles(self)
        if self.kind != "overclaim":
            return
        assert self.worker is not None and self.worker.server is not None, "an over-claimer is a worker"
        honest = self.worker.server
        self.overclaimer = OverclaimingServer(honest.backend, honest.terms, meter=honest.meter,
                                              on_load_change=honest._on_load_change, extra=self.overclaim_tokens)
        self.worker.server = self.overclaimer
        self.mesh.set_stream_handler(PROTOCOL_ID, self.overclaimer.handle)

    async def adversary_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.overclaimer is not None:
            out["extra_tokens_per_final"] = self.overclaim_tokens
            out["by_peer"] = {p: asdict(b) for p, b in self.overclaimer.books.items()}
        if self.stale is not None:
            out["stale_after"] = self.stale_after
            out["closes"] = [asdict(c) for c in self.stale.closes.values()]
        if self.kind == "nonpayer" and self.payments is not None:
            by_worker = {}
            for peer, book in self.unpaid.items():
                paid = 0
                for address in book.channels:
                    newest = await self.payments.store.run(self.payments.store.newest_voucher, address)
                    paid += newest.cumulative if newest else 0
                by_worker[peer] = {**asdict(book), "channels": sorted(book.channels), "paid": paid,
                                   "unpaid": book.received_amount - paid}
            out["by_worker"] = by_worker
        if self.kind in paycheats.KINDS:
            out.update(await paycheats.status(self))
        out.update(receiptcheats.status(self))
        return out

    async def status(self) -> dict[str, Any]:
        out = await super().status()
        out["adversary"] = await self.adversary_status()
        return out


def _config(argv: list[str]) -> Config:
    args = build_parser().parse_args(argv)
    if args.command != "run":
        raise SystemExit("netsim.rogue: only the run command is supported")
    config = load_config(args.config, overrides=overrides_from_args(args))
    if config.node.network != "local" or config.payments.chain != "local":
        raise SystemExit("netsim.rogue: NETSIM-ONLY adversaries run on the local network and EMULATED chain only")
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="netsim.rogue", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--overclaim-tokens", type=int, default=5)
    parser.add_argument("--stale-after", type=int, default=3)
    add_link_table_option(parser)
    parser.add_argument("node_args", nargs=argparse.REMAINDER, help="run <cocoon-node run flags>")
    args = parser.parse_args(argv)
    try:
        config = _config(args.node_args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"netsim.rogue: config error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("libp2p", "hypercorn", "httpx", "multiaddr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    node = RogueNode(config, args.kind, overclaim_tokens=args.overclaim_tokens, stale_after=args.stale_after,
                     transport_factory=link_shaping(config, args.link_table, "netsim.rogue"))

    trio.run(serve_until_signalled, node, {"rogue": args.kind})


if __name__ == "__main__":
    main()

