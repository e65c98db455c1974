"""netsim's channel invariants (issue 16): ``vouchers_agree`` over both sides' stored books, and
``channel_ops`` (one open and at most one close per channel lifetime), each passing and failing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cocoon_node.payments.store import PaymentStore
from cocoon_node.payments.voucher import ChannelParams, sign_voucher
from netsim.channel_life import invariants, read_book
from tests.payments.conftest import party_key


def verdicts(life: dict[str, Any]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    judged = SimpleNamespace(invariants=SimpleNamespace(close_channels_at_end=True))
    invariants(SimpleNamespace(channel_life=life, final_status={}, scenario=judged),
               lambda name, verdict, detail: out.__setitem__(name, (verdict, detail)))
    return out


def book(role: str, vouchers: list[tuple[int, int, str]], peer: str = "w") -> dict[str, Any]:
    return {"role": role, "peer": peer, "status": "open", "vouchers": vouchers}


def test_read_book_gives_each_channel_its_vouchers_in_order(tmp_path: Path) -> None:
    store = PaymentStore.open(tmp_path / "payments.db")
    params = ChannelParams(b"\x01" * 32, b"\x02" * 32, "0:" + "11" * 32, "0:" + "22" * 32, 5, 600)
    store.upsert_channel("EQa", "payer", "w1", params, 1000)
    v1, v2 = sign_voucher(party_key("payer"), 5, 1, 10), sign_voucher(party_key("payer"), 5, 2, 30)
    store.add_voucher("EQa", v1)
    store.add_voucher("EQa", v2)
    store.close()
    got = read_book(tmp_path / "payments.db")
    assert got == {"EQa": book("payer", [(1, 10, v1.signature.hex()), (2, 30, v2.signature.hex())], "w1")}
    assert read_book(tmp_path / "missing.db") == {}


def test_vouchers_agree_when_the_worker_holds_only_the_payers_vouchers() -> None:
    payer = [(1, 10, "aa"), (2, 20, "bb"), (3, 35, "cc")]
    life = {"books": {"requester1": {"EQa": book("payer", payer)},
                      "w": {"EQa": book("payee", [(1, 10, "aa"), (3, 35, "cc")])}},  # #2 arrived late: stale
            "kills": [{"requester": "requester1", "chunks_before_kill": 5}]}
    verdict, detail = verdicts(life)["vouchers_agree"]
    assert verdict == "PASS" and "1 channel(s)" in detail and "newest differ on 0" in detail


def test_a_voucher_the_payer_never_stored_or_a_reused_seqno_fails() -> None:
    payer = [(1, 10, "aa"), (2, 20, "bb")]
    forged = {"books": {"r": {"EQa": book("payer", payer)}, "w": {"EQa": book("payee", [(2, 25, "dd")])}}}
    assert verdicts(forged)["vouchers_agree"][0] == "FAIL"
    reused = {"books": {"r": {"EQa": book("payer", [(1, 10, "aa"), (1, 20, "bb")])},
                        "w": {"EQa": book("payee", [(1, 10, "aa")])}}}
    assert verdicts(reused)["vouchers_agree"][0] == "FAIL"
    lost = {"books": {"r": {"EQa": book("payer", [(1, 10, "aa"), (2, 10 + 10**9, "bb")])},
                      "w": {"EQa": book("payee", [(1, 10, "aa")])}}}  # more than a credit window never arrived
    assert verdicts(lost)["vouchers_agree"][0] == "FAIL"


def test_channel_ops_count_one_open_and_one_close_per_channel() -> None:
    books = {"r": {"EQa": book("payer", []), "EQb": book("payer", [], peer="w2")}}
    good = {"EQa": {"requester": "r", "peer": "w", "open": 1, "claim": 2, "cooperative_close": 1},
            "EQb": {"requester": "r", "peer": "w2", "open": 1, "top_up": 1}}
    verdict, detail = verdicts({"books": books, "onchain_ops": good})["channel_ops"]
    assert verdict == "PASS" and "'open': 2" in detail
    closed_twice = {**good, "EQb": {"requester": "r", "peer": "w2", "open": 1, "start_close": 1,
                                    "cooperative_close": 1}}
    assert verdicts({"books": books, "onchain_ops": closed_twice})["channel_ops"][0] == "FAIL"
    reopened = {**good, "EQc": {"requester": "r", "peer": "w", "open": 1}}  # a second channel to the same worker
    assert verdicts({"books": books, "onchain_ops": reopened})["channel_ops"][0] == "FAIL"
