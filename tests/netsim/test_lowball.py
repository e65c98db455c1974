"""netsim's lowball payer (issue 19) against real node code and the EMULATED chain, and its invariant.

The payer closes with a higher-seqno, lower-amount voucher, or with none and then a (2^64-1, 0) challenge; the
worker's honest Settlement must still end with its newest voucher. The invariant must be able to FAIL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from cocoon_node.payments.chain.base import ChannelStatus
from netsim.lowball import LowballCloser, invariant, main
from netsim.runner import SimData, SimNode
from netsim.scenario import ScenarioError, parse_scenario
from tests.payments.conftest import Parties, contract_deps, parties  # noqa: F401 - fixtures
from tests.payments.test_metering import WORKER_PEER, chat, tail_voucher_stored, world
from tests.waiting import wait_until


@pytest.mark.parametrize("mode", ["lower_voucher", "max_seqno"])
async def test_lowball_close_is_challenged_and_the_worker_keeps_its_newest_voucher(
    parties: Parties, tmp_path: Path, mode: str  # noqa: F811
) -> None:
    async with world(parties, tmp_path) as w:
        with trio.fail_after(90):
            meter = await w.meter_for()
            await w.run(chat(30), meter)
            ch = meter.channel
            newest = await tail_voucher_stored(w, ch)
            trigger = tmp_path / "go"
            rogue = LowballCloser(w.manager, targets=frozenset({WORKER_PEER}), trigger=trigger, modes=(mode,))
            async with trio.open_nursery() as nursery:
                await nursery.start(rogue.run)
                await wait_until(lambda: rogue.trigger_checks >= 2, timeout=10)  # it looked, twice, and found none
                assert not rogue.triggered and not rogue.closes  # nothing happens before the trigger
                trigger.write_text("go\n")
                await wait_until(lambda: rogue.done, timeout=30)
            (close,) = rogue.closes.values()
            assert close.success and close.mode == mode
            assert (close.newest_seqno, close.newest_cumulative) == (newest.seqno, newest.cumulative)
            assert close.lowball_cumulative < newest.cumulative and close.lowball_seqno > newest.seqno
            assert close.committed_after == close.lowball_cumulative  # the chain holds only the lowball so far
            if mode == "max_seqno":
                assert [(a.success, a.error_name) for a in close.attempts] == [(False, "AMOUNT_BACKWARDS")]
            assert WORKER_PEER not in w.manager.channels  # no later request draws on the closing channel
            # the worker's honest settlement challenges with its newest voucher, then finishes
            assert await w.settlement.check_closes() == [ch.address]
            st = await w.p.payee.get_channel_state(ch.address)
            assert st.committed == newest.cumulative
            await w.p.payee.advance_time(3601)
            assert await w.settlement.check_closes() == [ch.address]
            assert (await w.p.payee.get_channel_state(ch.address)).status is ChannelStatus.CLOSED
            txs = await w.p.payee.transactions(ch.address, limit=100)
            paid = sum(int(m["amount"]) for t in txs for m in t["outMessages"] if m.get("amount") is not None)
            assert paid == newest.cumulative


async def test_lowball_closer_spares_workers_outside_its_targets(parties: Parties, tmp_path: Path) -> None:  # noqa: F811
    async with world(parties, tmp_path) as w:
        with trio.fail_after(60):
            meter = await w.meter_for()
            await w.run(chat(10), meter)
            rogue = LowballCloser(w.manager, targets=frozenset({"someone-else"}), trigger=tmp_path / "go")
            await rogue.attack_all()
            assert rogue.closes == {} and rogue.spared == [meter.channel.address]
            assert (await w.p.payee.get_channel_state(meter.channel.address)).status is ChannelStatus.OPEN


def test_lowball_payer_refuses_a_real_network(tmp_path: Path) -> None:
    cfg = tmp_path / "testnet.toml"
    cfg.write_text('[node]\nnetwork = "testnet"\n[payments]\nchain = "ton"\n')
    with pytest.raises(SystemExit, match="NETSIM-ONLY"):
        main(["--trigger", str(tmp_path / "go"), "run", "--config", str(cfg), "--data-dir", str(tmp_path),
              "--requester"])


def test_lowball_section_parses_strictly() -> None:
    base: dict[str, Any] = {"name": "a", "duration": 5, "cluster": {"workers": [{"name": "worker"}]}}
    s = parse_scenario({**base, "lowball": {"bursts": 3, "modes": ["max_seqno"]}})
    assert s.lowball is not None and (s.lowball.bursts, s.lowball.modes) == (3, ("max_seqno",))
    for bad in ({"modes": ["sneaky"]}, {"modes": []}, {"count": 0}, {"colour": "red"}):
        with pytest.raises(ScenarioError):
            parse_scenario({**base, "lowball": bad})


def _data(settlement: dict[str, Any], *, attempt_ok: bool = False, done: bool = True) -> SimData:
    s = parse_scenario({"name": "a", "duration": 5, "cluster": {"workers": [{"name": "worker"}]}, "lowball": {}})
    data = SimData(s, 1)
    data.nodes["worker1"] = SimNode("worker1", "worker", "worker", peer_id="peer-w", state="up")
    data.nodes["lowball1"] = SimNode("lowball1", "requester", None, True, peer_id="peer-l", state="up",
                                     adversary="lowball_close")
    close = {"address": "ch-1", "worker": "peer-w", "mode": "max_seqno", "newest_seqno": 7,
             "newest_cumulative": 9000, "lowball_seqno": 2**64 - 1, "lowball_cumulative": 0, "success": True,
             "error_name": "OK", "committed_after": 0, "deadline": 10,
             "attempts": [{"what": "challenge with (2^64-1, 0)", "success": attempt_ok, "exit_code": 109,
                           "error_name": "AMOUNT_BACKWARDS"}]}
    data.final_status["lowball1"] = {"adversary": {"kind": "lowball_close", "done": done, "closes": [close]}}
    data.lowball_settlements["ch-1"] = settlement
    return data


def _verdict(data: SimData) -> tuple[str, str]:
    out: list[tuple[str, str, str]] = []
    invariant(data, data.nodes["lowball1"], lambda n, v, d: out.append((n, v, d)))
    ((name, verdict, detail),) = out
    assert name == "lowball_close_contained[lowball1]"
    return verdict, detail


def test_lowball_invariant_passes_only_when_every_payee_keeps_its_newest_voucher() -> None:
    ok = {"status": "closed", "payee": 9000, "payer_refund": 5, "worker_newest": 9000}
    verdict, detail = _verdict(_data(ok))
    assert verdict == "PASS" and "AMOUNT_BACKWARDS" in detail and "paid 9000" in detail
    cases = [
        ({**ok, "payee": 8999}, {}, "8999 < its newest voucher 9000"),
        ({**ok, "status": "closing"}, {}, "not settled"),
        (ok, {"attempt_ok": True}, "the contract accepted"),
        (ok, {"done": False}, "never finished"),
        ({**ok, "worker_newest": None}, {}, "unknown"),
    ]
    for settlement, kw, why in cases:
        verdict, detail = _verdict(_data(settlement, **kw))
        assert verdict == "FAIL" and why in detail, (why, detail)
    empty = _data(ok)
    empty.final_status["lowball1"]["adversary"]["closes"] = []
    assert _verdict(empty)[0] == "FAIL"
