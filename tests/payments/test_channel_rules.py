"""The registry's channel rules (minimum deposit, challenge period range) are enforced at open, on both ends.

Before: the registry's min_deposit and min_challenge_period were read and shown, and nothing checked them, so a
requester deployed channels the network's workers should refuse and workers served them.
Harness of test_metering (EMULATED chain; deposit 2 TON, challenge period 3 600 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cocoon_node.inference.port import PaymentRequired
from cocoon_node.payments.channels import ChannelManager
from cocoon_node.payments.rules import ChannelRules, ChannelRulesError
from cocoon_node.payments.voucher import MAX_CHALLENGE_PERIOD, public_key_bytes
from tests.payments.conftest import TON, Parties
from tests.payments.test_metering import PC, PP, WINDOW, WORKER_PEER, World, chat, world


async def manager(w: World, rules: ChannelRules | None, *, deposit: int = 2 * TON,
                  challenge_period: int = 3600) -> ChannelManager:
    return ChannelManager(w.p.payer, w.payer_store, w.p.payer_key, deposit=deposit, credit_window=WINDOW,
                          challenge_period=challenge_period, rules=lambda: rules)


async def open_with(m: ChannelManager, w: World) -> object:
    return await m.meter_for(WORKER_PEER, w.p.payee.wallet_address, public_key_bytes(w.p.payee_key),
                             price_prompt=PP, price_completion=PC)


def test_rules_name_each_problem() -> None:
    r = ChannelRules(min_deposit=TON, min_challenge_period=600, max_challenge_period=7200)
    assert r.problems(TON, 600) == [] and r.problems(2 * TON, 7200) == []
    assert "below the network's minimum" in r.problems(TON - 1, 600)[0]
    assert "outside the network's 600..7200" in r.problems(TON, 599)[0]
    assert len(r.problems(0, 7201)) == 2
    assert ChannelRules().max_challenge_period == MAX_CHALLENGE_PERIOD


@pytest.mark.parametrize(("deposit", "period", "what"), [
    (TON // 2, 3600, "deposit"),          # below the minimum deposit
    (2 * TON, 60, "challenge period"),    # too short to answer a stale close in
    (2 * TON, 90_000, "challenge period"),  # longer than the network waits
])
async def test_requester_deploys_no_channel_the_rules_refuse(parties: Parties, tmp_path: Path, deposit: int,
                                                             period: int, what: str) -> None:
    rules = ChannelRules(min_deposit=TON, min_challenge_period=600, max_challenge_period=86_400)
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            m = await manager(w, rules, deposit=deposit, challenge_period=period)
            with pytest.raises(ChannelRulesError, match=what):
                await open_with(m, w)
            assert m.onchain_ops["open"] == 0 and m.channels == {}
            assert w.payer_store.channels("payer") == []  # not even an "opening" row
            ok = await manager(w, rules)  # compliant terms open as before
            await open_with(ok, w)
            assert ok.onchain_ops["open"] == 1


@pytest.mark.parametrize(("rules", "what"), [
    (ChannelRules(min_deposit=3 * TON), "deposit"),
    (ChannelRules(min_challenge_period=7200), "challenge period"),
    (ChannelRules(max_challenge_period=600), "challenge period"),
])
async def test_worker_serves_no_channel_breaking_the_rules(parties: Parties, tmp_path: Path, rules: ChannelRules,
                                                           what: str) -> None:
    """A channel opened by a requester that ignores the rules (2 TON, 3 600 s): the worker refuses it before
    any prefill, naming the broken rule; a worker with no rules (or compliant terms) serves it."""
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            meter = await open_with(await manager(w, None), w)
            strict = w.new_worker_meter(rules=lambda: rules)
            with pytest.raises(PaymentRequired, match=f"network's rules: .*{what}"):
                await strict.admit("r1", meter.payment_ref(), 5)  # type: ignore[attr-defined]
            assert strict.stats.refused == 1 and strict.stats.admitted == 0
            lenient = w.new_worker_meter(rules=lambda: ChannelRules(min_deposit=2 * TON, min_challenge_period=3600))
            await lenient.admit("r2", meter.payment_ref(), 5)  # type: ignore[attr-defined]
            assert lenient.stats.admitted == 1
            assert (await w.run(chat(3), meter)) == (3, 3)  # the harness's worker has no rules: it serves
