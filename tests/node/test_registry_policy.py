"""Policy from the registry contract: read over the EMULATED chain, merged into the config policy, applied
to the attestation gate by the refresher (verdicts flip when the registry's owner removes a model)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from pytoniq_core import Address, HashMap, begin_cell

from cocoon_node import __version__
from cocoon_node.attestation import ANY, TEE_DEV, Policy, check_report, dev_image_hash
from cocoon_node.config import ConfigError, load_config
from cocoon_node.node.attest import AttestationGate, ReportPublisher, policy_from_config, report_key
from cocoon_node.payments.chain.base import ChainError
from cocoon_node.payments.chain.local import LocalChain
from cocoon_node.payments.chain.ton import TonChain
from cocoon_node.payments.registry import (
    RegistryPolicy,
    RegistryPolicyRefresher,
    merge_policy,
    read_registry_policy,
    registry_policy_from_stacks,
)
from tests.waiting import wait_until

TON = 1_000_000_000
T0 = 1_800_000_000
GOOD_MODEL = b"\x07" * 32
OTHER_MODEL = b"\x08" * 32
OWNER_ADDR = "EQD3eLbcV60CnZbStVzPzYtPetz9_qDk2TYOnUqQ0g4CiqX9"
MRTD = b"\x11" * 48
RTMR_SET = b"\x22" * 32


def h(b: bytes) -> int:
    return int.from_bytes(b, "big")


def report(tmp_path: Path, model: bytes) -> tuple[bytes, bytes]:
    """A fresh dev-INSECURE report for a new key serving ``model``: (record, peer id bytes)."""
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    pub = ReportPublisher(SimpleNamespace(peer_id=peer), kp, tee=TEE_DEV, model_name="m",  # type: ignore[arg-type]
                          model_hash=model, data_dir=tmp_path)
    return pub.make_report(), peer.to_bytes()


def base_policy() -> Policy:
    # what a local requester with --allow-dev-tee builds: any image, any model (the registry will narrow both)
    cfg = load_config(env={}, overrides={"node": {"network": "local"}, "policy": {"allow_dev_tee": True}})
    p = policy_from_config(cfg)
    assert p.image_hashes is ANY and p.model_hashes is ANY
    return p


@pytest.fixture
async def owner() -> AsyncIterator[LocalChain]:
    with trio.fail_after(60):
        async with LocalChain.start("owner", balance=100 * TON, now=T0) as chain:
            yield chain


async def deploy(owner: LocalChain, models: list[bytes], name: str = "m") -> str:
    with trio.fail_after(20):
        reg = await owner.deploy_registry(min_deposit=TON, min_challenge_period=3600)
        assert (await owner.registry_update(reg, "add_image", hash=h(dev_image_hash(__version__)))).success
        for m in models:
            assert (await owner.registry_update(reg, "add_model", hash=h(m), name=name)).success
    return reg


async def test_read_merge_and_check(owner: LocalChain, tmp_path: Path) -> None:
    reg_addr = await deploy(owner, [GOOD_MODEL])
    reader = await owner.for_wallet("reader")  # anyone can read; no owner rights needed
    with trio.fail_after(20):
        reg = await read_registry_policy(reader, reg_addr)
    assert reg == RegistryPolicy(version=2, image_hashes=frozenset({dev_image_hash(__version__)}),
                                 models=frozenset({("m", GOOD_MODEL)}), min_deposit=TON, min_challenge_period=3600,
                                 owner=owner.wallet_address)

    policy = merge_policy(base_policy(), reg)
    assert policy.image_hashes == reg.image_hashes and policy.models == reg.models
    assert policy.model_hashes == frozenset()  # the registry replaces name-agnostic hashes too
    assert policy.tee_kinds == base_policy().tee_kinds  # everything else stays as configured

    good, good_peer = report(tmp_path, GOOD_MODEL)
    bad, bad_peer = report(tmp_path, OTHER_MODEL)
    now = int(time.time())
    assert check_report(good, good_peer, policy, now).ok
    v = check_report(bad, bad_peer, policy, now)
    assert not v.ok and v.check == "model_hash"

    # an image the registry does not list fails on the image, even for an allowed model
    no_image = merge_policy(base_policy(), RegistryPolicy(3, frozenset({b"\x01" * 32}), reg.models, 0, 0))
    v = check_report(good, good_peer, no_image, now)
    assert not v.ok and v.check == "image_hash"


async def test_empty_registry_allows_nothing(owner: LocalChain, tmp_path: Path) -> None:
    with trio.fail_after(20):
        reg_addr = await owner.deploy_registry(min_deposit=TON, min_challenge_period=3600)
        reg = await read_registry_policy(owner, reg_addr)
    assert reg.version == 0 and reg.image_hashes == frozenset() and reg.models == frozenset()
    assert reg.mrtds == frozenset() and reg.rtmr_sets == frozenset() and reg.tcb_statuses == {"UpToDate"}
    record, peer = report(tmp_path, GOOD_MODEL)
    v = check_report(record, peer, merge_policy(base_policy(), reg), int(time.time()))
    assert not v.ok and v.check in ("image_hash", "model_hash")


class FakeMesh:
    """Serves attestation records from a dict, the way the DHT would."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}

    async def get_record(self, key: str) -> bytes | None:
        return self.records.get(key)


async def test_refresher_applies_new_versions_and_verdicts_flip(
    owner: LocalChain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cocoon_node.payments.registry.refresh")
    reg_addr = await deploy(owner, [GOOD_MODEL, OTHER_MODEL])
    mesh = FakeMesh()
    gate = AttestationGate(mesh, base_policy())  # type: ignore[arg-type]
    record, peer = report(tmp_path, GOOD_MODEL)
    mesh.records[report_key(ID(peer))] = record

    refresher = RegistryPolicyRefresher(gate, owner, reg_addr, gate.policy, interval=0.2)
    # before the first read the gate fails closed
    assert gate.policy.image_hashes == frozenset() and gate.policy.model_hashes == frozenset()
    assert gate.policy.models == frozenset() and gate.policy.mrtds == frozenset()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresher.run)
            await refresher.applied.wait()
            assert refresher.current is not None and refresher.current.version == 3
            assert (await gate.check(peer)).ok
            assert (await gate.check(peer)).ok and gate.fetches == 1  # cached

            assert (await owner.registry_update(reg_addr, "remove_model", hash=h(GOOD_MODEL))).success
            await wait_until(lambda: refresher.current.version == 4, timeout=10)
            v = await gate.check(peer)  # cache was cleared with the policy change: re-checked at once
            assert not v.ok and v.check == "model_hash" and gate.fetches == 2

            assert (await owner.registry_update(reg_addr, "add_model", hash=h(GOOD_MODEL), name="m")).success
            await wait_until(lambda: refresher.current.version == 5, timeout=10)
            assert (await gate.check(peer)).ok

            # params-only change: new version, same lists -> policy (and verdict cache) untouched
            fetches = gate.fetches
            assert (await owner.registry_update(reg_addr, "set_params", min_deposit=2 * TON,
                                                min_challenge_period=7200)).success
            await wait_until(lambda: refresher.current.version == 6, timeout=10)
            assert refresher.current.min_deposit == 2 * TON
            rules = refresher.channel_rules()  # what both ends enforce when a channel opens
            assert rules is not None and (rules.min_deposit, rules.min_challenge_period) == (2 * TON, 7200)
            assert (await gate.check(peer)).ok and gate.fetches == fetches
            nursery.cancel_scope.cancel()
    versions = [r.getMessage() for r in caplog.records if "policy version" in r.getMessage()]
    assert any("none -> 3" in m for m in versions) and any("3 -> 4" in m for m in versions)
    assert refresher.status()["version"] == 6


class FlakyChain:
    """A chain whose registry reads fail, hang, or answer from a canned state."""

    def __init__(self) -> None:
        self.mode = "fail"
        self.state: dict[str, Any] = {}
        self.reads = 0

    async def registry_state(self, address: str) -> dict[str, Any]:
        self.reads += 1
        if self.mode == "fail":
            raise ChainError("lite server unreachable")
        if self.mode == "hang":
            await trio.sleep_forever()
        return dict(self.state)


def state(version: int, models: list[bytes]) -> dict[str, Any]:
    return {"version": version, "min_deposit": "1", "min_challenge_period": 60, "max_challenge_period": 600,
            "owner": "",
            "images": [dev_image_hash(__version__).hex()], "models": [{"hash": m.hex(), "name": "m"} for m in models]}


async def test_refresher_retries_errors_and_timeouts_and_ignores_stale_versions(tmp_path: Path) -> None:
    chain = FlakyChain()
    mesh = FakeMesh()
    gate = AttestationGate(mesh, base_policy())  # type: ignore[arg-type]
    record, peer = report(tmp_path, GOOD_MODEL)
    mesh.records[report_key(ID(peer))] = record
    refresher = RegistryPolicyRefresher(gate, chain, "addr", gate.policy, interval=0.01, read_timeout=0.1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresher.run)
            await wait_until(lambda: refresher.errors >= 3, timeout=5, interval=0.01)
            assert not (await gate.check(peer)).ok  # still fail-closed
            chain.mode = "hang"
            errors = refresher.errors
            await wait_until(lambda: refresher.errors >= errors + 2, timeout=5, interval=0.01)  # timeouts count
            chain.state, chain.mode = state(7, [GOOD_MODEL]), "ok"
            await refresher.applied.wait()
            assert (await gate.check(peer)).ok
            chain.state = state(6, [])  # a stale view must not roll the policy back
            reads = chain.reads
            await wait_until(lambda: chain.reads >= reads + 3, timeout=5, interval=0.01)
            assert refresher.current is not None and refresher.current.version == 7
            assert (await gate.check(peer)).ok
            chain.mode = "fail"  # errors after a good read keep the last policy
            await wait_until(lambda: chain.reads >= reads + 6, timeout=5, interval=0.01)
            assert (await gate.check(peer)).ok
            nursery.cancel_scope.cancel()


def registry_dict(hashes: list[bytes]) -> Any:
    if not hashes:
        return None
    m = HashMap(len(hashes[0]) * 8, value_serializer=lambda v, b: b.store_uint(v, 32))
    for x in hashes:
        m.set_int_key(h(x), 1)
    return m.serialize()


def models_dict(models: dict[bytes, str]) -> Any:
    """The registry's ``models`` map: weight hash -> ModelEntry (addedIn:uint32 ^name)."""
    m = HashMap(256, value_serializer=lambda v, b: b.store_uint(1, 32).store_ref(
        begin_cell().store_bytes(v.encode()).end_cell()))
    for x, name in models.items():
        m.set_int_key(h(x), name)
    return m.serialize()


class FakeLiteClient:
    """Answers the registry's get-methods like pytoniq's LiteBalancer.run_get_method."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.version = 4

    async def run_get_method(self, address: Address, method: str, stack: list[Any]) -> list[Any]:
        self.calls.append((address.to_str(), method))
        owner = begin_cell().store_address(Address(OWNER_ADDR)).end_cell().begin_parse()
        return {
            "get_params": [self.version, 5 * TON, 600, owner, 86_400],
            "get_images": [registry_dict([dev_image_hash(__version__)])],
            "get_models": [models_dict({GOOD_MODEL: "m", OTHER_MODEL: "modèle-ß"})],
            "get_measurements": [registry_dict([MRTD]), registry_dict([RTMR_SET]), -1, 0b11, 600],
            "get_version": [self.version],
        }[method]


async def test_ton_chain_reads_the_registry_get_methods() -> None:
    lite = FakeLiteClient()
    chain = TonChain(lite, SimpleNamespace(address=Address(OWNER_ADDR)), None, network="testnet")
    with trio.fail_after(5):
        reg = await read_registry_policy(chain, OWNER_ADDR)
    assert reg == RegistryPolicy(version=4, image_hashes=frozenset({dev_image_hash(__version__)}),
                                 models=frozenset({("m", GOOD_MODEL), ("modèle-ß", OTHER_MODEL)}), min_deposit=5 * TON,
                                 min_challenge_period=600, owner=OWNER_ADDR, max_challenge_period=86_400,
                                 mrtds=frozenset({MRTD}),
                                 rtmr_sets=frozenset({RTMR_SET}), require_tcb_check=True,
                                 tcb_statuses=frozenset({"UpToDate", "SWHardeningNeeded"}), max_report_age=600)
    assert [m for _, m in lite.calls] == ["get_params", "get_images", "get_models", "get_measurements",
                                          "get_version"]
    empty = registry_policy_from_stacks([0, 0, 0, begin_cell().store_address(Address(OWNER_ADDR)).end_cell(), 0],
                                        [None], [None], [None, None, 0, 1, 0])
    assert empty.image_hashes == frozenset() and empty.models == frozenset() and empty.mrtds == frozenset()
    with pytest.raises(ChainError):
        registry_policy_from_stacks([1, 2], [None], [None], [None, None, 0, 1, 0])
    with pytest.raises(ChainError, match="cannot read"):
        await read_registry_policy(object(), OWNER_ADDR)


def test_config_and_flag() -> None:
    from cocoon_node.cli import build_parser, overrides_from_args

    args = build_parser().parse_args(["run", "--registry-address", OWNER_ADDR])
    cfg = load_config(env={}, overrides=overrides_from_args(args))
    assert cfg.policy.registry_address == OWNER_ADDR and cfg.policy.registry_refresh == 60.0
    with pytest.raises(ConfigError, match=r"policy\.registry_address"):
        load_config(env={}, overrides={"policy": {"registry_address": OWNER_ADDR}, "payments": {"enabled": False}})
    with pytest.raises(ConfigError, match=r"policy\.registry_refresh"):
        load_config(env={}, overrides={"policy": {"registry_refresh": 0}})


@pytest.mark.slow
async def test_requester_process_follows_the_registry(tmp_path: Path) -> None:
    """Real processes on a shared EMULATED chain: the requester's policy is the registry's, live."""
    from cocoon_node.attestation import model_hash
    from cocoon_node.cluster import Cluster, worker_args

    from .conftest import FAST, api_url, post_chat, wait_until

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"registry weights" * 1000)
    good = model_hash(tmp_path, files=["w.bin"])
    cluster = Cluster(tmp_path / "nodes", env={"COCOON_POLICY_REGISTRY_REFRESH": "0.5"})
    async with cluster.running():
        assert cluster.chain_url is not None
        async with LocalChain.connect(cluster.chain_url, "registry-owner", balance=100 * TON) as owner:
            reg_addr = await deploy(owner, [good], name="synthetic-echo")
            req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                         "--api-port", "0", "--registry-address", reg_addr])
            await cluster.start_node("w", worker_args(req.addr, "synthetic", extra=[*FAST, "--model-path",
                                                                                     str(weights)]))
            url = api_url(cluster)
            body = {"model": "synthetic-echo", "messages": [{"role": "user", "content": "hi"}]}

            async def served() -> bool:
                return (await post_chat(url, body, timeout=30)).status_code == 200

            async def refused() -> bool:
                return (await post_chat(url, body, timeout=30)).status_code != 200

            await wait_until(served, timeout=60, interval=0.5)
            with trio.fail_after(20):
                assert (await owner.registry_update(reg_addr, "remove_model", hash=h(good))).success
            await wait_until(refused, timeout=30, interval=0.5)
            verdict = (await cluster.status("requester"))["attestation"][cluster.nodes["w"].peer_id]
            assert verdict["ok"] is False and verdict["check"] == "model_hash"
            with trio.fail_after(20):
                assert (await owner.registry_update(reg_addr, "add_model", hash=h(good), name="synthetic-echo")).success
            await wait_until(served, timeout=30, interval=0.5)
