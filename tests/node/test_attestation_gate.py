"""Issue 21: the attestation gate binds the requested model to the attested report, honours the policy's
maximum age and each verdict's expiry at every use (the path that waited on a cancelled check included),
re-checks a worker whose report changed at once, and reports the verdict it would apply, not the
announcement's claims. In process, with the project's gate, publisher, config and node classes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
import trio.testing

from cocoon_node.attestation import TEE_TDX, check_report
from cocoon_node.config import ConfigError, load_config
from cocoon_node.inference.requester import Requester
from cocoon_node.mesh import WorkerTable
from cocoon_node.node.attest import policy_from_config
from cocoon_node.node.node import Node

from .gate_helpers import T0, Clock, FakeDht, Worker, gate_over, local_dev_policy


def requester_over(workers: list, gate) -> Requester:  # type: ignore[no-untyped-def]
    async def never_opened(_: object) -> object:
        raise AssertionError("no stream may be opened")

    return Requester(lambda: workers, never_opened, gate, max_price_prompt=10, max_price_completion=10)


async def test_a_report_for_another_model_never_attests_the_announced_name(tmp_path: Path) -> None:
    """Finding 1: a report for "tiny-model" next to an announcement of "gpt-big" (same weights, same TEE)
    was attested for "gpt-big" requests, since only the hash and TEE were compared."""
    w = Worker(tmp_path, model_name="tiny-model")
    dht = FakeDht()
    dht.records[w.key] = w.report()
    gate = gate_over(dht)
    lying = w.announcement(model="gpt-big")
    with trio.fail_after(10):
        assert await gate.is_attested(lying) is False
        assert await requester_over([lying], gate).candidates("gpt-big") == []
        # the same worker announcing what its report names is fine
        assert await gate.is_attested(w.announcement()) is True
    assert gate.known(lying) is False


def test_allow_any_model_is_refused_on_testnet_and_mainnet() -> None:
    """Finding 1: allow_any_model defaulted to true, so every network's policy allowed any weights."""
    for network in ("testnet", "mainnet"):
        base = {"node": {"network": network}, "payments": {"chain": "ton", "ton_network": network}}
        policy = policy_from_config(load_config(env={}, overrides=base))
        assert policy.model_hashes == frozenset() and policy.models == frozenset()
        with pytest.raises(ConfigError, match=r"policy\.allow_any_model"):
            load_config(env={}, overrides={**base, "policy": {"allow_any_model": True}})
        with pytest.raises(ConfigError, match=r"policy\.allowed_model_hashes"):
            load_config(env={}, overrides={**base, "policy": {"allowed_model_hashes": ["07" * 32]}})


async def test_weights_are_allowed_only_for_the_model_name_the_policy_lists(tmp_path: Path) -> None:
    """Model name -> allowed hashes: the tiny weights are allowed for "tiny-model", so a report that names
    them "gpt-big" fails verification itself, whatever it announces."""
    policy = local_dev_policy(allowed_models=[f"tiny-model={Worker(tmp_path).weights.hex()}"])
    honest, renamed = Worker(tmp_path, model_name="tiny-model"), Worker(tmp_path, model_name="gpt-big")
    assert check_report(honest.report(), honest.peer_id, policy, T0).ok
    v = check_report(renamed.report(), renamed.peer_id, policy, T0)
    assert not v.ok and v.check == "model_hash" and "gpt-big" in v.reasons[0]


async def test_a_waiter_never_gets_an_expired_verdict_from_a_cancelled_check(tmp_path: Path) -> None:
    """Finding 3: check 2 waited on check 1; check 1 was cancelled (as candidates() does once a worker
    passes); check 2 then read the cached ok verdict without the freshness test, though it had expired
    and the report was gone from the DHT."""
    w = Worker(tmp_path)
    dht, clock = FakeDht(), Clock(T0)
    dht.records[w.key] = w.report(now=T0, lifetime=60)
    gate = gate_over(dht, clock=clock)
    with trio.fail_after(10):
        assert (await gate.check(w.peer_id)).ok
        clock.now = T0 + 100          # the cached verdict has expired
        del dht.records[w.key]        # and the worker's report is gone
        dht.blocked = True
        results = []
        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()

            async def check_1() -> None:
                with first:
                    await gate.check(w.peer_id)

            async def check_2() -> None:
                results.append(await gate.check(w.peer_id))

            nursery.start_soon(check_1)
            await dht.waiting.wait()       # check 1 is inside its DHT lookup
            nursery.start_soon(check_2)
            await trio.testing.wait_all_tasks_blocked()  # check 2 waits on check 1
            dht.blocked = False
            first.cancel()
    assert len(results) == 1 and not results[0].ok and results[0].check == "missing"


async def test_a_cached_verdict_does_not_outlive_the_policy_max_age(tmp_path: Path) -> None:
    """Finding 4: max age 600 s, report lifetime 3600 s; a fresh verify at +1000 s fails too_old, but the
    cached verdict kept the worker attested until +3599 s."""
    w = Worker(tmp_path)
    dht, clock = FakeDht(), Clock(T0)
    record = dht.records[w.key] = w.report(now=T0, lifetime=3600)
    policy = local_dev_policy(max_report_age=600)
    gate = gate_over(dht, policy, clock)
    a = w.announcement()
    with trio.fail_after(10):
        assert await gate.is_attested(a)
        clock.now = T0 + 1000
        assert check_report(record, w.peer_id, policy, T0 + 1000).check == "too_old"
        assert gate.known(a) is None  # not usable any more: checked again before use
        assert await gate.is_attested(a) is False
        clock.now = T0 + 3599
        assert await gate.is_attested(a) is False
    assert gate.describe(a)["verified"] is False


async def test_a_worker_that_publishes_a_new_report_is_rechecked_at_once(tmp_path: Path) -> None:
    """Finding (smaller): after a model change the worker was refused until its old verdict expired (1 h)."""
    old = Worker(tmp_path, model_name="tiny-model")
    dht, clock = FakeDht(), Clock(T0)
    dht.records[old.key] = old.report(now=T0)
    gate = gate_over(dht, clock=clock)
    with trio.fail_after(10):
        assert await gate.is_attested(old.announcement())
        # The worker restarts with other weights and model: a new report, a new announcement.
        new = Worker(tmp_path, model_name="gpt-big", weights=b"\x42" * 32)
        new.key_pair, new.peer = old.key_pair, old.peer
        clock.now = T0 + 30
        dht.records[new.key] = new.report(now=T0 + 30)
        announcement = new.announcement(now=T0 + 30)
        assert gate.known(announcement) is None  # not refused on the old verdict: checked again
        assert await gate.is_attested(announcement) is True
        assert gate.known(announcement) is True


async def test_a_stale_copy_served_by_another_node_does_not_deny_the_worker(tmp_path: Path) -> None:
    """Finding (smaller): the lookup stopped at the first valid record, so a node still serving the worker's
    older report (another model) got the worker refused. A mismatch now asks for the newest record."""
    w = Worker(tmp_path, model_name="gpt-big", weights=b"\x42" * 32)
    older = Worker(tmp_path, model_name="tiny-model")
    older.key_pair, older.peer = w.key_pair, w.peer
    dht = FakeDht()
    dht.stale[w.key] = older.report(now=T0 - 60)
    dht.records[w.key] = w.report(now=T0)
    gate = gate_over(dht)
    with trio.fail_after(10):
        assert await gate.is_attested(w.announcement()) is True
    assert (w.key, True) in dht.lookups


async def test_a_persistent_mismatch_costs_one_lookup_per_retry_interval(tmp_path: Path) -> None:
    """An adversary announcing a name its report does not attest cannot make the gate look up its report
    on every announcement."""
    w = Worker(tmp_path, model_name="tiny-model")
    dht, clock = FakeDht(), Clock(T0)
    dht.records[w.key] = w.report()
    gate = gate_over(dht, clock=clock, retry_mismatch=10.0)
    lying = w.announcement(model="gpt-big")
    with trio.fail_after(10):
        for _ in range(5):
            assert await gate.is_attested(lying) is False
            gate.prefetch(lying)
        assert gate.fetches == 2  # the first lookup and one "newest" re-check
        clock.now = T0 + 11
        assert gate.known(lying) is None
        assert await gate.is_attested(lying) is False and gate.fetches == 3


async def test_models_and_status_show_the_gate_verdict_not_the_announcement(tmp_path: Path) -> None:
    """Finding (smaller): /v1/models took tee_kind/dev_insecure from the announcement and said verified
    without the binding check, so a dev report announced as tdx was listed as a verified tdx worker."""
    now = int(time.time())
    liar, honest = Worker(tmp_path), Worker(tmp_path)
    dht = FakeDht()
    dht.records[liar.key] = liar.report(now=now)
    dht.records[honest.key] = honest.report(now=now)
    gate = gate_over(dht, clock=time.time)  # type: ignore[arg-type]
    node = Node.__new__(Node)
    node.table, node.gate, node.requester = WorkerTable(), gate, None
    as_tdx, plain = liar.announcement(now=now, tee_kind=TEE_TDX), honest.announcement(now=now)
    assert node.table.update(as_tdx) and node.table.update(plain)
    with trio.fail_after(10):
        assert await gate.is_attested(as_tdx) is False and await gate.is_attested(plain) is True
    entries = {e["worker"]: e for e in node.models()[0]["cocoon"]["attestation"]}
    lie = entries[liar.peer.to_base58()]
    assert lie["verified"] is False and lie["tee_kind"] == "dev-INSECURE" and lie["dev_insecure"] is True
    assert lie["check"] == "binding" and any("announcement claims tdx" in r for r in lie["reasons"])
    ok = entries[honest.peer.to_base58()]
    assert ok["verified"] is True and ok["dev_insecure"] is True and ok["attested_model"] == "tiny-model"
    assert node.models()[0]["cocoon"]["verified_workers"] == 1


async def test_dev_platform_keys_can_be_pinned(tmp_path: Path) -> None:
    """Finding (smaller): dev platform keys could not be pinned from the configuration."""
    from cocoon_node.attestation import DevPlatform

    w = Worker(tmp_path)
    record = w.report()
    mine = DevPlatform.load_or_create(tmp_path / "dev-platform.key").public_key
    other = DevPlatform.load_or_create(tmp_path / "other" / "dev-platform.key").public_key
    assert check_report(record, w.peer_id, local_dev_policy(dev_platform_keys=[mine.hex()]), T0).ok
    v = check_report(record, w.peer_id, local_dev_policy(dev_platform_keys=[other.hex()]), T0)
    assert not v.ok and v.check == "dev_platform_key"
    with pytest.raises(ConfigError, match=r"policy\.dev_platform_keys"):
        load_config(env={}, overrides={"policy": {"dev_platform_keys": ["zz"]}})
