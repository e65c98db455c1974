"""The requester pays a prompt when the worker's first token arrives, never up front (issue 16).

A worker killed mid-request used to have been paid the whole prompt at accept, for no answer. Now: a worker
that dies before its first token is paid nothing; a client that walks away before the first token still pays
the prompt (the worker ran the prefill: a client's fault never counts against a worker); the worker admits a
prompt only with room in its credit window for the first token too, so concurrent honest streams of one payer
never wait on each other's prompt vouchers, and a payer that never pays still costs it at most the window.
Harness of test_metering (prices 1 000 / 3 000, credit window 60 000, EMULATED chain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from cocoon_node.inference.stream import PROTOCOL_ID, InferenceServer, WorkerFailure, call_worker
from cocoon_node.wire import FrameStream
from cocoon_node.wire.messages.inference import CODEC, DeltaFrame, InferenceFrame
from tests.payments.conftest import Parties
from tests.payments.test_metering import PC, PP, WINDOW, chat, world
from tests.waiting import wait_until


class _DiesAtFirstToken(FrameStream[InferenceFrame]):
    """The worker's stream is reset as its first token would go out: a worker killed after prefill."""

    def __init__(self, raw: Any) -> None:
        super().__init__(raw, CODEC)
        self.raw = raw

    async def send(self, frame: InferenceFrame) -> None:
        if isinstance(frame, DeltaFrame):
            await self.raw.reset()
            raise trio.BrokenResourceError("killed before the first token")
        await super().send(frame)


class DiesBeforeFirstToken(InferenceServer):
    async def handle(self, raw_stream: Any) -> None:
        key = raw_stream.muxed_conn.peer_id.extract_public_key().to_bytes()
        try:
            await self._serve(_DiesAtFirstToken(raw_stream), key)
        except Exception:
            pass


async def test_a_worker_dying_before_its_first_token_is_paid_nothing(parties: Parties, tmp_path: Path) -> None:
    """Before the fix the requester signed and sent the prompt's voucher (50 000 nanotons) at accept."""
    async with world(parties, tmp_path, server_factory=DiesBeforeFirstToken) as w:
        with trio.fail_after(60):
            meter = await w.meter_for()
            with pytest.raises(WorkerFailure) as err:
                await w.run(chat(50), meter)
            assert err.value.before_first_token  # the requester may retry elsewhere
            ch = meter.channel
            assert ch.charged == 0 and ch.paid == 0 and meter.amount == 0  # the requester lost nothing
            assert await w.payer_store.run(w.payer_store.voucher_count, ch.address) == 0
            acct = w.meter.account(ch.address)
            # the worker admitted the prompt on credit, within its window, and got no voucher for it
            assert acct is not None and acct.paid == 0 and 0 < acct.served <= WINDOW


async def test_a_client_leaving_before_the_first_token_still_pays_the_prompt(parties: Parties,
                                                                           tmp_path: Path) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            w.backend.tokens_per_second = 5  # slow: the client leaves long before the answer is done
            meter = await w.meter_for()
            stream = await w.req_mesh.new_stream(w.worker_mesh.peer_id, PROTOCOL_ID)
            async with call_worker(stream, chat(20), price_prompt=PP, price_completion=PC, meter=meter):
                pass  # accepted; the client walks away before reading a token
            w.backend.tokens_per_second = 2000
            ch = meter.channel
            assert ch.charged >= 20 * PP and ch.paid == ch.charged  # the prompt (and any token counted) is paid
            acct = w.meter.account(ch.address)
            assert acct is not None
            await wait_until(lambda: acct.paid == ch.paid, timeout=10)  # and the worker holds that voucher


async def test_concurrent_prompts_beyond_the_window_all_complete(parties: Parties, tmp_path: Path) -> None:
    """Four 25-word prompts at once (100 000 nanotons of prompts against a 60 000 window): each admission keeps
    room for its first token, whose voucher pays the prompt and lets the next prompt in; none times out."""
    async with world(parties, tmp_path, payment_timeout=15.0) as w:
        with trio.fail_after(90):
            meters = [await w.meter_for() for _ in range(4)]  # one channel, four requests' meters
            meter0 = meters[0]
            results: list[tuple[int, int] | str] = []

            async def one(meter: Any) -> None:
                try:
                    results.append(await w.run(chat(25), meter))
                except Exception as exc:  # reported below, with the others' results
                    results.append(repr(exc))

            async with trio.open_nursery() as nursery:
                for meter in meters:
                    nursery.start_soon(one, meter)
            assert results == [(25, 25)] * 4, results
            acct = w.meter.account(meter0.channel.address)
            assert acct is not None
            await wait_until(lambda: acct.paid == meter0.channel.charged, timeout=10)
            assert meter0.channel.charged == 4 * 25 * (PP + PC)
            # no stream waited out a payment timeout; unpaid never passed the window plus excused in-flight tails
            assert w.meter.stats.payment_timeouts == 0
            assert w.meter.stats.max_payer_exposure <= WINDOW + w.meter.forgive_cap
