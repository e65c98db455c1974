"""The five ways a peer took money or work beyond the design's bounds (issue 20), each on the EMULATED chain
with the payment harness of test_metering (prices 1 000 / 3 000, credit window 60 000, deposit 2 TON).

Each test failed on the code before the fix (checked by running this file against that commit) and passes now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from msgspec.structs import replace

from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer, WorkerFailure, call_worker
from cocoon_node.payments.chain.base import ChannelStatus
from cocoon_node.payments.channels import ChannelManager
from cocoon_node.payments.meter import RequesterPaymentMeter
from cocoon_node.payments.voucher import sign_close
from cocoon_node.wire import FrameStream
from cocoon_node.wire.messages.inference import CODEC, AcceptFrame, DeltaFrame, FinalFrame, InferenceFrame
from tests.payments.conftest import TON, Parties, party_key
from tests.payments.test_metering import PC, PP, WINDOW, WORKER_PEER, World, chat, world
from tests.waiting import wait_until

HELD_BACK = 4  # inference.audit.HELD_BACK_TOKENS: completion tokens a requester allows beyond the text's bytes


class _Inflating(FrameStream[InferenceFrame]):
    """Rewrites the first request's claimed counts on the wire (the worker's own meter charges honestly) and
    keeps its final frame consistent with the lie, so only the counts themselves give it away."""

    def __init__(self, raw: Any, *, prompt: int | None, first_delta: int | None) -> None:
        super().__init__(raw, CODEC)
        self.prompt, self.first_delta = prompt, first_delta
        self.extra = 0
        self.inflated_text = ""  # the text of the delta whose count was inflated (coalescing may join tokens)

    async def send(self, frame: InferenceFrame) -> None:
        match frame:
            case AcceptFrame() if self.prompt is not None:
                frame = replace(frame, prompt_tokens=self.prompt)
            case DeltaFrame() if self.first_delta is not None and not self.extra:
                self.extra = self.first_delta - frame.tokens
                self.inflated_text = frame.text
                frame = replace(frame, tokens=self.first_delta)
            case FinalFrame():
                prompt = self.prompt if self.prompt is not None else frame.prompt_tokens
                completion = frame.completion_tokens + self.extra
                frame = replace(frame, prompt_tokens=prompt, completion_tokens=completion,
                                total_tokens=prompt + completion)
        await super().send(frame)


def inflating_server(*, prompt: int | None = None, first_delta: int | None = None) -> Any:
    """An InferenceServer whose first stream over-claims (then it behaves)."""

    class Server(InferenceServer):
        inflated = 0
        lying: _Inflating | None = None  # the stream that over-claimed, to read what it sent

        async def handle(self, raw_stream: Any) -> None:
            if Server.inflated:
                return await super().handle(raw_stream)
            Server.inflated += 1
            key = raw_stream.muxed_conn.peer_id.extract_public_key().to_bytes()
            frames = _Inflating(raw_stream, prompt=prompt, first_delta=first_delta)
            Server.lying = frames
            try:
                await self._serve(frames, key)
            except Exception:
                pass
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await raw_stream.close()

    return Server


async def claim_everything(w: World, address: str) -> int:
    """What the worker can take on chain with the vouchers it holds (it claims them all)."""
    await w.settlement.claim_due(force=True)
    return (await w.p.payee.get_channel_state(address)).claimed


# ----- 1. the requester pays what it can count, never what the worker claims -------------------------------


async def test_inflated_completion_count_is_not_paid(parties: Parties, tmp_path: Path) -> None:
    """One delta with text "w0" claims 100 000 tokens: before the fix the requester signed 0.3 TON for it."""
    server = inflating_server(first_delta=100_000)
    async with world(parties, tmp_path, server_factory=server) as w:
        with trio.fail_after(60):
            meter = await w.meter_for()
            with pytest.raises(WorkerFailure) as err:
                await w.run(chat(5), meter)
            assert err.value.code == "overcount" and "100000 completion tokens" in str(err.value)
            ch = meter.channel
            # Our bound for the inflated delta's text ("w0", or more words when a slow loop coalesced tokens into
            # it): its UTF-8 bytes + the held-back allowance; the prompt's 5 words were claimed honestly.
            assert server.lying is not None and server.lying.inflated_text
            bound = 5 * PP + (len(server.lying.inflated_text.encode()) + HELD_BACK) * PC
            assert ch.charged <= bound
            await wait_until(lambda: w.meter.account(ch.address) is not None and
                             w.meter.account(ch.address).paid == ch.paid, timeout=10)
            assert await claim_everything(w, ch.address) <= bound  # the worker can take no more on chain
            # The inflated amount does not linger in `charged`: the next request's meter needs no top-up (before
            # the fix it topped up 2 TON, paid out at once).
            await w.meter_for()
            assert w.manager.onchain_ops["top_up"] == 0


async def test_inflated_prompt_count_is_not_paid(parties: Parties, tmp_path: Path) -> None:
    """An accept claiming 10**7 prompt tokens for a 5-word prompt: before the fix the requester signed the
    whole 2 TON deposit over to the worker, which claimed it on chain."""
    async with world(parties, tmp_path, server_factory=inflating_server(prompt=10**7)) as w:
        with trio.fail_after(60):
            meter = await w.meter_for()
            with pytest.raises(WorkerFailure) as err:
                await w.run(chat(5), meter)
            assert err.value.code == "overcount" and err.value.before_first_token
            ch = meter.channel
            assert ch.charged == 0 and ch.newest is None  # nothing signed for this request
            assert await claim_everything(w, ch.address) == 0
            await w.meter_for()  # the next request's meter: no top-up for a charge that never was
            assert w.manager.onchain_ops["top_up"] == 0 and ch.charged == 0


# ----- 2. no service on a channel that is closing or closed ------------------------------------------------


async def test_no_service_after_a_cooperative_close(parties: Parties, tmp_path: Path) -> None:
    """Before the fix the worker served three more requests on the closed channel: worthless vouchers."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(12), meter)
            old = meter.channel
            r = await w.manager.close(WORKER_PEER, w.settlement.cosign_close)
            assert r.success and (await w.p.payer.get_channel_state(old.address)).status is ChannelStatus.CLOSED
            acct = w.meter.account(old.address)
            assert acct is not None
            served, generated = acct.served, w.backend.tokens_generated
            for _ in range(3):  # a requester that keeps drawing on the old channel
                stale = RequesterPaymentMeter(old, price_prompt=PP, price_completion=PC, credit_window=WINDOW)
                with pytest.raises(WorkerFailure) as err:
                    await w.run(chat(50), stale)
                assert err.value.code == "payment_required"
            assert acct.served == served and w.backend.tokens_generated == generated


async def test_no_service_once_the_payer_starts_closing(parties: Parties, tmp_path: Path) -> None:
    """A unilateral close seen by the worker's watcher ends service on that channel."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(12), meter)
            ch = meter.channel
            assert (await w.p.payer.unilateral_close(ch.address, ch.newest)).success
            await w.settlement.check_closes()
            again = RequesterPaymentMeter(ch, price_prompt=PP, price_completion=PC, credit_window=WINDOW)
            with pytest.raises(WorkerFailure) as err:
                await w.run(chat(5), again)
            assert err.value.code == "payment_required" and "closing" in str(err.value)


async def test_a_cached_channel_is_checked_on_chain_again(parties: Parties, tmp_path: Path) -> None:
    """Without a watcher event, the worker re-reads a cached channel's state on chain before admitting on it
    (every ``chain_recheck`` seconds; 0 here): a close it never heard of ends service too."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(12), meter)
            ch = meter.channel
            w.meter.chain_recheck = 0.0
            assert (await w.p.payer.unilateral_close(ch.address, ch.newest)).success  # no watcher runs here
            with pytest.raises(WorkerFailure) as err:
                await w.run(chat(5), RequesterPaymentMeter(ch, price_prompt=PP, price_completion=PC,
                                                           credit_window=WINDOW))
            assert err.value.code == "payment_required" and "closing" in str(err.value)
            assert w.worker_store.ended(ch.address)  # remembered: no chain query needed next time


# ----- 3. forgiveness only for payers that pay -------------------------------------------------------------


class NeverPays(RequesterPaymentMeter):
    """Counts everything and signs nothing, not even the prompt."""

    async def on_accept(self, prompt_tokens: int) -> bytes | None:
        self.prompt_tokens = prompt_tokens
        return None

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        self.completion_tokens = completion_tokens
        return None

    async def on_final(self, completion_tokens: int) -> bytes | None:
        return await self.on_tokens(completion_tokens)


async def test_voucherless_requester_gets_no_free_requests(parties: Parties, tmp_path: Path) -> None:
    """30 one-word requests (4 000 nanotons each) and not one voucher: before the fix every one was forgiven
    as "tail slack" (120 000, twice the window, for free, without a single payment timeout)."""
    async with world(parties, tmp_path, payment_timeout=0.3) as w:
        with trio.fail_after(120):
            ch = (await w.meter_for()).channel
            codes = []
            for _ in range(30):
                try:
                    await w.run(chat(1), NeverPays(ch, price_prompt=PP, price_completion=PC, credit_window=WINDOW))
                    codes.append("ok")
                except WorkerFailure as exc:
                    codes.append(exc.code)
            acct = w.meter.account(ch.address)
            assert acct is not None and acct.paid == 0
            assert acct.forgiven == 0
            assert acct.served <= WINDOW  # everything it got, it got on credit, and no more than the window
            assert codes.count("ok") == WINDOW // (PP + PC) and set(codes[WINDOW // (PP + PC):]) == {
                "payment_required"}


class PaysPromptOnly(NeverPays):
    """Pays the prompt when the first token arrives (as honest requesters do), then nothing."""

    async def on_tokens(self, completion_tokens: int) -> bytes | None:
        first = completion_tokens > 0 and self.charge_prompt()
        self.completion_tokens = completion_tokens
        return await self._voucher() if first else None


async def test_cancelling_while_the_worker_waits_for_payment_forgives_nothing(parties: Parties,
                                                                               tmp_path: Path) -> None:
    """A payer that stops paying and hangs up while the worker waits for its voucher: before the fix the
    cancellation (unlike a timeout) was forgiven 8 tokens of tail."""
    async with world(parties, tmp_path, payment_timeout=30.0) as w:
        with trio.fail_after(60):
            ch = (await w.meter_for()).channel
            bad = PaysPromptOnly(ch, price_prompt=PP, price_completion=PC, credit_window=WINDOW)
            stream = await w.req_mesh.new_stream(w.worker_mesh.peer_id, PROTOCOL_ID)
            async with call_worker(stream, chat(50), price_prompt=PP, price_completion=PC, meter=bad) as call:
                async for _ in call.deltas():
                    break
                # 20 tokens fill the window; once the backend has made 26, the worker holds the 21st (its delta
                # buffer takes 5) and waits in before_tokens for a voucher that never comes.
                await wait_until(lambda: w.backend.tokens_generated >= 26, timeout=20)
            await wait_until(lambda: w.server.stats.cancelled + w.server.stats.failed == 1, timeout=20)
            acct = w.meter.account(ch.address)
            assert acct is not None and acct.forgiven == 0
            assert acct.served - acct.paid <= WINDOW


# ----- 4. prefill only within the credit window ------------------------------------------------------------


async def test_prefill_is_admitted_only_within_the_credit_window(parties: Parties, tmp_path: Path) -> None:
    """12 non-paying 50-token prompts, 4 at a time: before the fix all 12 prefills ran (600 000 = 10x the
    window). Now the first is admitted, the others wait for a voucher that never comes and are refused."""
    async with world(parties, tmp_path, payment_timeout=0.5) as w:
        with trio.fail_after(120):
            ch = (await w.meter_for()).channel
            codes: list[str] = []
            limit = trio.CapacityLimiter(4)

            async def one() -> None:
                async with limit:
                    try:
                        await w.run(chat(50, max_tokens=1), NeverPays(ch, price_prompt=PP, price_completion=PC,
                                                                      credit_window=WINDOW))
                        codes.append("ok")
                    except WorkerFailure as exc:
                        codes.append(exc.code)

            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(one)
            acct = w.meter.account(ch.address)
            assert acct is not None
            assert w.meter.stats.admitted == 1 and codes.count("payment_required") == 11
            assert acct.served - acct.paid <= WINDOW


# ----- 5. a bad close signature never locks the deposit ------------------------------------------------------


async def test_bad_close_signature_falls_back_to_a_unilateral_close(parties: Parties, tmp_path: Path) -> None:
    """The worker returns a signature that does not verify: before the fix the requester counted the close as
    cooperative, the chain refused it, no unilateral close followed and the deposit stayed locked."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(12), meter)
            ch = meter.channel

            async def bad_cosign(address: str, cumulative: int, payer_sig: bytes) -> bytes:
                return sign_close(party_key("not-the-worker"), ch.params.channel_id, cumulative)

            await w.manager.close(WORKER_PEER, bad_cosign)
            st = await w.p.payer.get_channel_state(ch.address)
            assert st.status is ChannelStatus.CLOSING and st.committed == ch.paid
            before = await w.p.payer.get_balance(w.p.payer.wallet_address)
            await w.p.payer.advance_time(3601)
            assert ch.address in await w.manager.check_closes()  # the watcher finishes it
            assert (await w.p.payer.get_channel_state(ch.address)).status is ChannelStatus.CLOSED
            refund = await w.p.payer.get_balance(w.p.payer.wallet_address) - before
            assert refund >= 2 * TON - ch.paid - TON // 10  # the deposit less what it owed, less fees


async def test_watcher_of_a_restarted_requester_closes_what_was_left_closing(parties: Parties,
                                                                             tmp_path: Path) -> None:
    """A requester that crashed after marking a channel closing, before any close reached the chain: before the
    fix neither the restore path (open rows only) nor the watcher (skips OPEN channels) ever closed it."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(12), meter)
            ch = meter.channel
            await w.payer_store.run(lambda: w.payer_store.set_channel(ch.address, status="closing"))  # "crash"
            restarted = ChannelManager(w.p.payer, w.payer_store, w.p.payer_key, deposit=2 * TON,
                                       credit_window=WINDOW)
            assert ch.address in await restarted.check_closes()
            st = await w.p.payer.get_channel_state(ch.address)
            assert st.status is ChannelStatus.CLOSING and st.committed == ch.paid
            await w.p.payer.advance_time(3601)
            await restarted.check_closes()
            assert (await w.p.payer.get_channel_state(ch.address)).status is ChannelStatus.CLOSED


class SlowDeploy:
    """A chain whose next channel deploy waits until released (the watcher runs meanwhile)."""

    def __init__(self, chain: Any) -> None:
        self._chain = chain
        self.deploying = trio.Event()
        self.release = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    async def open_channel(self, *args: Any, **kw: Any) -> str:
        self.deploying.set()
        await self.release.wait()
        return await self._chain.open_channel(*args, **kw)


async def test_the_watcher_never_closes_a_channel_being_opened(parties: Parties, tmp_path: Path) -> None:
    """Regression (netsim adversarial): a watcher round during an open took the new channel for a leftover
    ("opening" row, OPEN on chain) and closed it under the requester's first request."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            slow = SlowDeploy(w.manager.chain)
            w.manager.chain = slow
            async with trio.open_nursery() as nursery:
                nursery.start_soon(w.meter_for)
                await slow.deploying.wait()
                assert await w.manager.check_closes() == []  # deploy in flight: left alone
                slow.release.set()
                while WORKER_PEER not in w.manager.channels:
                    assert await w.manager.check_closes() == []  # and while the row turns "open"
                    await trio.lowlevel.checkpoint()
            ch = w.manager.channels[WORKER_PEER]
            assert await w.manager.check_closes() == []
            assert (await w.p.payer.get_channel_state(ch.address)).status is ChannelStatus.OPEN
            await w.run(chat(5), await w.meter_for())
