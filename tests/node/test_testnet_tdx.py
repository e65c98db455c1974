"""Issue 21 on ``testnet`` settings with a TDX report: the real quote from tests/data re-signed under a
test PKI (tests/attestation/att_helpers.py) so it commits to our claims, with the test root pinned in
place of Intel's for the test only. An allowed image + model passes, the same report asked for another
model name fails, and an upstream worker pointing off the TD is refused (config, policy and registry)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from libp2p.peer.id import ID

from cocoon_node import __version__
from cocoon_node.attestation import TEE_TDX, Claims, Policy, check_report, sign_report
from cocoon_node.attestation import tdx as tdx_mod
from cocoon_node.attestation.collateral import encode_tdx_collateral, tdx_collateral_from_json
from cocoon_node.config import ConfigError, load_config
from cocoon_node.inference.factory import make_backend
from cocoon_node.inference.requester import Requester
from cocoon_node.mesh import Announcement
from cocoon_node.node.attest import AttestationGate, policy_from_config, report_key
from cocoon_node.node.worker import compute_model_hash
from cocoon_node.payments.chain.local import LocalChain
from cocoon_node.payments.registry import RegistryPolicyRefresher, merge_policy, read_registry_policy
from tests.attestation.att_helpers import (
    AT_VALID,
    fixed_ed25519,
    forge_quote,
    make_collateral,
    make_fake_pki,
    real_quote,
)

from .gate_helpers import FakeDht

NOW = int(AT_VALID.timestamp())  # inside the validity window of the (test) PCK chain
MODEL = hashlib.sha256(b"qwen3-8b weights").digest()
TD = real_quote().td_report
TESTNET = {"node": {"network": "testnet"}, "payments": {"chain": "ton", "ton_network": "testnet"}}


@pytest.fixture(autouse=True)
def pinned_pki(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Pin the test PKI's root in place of Intel's (test only): the quote's chain ends there."""
    pki = make_fake_pki()
    monkeypatch.setattr(tdx_mod, "INTEL_SGX_ROOT_CA", pki.root)
    return pki


def policy_on_testnet(**policy: Any) -> Policy:
    settings = {"allowed_image_hashes": [TD.image_hash().hex()], "allowed_mrtds": [TD.mrtd.hex()],
                "allowed_rtmrs": [":".join(r.hex() for r in TD.rtmrs)], "allowed_models": [f"qwen3-8b={MODEL.hex()}"],
                **policy}
    return policy_from_config(load_config(env={}, overrides={**TESTNET, "policy": settings}))


class TdxWorker:
    """A worker key whose reports carry a TDX quote (under the test PKI) committing to their claims."""

    def __init__(self, pki: Any, label: str = "tdx-worker") -> None:
        self.pki = pki
        self.key = fixed_ed25519(label)
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.claims = Claims.for_key(raw, model_name="qwen3-8b", model_hash=MODEL, node_version=__version__,
                                     issued_at=NOW - 60, expires_at=NOW + 3600, tee_kind=TEE_TDX)

    @property
    def peer_id(self) -> bytes:
        return self.claims.peer_id

    def report(self, *, collateral: bool = True, **claims: Any) -> bytes:
        """A report as a testnet worker ships it: with Intel-format TCB collateral (under the test PKI)."""
        c = msgspec.structs.replace(self.claims, **claims)  # Claims is a wire Struct
        quote = forge_quote(self.pki, report_data=c.report_data())
        shipped = b""
        if collateral:
            dcap = make_collateral(self.pki, quote)
            shipped = encode_tdx_collateral(tdx_collateral_from_json(dcap.to_json()))  # type: ignore[attr-defined]
        return sign_report(c, quote, self.key, collateral=shipped)

    def announcement(self, **changes: Any) -> Announcement:
        a = Announcement(peer_id=self.peer_id, addrs=(), model="qwen3-8b", model_hash=MODEL, backend="torch",
                         synthetic=False, price_prompt=1, price_completion=1, max_concurrent=4, load=0,
                         protocols=("/cocoon/inference/1.0.0",), tee_kind=TEE_TDX, seqno=1, issued_at=NOW,
                         expires_at=NOW + 15, payout="", v=1)
        return msgspec.structs.replace(a, **changes)


def gate_with(worker: TdxWorker, record: bytes, policy: Policy) -> AttestationGate:
    dht = FakeDht()
    dht.records[report_key(ID(worker.peer_id))] = record
    return AttestationGate(dht, policy, clock=lambda: float(NOW))  # type: ignore[arg-type]


async def test_allowed_image_and_model_pass_and_another_model_name_fails(pinned_pki: Any) -> None:
    worker = TdxWorker(pinned_pki)
    policy = policy_on_testnet()
    record = worker.report()
    v = check_report(record, worker.peer_id, policy, NOW)
    assert v.ok and v.tee_kind == TEE_TDX and v.mrtd == TD.mrtd.hex() and v.model_name == "qwen3-8b"
    gate = gate_with(worker, record, policy)
    with trio.fail_after(10):
        assert await gate.is_attested(worker.announcement()) is True
        # The same report, asked for another model name (the announcement offers "gpt-big"): refused.
        other = worker.announcement(model="gpt-big")
        assert await gate.is_attested(other) is False
        requester = Requester(lambda: [other], _no_stream, gate, max_price_prompt=10, max_price_completion=10)
        assert await requester.candidates("gpt-big") == []
    # A report that names "gpt-big" with these weights fails the policy itself: they are qwen3-8b's.
    renamed = check_report(worker.report(model_name="gpt-big"), worker.peer_id, policy, NOW)
    assert not renamed.ok and renamed.check == "model_hash"
    # An image, MRTD or RTMR set the network does not list is refused.
    for setting, value, check in (("allowed_image_hashes", ["00" * 32], "image_hash"),
                                  ("allowed_mrtds", ["00" * 48], "mrtd"), ("allowed_rtmrs", ["00" * 32], "rtmr")):
        v = check_report(record, worker.peer_id, policy_on_testnet(**{setting: value}), NOW)
        assert not v.ok and v.check == check, setting
    # The shipped collateral checks the TCB: a testnet verdict says so.
    v = check_report(record, worker.peer_id, policy, NOW)
    assert v.tcb_checked and v.tcb_status == "UpToDate"


def test_testnet_refuses_a_report_without_collateral_unless_the_policy_allows_it(pinned_pki: Any) -> None:
    worker = TdxWorker(pinned_pki)
    bare = worker.report(collateral=False)
    v = check_report(bare, worker.peer_id, policy_on_testnet(), NOW)
    assert not v.ok and v.check == "tcb" and "allow_missing_collateral" in v.reasons[0]
    relaxed = check_report(bare, worker.peer_id, policy_on_testnet(allow_missing_collateral=True), NOW)
    assert relaxed.ok and not relaxed.tcb_checked and "tcb not checked: no collateral supplied" in relaxed.reasons
    # ... but TCB requirements still apply: required but not checked (no collateral) is refused.
    v = check_report(bare, worker.peer_id, policy_on_testnet(allow_missing_collateral=True, require_tcb_check=True),
                     NOW)
    assert not v.ok and v.check == "tcb"
    # A local network is unchanged: no collateral required.
    local_models = {"policy": {"allowed_models": [f"qwen3-8b={MODEL.hex()}"]}}
    local = policy_from_config(load_config(env={}, overrides=local_models))
    assert not local.require_collateral and check_report(bare, worker.peer_id, local, NOW).ok


async def test_an_upstream_worker_pointing_off_the_td_is_refused(pinned_pki: Any) -> None:
    worker = TdxWorker(pinned_pki)
    policy = policy_on_testnet()
    off_td = worker.report(backend="openai-upstream", upstream="https://api.example.com:443")
    v = check_report(off_td, worker.peer_id, policy, NOW)
    assert not v.ok and v.check == "upstream" and "outside the TD" in v.reasons[0]
    gate = gate_with(worker, off_td, policy)
    with trio.fail_after(10):
        assert await gate.is_attested(worker.announcement(backend="openai-upstream")) is False
    # An upstream on the TD's own loopback (a model server the image starts) is fine.
    in_td = check_report(worker.report(backend="openai-upstream", upstream="http://127.0.0.1:8000"),
                         worker.peer_id, policy, NOW)
    assert in_td.ok and not in_td.prompts_leave_tee
    # An upstream backend that does not say where it sends prompts is refused.
    unnamed = check_report(worker.report(backend="openai-upstream"), worker.peer_id, policy, NOW)
    assert unnamed.check == "upstream"
    # Only an explicit policy accepts prompts leaving the TEE, and the verdict says so loudly.
    anywhere = check_report(off_td, worker.peer_id, policy_on_testnet(upstream="anywhere"), NOW)
    assert anywhere.ok and anywhere.prompts_leave_tee
    assert any("PROMPTS LEAVE THE TEE" in r for r in anywhere.reasons)
    # policy.upstream = none refuses even a loopback upstream
    loopback6 = worker.report(backend="openai-upstream", upstream="http://[::1]:9")
    assert check_report(loopback6, worker.peer_id, policy, NOW).ok
    assert check_report(loopback6, worker.peer_id, policy_on_testnet(upstream="none"), NOW).check == "upstream"


def test_testnet_worker_config_refuses_an_upstream_off_the_td() -> None:
    """The worker side: a testnet/mainnet config forwarding prompts off the TD no longer loads silently."""
    for network in ("testnet", "mainnet"):
        worker = {"enabled": True, "tee": "tdx", "backend": "openai-upstream",
                  "upstream_url": "https://api.example.com/v1"}
        base = {"node": {"network": network}, "payments": {"chain": "ton", "ton_network": network}}
        with pytest.raises(ConfigError, match=r"worker\.upstream_url: .*outside the TD"):
            load_config(env={}, overrides={**base, "worker": worker})
        load_config(env={}, overrides={**base, "worker": {**worker, "upstream_url": "http://127.0.0.1:8000/v1"}})
        # explicitly allowed: loads (its report says where prompts go; requesters refuse it by default)
        load_config(env={}, overrides={**base, "worker": {**worker, "allow_upstream_outside_td": True}})


def test_an_upstream_model_hash_names_where_prompts_go(tmp_path: Any) -> None:
    """Two workers of one upstream model behind different hosts no longer share one "model hash"."""
    a = make_backend("openai-upstream", base_url="http://127.0.0.1:8000/v1", model="m")
    b = make_backend("openai-upstream", base_url="https://evil.example:443/v1", model="m")
    assert compute_model_hash(a, tmp_path) != compute_model_hash(b, tmp_path)


async def _no_stream(_: Announcement) -> Any:
    raise AssertionError("no stream may be opened")


@pytest.fixture
async def owner() -> AsyncIterator[LocalChain]:
    with trio.fail_after(60):
        async with LocalChain.start("owner", balance=100 * 10**9, now=NOW) as chain:
            yield chain


async def test_the_registry_carries_measurements_names_and_tcb_rules(owner: LocalChain, pinned_pki: Any) -> None:
    """A real network approves its image through the registry: image, MRTD, RTMR set, model name -> hash."""
    from cocoon_node.attestation import rtmr_set_digest

    worker = TdxWorker(pinned_pki)
    record = worker.report()
    with trio.fail_after(30):
        reg = await owner.deploy_registry(min_deposit=10**9, min_challenge_period=3600)
        for action, args in (("add_image", {"hash": int.from_bytes(TD.image_hash(), "big")}),
                             ("add_mrtd", {"mrtd": TD.mrtd}),
                             ("add_rtmr_set", {"hash": int.from_bytes(rtmr_set_digest(TD.rtmrs), "big")}),
                             ("add_model", {"hash": int.from_bytes(MODEL, "big"), "name": "qwen3-8b"}),
                             ("set_tcb_rule", {"require_tcb_check": False,
                                               "tcb_statuses": ["UpToDate", "SWHardeningNeeded"],
                                               "max_report_age": 600})):
            assert (await owner.registry_update(reg, action, **args)).success, action
        state = await read_registry_policy(owner, reg)
    assert state.mrtds == {TD.mrtd} and state.rtmr_sets == {rtmr_set_digest(TD.rtmrs)}
    assert state.models == {("qwen3-8b", MODEL)} and state.max_report_age == 600
    # A testnet requester with nothing configured but the registry approves nobody before it reads it ...
    base = policy_from_config(load_config(env={}, overrides=TESTNET))
    gate = gate_with(worker, record, base)
    refresher = RegistryPolicyRefresher(gate, owner, reg, base)
    assert not check_report(record, worker.peer_id, gate.policy, NOW).ok
    # ... and passes the worker once it has.
    with trio.fail_after(30):
        assert await refresher.refresh()
        assert await gate.is_attested(worker.announcement()) is True
        assert await gate.is_attested(worker.announcement(model="gpt-big")) is False
    assert gate.policy.max_report_age_s == 600 and gate.policy.allowed_tcb_statuses == {"UpToDate",
                                                                                          "SWHardeningNeeded"}
    merged = merge_policy(base, state)
    off_td = worker.report(backend="openai-upstream", upstream="https://api.example.com:443")
    assert check_report(off_td, worker.peer_id, merged, NOW).check == "upstream"
    # The owner removes the MRTD: the same report fails on it.
    with trio.fail_after(30):
        assert (await owner.registry_update(reg, "remove_mrtd", mrtd=TD.mrtd)).success
        assert await refresher.refresh()
    assert check_report(record, worker.peer_id, gate.policy, NOW).check == "mrtd"



class _QuotingTsm:
    """configfs-tsm of a TD under the test PKI: a quote over whatever report data it is given."""

    def __init__(self, pki: Any) -> None:
        self.pki = pki

    def get_quote(self, report_data: bytes) -> bytes:
        return forge_quote(self.pki, report_data=report_data)


class _Mesh:
    def __init__(self, peer: ID, dht: FakeDht) -> None:
        self.peer_id, self.dht = peer, dht

    async def put_record(self, key: str, value: bytes) -> None:
        self.dht.records[key] = value


async def test_worker_fetches_ships_and_the_testnet_gate_checks_the_collateral(pinned_pki: Any, tmp_path: Any) -> None:
    """End to end: a TDX worker fetches collateral from a PCCS on 127.0.0.1, caches it, ships it in the report it
    puts into the DHT; a testnet requester's gate verifies it (tcb_checked) and uses the worker."""
    from datetime import UTC, datetime

    from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pKey
    from libp2p.crypto.keys import KeyPair

    from cocoon_node.attestation.pcs import TdxCollateralCache
    from cocoon_node.node.attest import ReportPublisher
    from tests.attestation.fake_pccs import fake_pccs

    worker = TdxWorker(pinned_pki)
    lp_key = Libp2pKey.from_bytes(worker.key.private_bytes_raw())
    kp = KeyPair(lp_key, lp_key.get_public_key())
    sample = forge_quote(pinned_pki)
    served = tdx_collateral_from_json(make_collateral(pinned_pki, sample).to_json())  # type: ignore[attr-defined]
    dht = FakeDht()
    with trio.fail_after(20):
        async with fake_pccs(served) as pccs:
            # the worker checks what it fetched against its own quote (the pinned root: the test PKI's here)
            cache = TdxCollateralCache(tmp_path / "collateral", pccs.url,
                                       clock=lambda: datetime.fromtimestamp(NOW, UTC))
            pub = ReportPublisher(_Mesh(ID(worker.peer_id), dht), kp, tee=TEE_TDX, model_name="qwen3-8b",  # type: ignore[arg-type]
                                  model_hash=MODEL, data_dir=tmp_path, backend="torch", tsm=_QuotingTsm(pinned_pki),  # type: ignore[arg-type]
                                  collateral=cache.for_quote, clock=lambda: float(NOW - 30))
            pub.early_republish = ()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pub.run)
                await pub.published.wait()
                nursery.cancel_scope.cancel()
        assert len(pccs.paths) == 4 and cache.fetches == 1
        record = dht.records[report_key(ID(worker.peer_id))]
        gate = AttestationGate(dht, policy_on_testnet(), clock=lambda: float(NOW))  # type: ignore[arg-type]
        assert await gate.is_attested(worker.announcement()) is True
    v = gate.verdict(worker.peer_id)
    assert v is not None and v.ok and v.tcb_checked and v.tcb_status == "UpToDate"
    assert check_report(record, worker.peer_id, policy_on_testnet(), NOW).tcb_checked
