"""Issue 3 in the mesh: DHT validator rules, attested-peer check, and a worker outside the policy never
receives a prompt (asserted on what that worker itself reports it received)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from cocoon_node.attestation import model_hash
from cocoon_node.cluster import Cluster, worker_args
from cocoon_node.mesh import RecordRejected
from cocoon_node.node.attest import AttestationNamespace, ReportPublisher, report_key
from cocoon_node.node.node import AttestedPeerMismatch, Node

from .conftest import FAST, api_url, post_chat, wait_until, worker_ids


def publisher(tmp_path: Path, key_pair, lifetime: int = 3600) -> ReportPublisher:
    mesh = SimpleNamespace(peer_id=ID.from_pubkey(key_pair.public_key))
    return ReportPublisher(mesh, key_pair, tee="dev-INSECURE", model_name="m", model_hash=b"\x07" * 32,
                           data_dir=tmp_path, lifetime=lifetime)  # type: ignore[arg-type]


def test_dht_namespace_accepts_own_report_rejects_others(tmp_path: Path) -> None:
    kp, other = create_new_key_pair(), create_new_key_pair()
    ns = AttestationNamespace()
    record = publisher(tmp_path, kp).make_report()
    ns.validate(report_key(ID.from_pubkey(kp.public_key)), record)
    with pytest.raises(RecordRejected, match="another peer"):
        ns.validate(report_key(ID.from_pubkey(other.public_key)), record)
    tampered = bytearray(record)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(RecordRejected):
        ns.validate(report_key(ID.from_pubkey(kp.public_key)), bytes(tampered))
    expired = publisher(tmp_path, kp, lifetime=10).make_report(now=int(time.time()) - 100)
    with pytest.raises(RecordRejected, match="expired"):
        ns.validate(report_key(ID.from_pubkey(kp.public_key)), expired)
    from_the_future = publisher(tmp_path, kp).make_report(now=int(time.time()) + 120)  # a fast clock
    with pytest.raises(RecordRejected, match="future"):
        ns.validate(report_key(ID.from_pubkey(kp.public_key)), from_the_future)
    newer = publisher(tmp_path, kp).make_report(now=int(time.time()) + 5)
    assert ns.select("k", [record, newer]) == 1 and ns.select("k", [newer, record]) == 0


async def test_stream_to_a_different_key_is_refused(tmp_path: Path) -> None:
    attested, impostor = create_new_key_pair(), create_new_key_pair()
    resets = []

    class FakeStream:
        muxed_conn = SimpleNamespace(peer_id=ID.from_pubkey(impostor.public_key))

        async def reset(self) -> None:
            resets.append(True)

    class FakeMesh:
        async def new_stream(self, *args, **kwargs):
            return FakeStream()

    node = Node.__new__(Node)
    node.mesh = FakeMesh()  # type: ignore[assignment]
    worker = SimpleNamespace(peer=ID.from_pubkey(attested.public_key), addrs=())
    with trio.fail_after(5), pytest.raises(AttestedPeerMismatch):
        await node._open_attested_stream(worker)  # type: ignore[arg-type]
    assert resets == [True]


@pytest.mark.slow
async def test_worker_outside_policy_never_gets_a_prompt(tmp_path: Path) -> None:
    good_weights, bad_weights = tmp_path / "good.bin", tmp_path / "bad.bin"
    good_weights.write_bytes(b"good weights" * 1000)
    bad_weights.write_bytes(b"other weights" * 1000)
    good_hash = model_hash(tmp_path, files=["good.bin"]).hex()
    cluster = Cluster(tmp_path / "nodes")
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0", "--allowed-model-hash", good_hash])
        names = {"good1": good_weights, "good2": good_weights, "bad": bad_weights}
        async with trio.open_nursery() as nursery:
            for name, weights in names.items():
                # The bad worker is the cheapest, so it would be chosen first if the policy let it through.
                price = ["--price-prompt", "1", "--price-completion", "1"] if name == "bad" else []
                extra = [*FAST, "--model-path", str(weights), *price]
                nursery.start_soon(cluster.start_node, name, worker_args(req.addr, "synthetic", extra=extra))
        ids = {cluster.nodes[n].peer_id for n in names}

        async def all_seen() -> bool:
            return ids <= await worker_ids(cluster)

        await wait_until(all_seen, timeout=30)
        assert (await cluster.status("bad"))["worker"]["model_hash"] != good_hash
        url = api_url(cluster)
        served_by = set()
        for i in range(6):
            resp = await post_chat(url, {"model": "synthetic-echo",
                                         "messages": [{"role": "user", "content": f"request {i}"}]})
            assert resp.status_code == 200, resp.text
            served_by.add(resp.headers["x-cocoon-worker"])
        assert served_by <= {cluster.nodes["good1"].peer_id, cluster.nodes["good2"].peer_id}
        bad = (await cluster.status("bad"))["worker"]
        assert bad["served"] == 0 and bad["rejected"] == 0 and bad["cancelled"] == 0 and bad["load"] == 0
        # The verdict is visible in status and in the API's model list.
        status = await cluster.status("requester")
        verdict = status["attestation"][cluster.nodes["bad"].peer_id]
        assert verdict["ok"] is False and verdict["check"] == "model_hash"
        assert status["attestation"][cluster.nodes["good1"].peer_id]["tee_kind"] == "dev-INSECURE"
        import httpx

        async with httpx.AsyncClient(timeout=10) as client:
            models = (await client.get(url + "/v1/models")).json()["data"]
        summary = {a["worker"]: a for a in models[0]["cocoon"]["attestation"]}
        assert summary[cluster.nodes["bad"].peer_id]["verified"] is False
        assert summary[cluster.nodes["good1"].peer_id]["verified"] is True
        assert summary[cluster.nodes["good1"].peer_id]["dev_insecure"] is True


async def test_report_is_stored_again_after_start(tmp_path: Path, autojump_clock: trio.abc.Clock,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The first put reaches only the peers a joining node knows; early re-puts reach the key's neighbourhood."""
    kp = create_new_key_pair()
    puts: list[float] = []

    async def inline(fn, *args):  # type: ignore[no-untyped-def]
        return fn(*args)  # a worker thread would let the mock clock jump past the schedule meanwhile

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)

    async def put_record(key: str, value: bytes) -> None:
        puts.append(trio.current_time())

    mesh = SimpleNamespace(peer_id=ID.from_pubkey(kp.public_key), put_record=put_record)
    pub = ReportPublisher(mesh, kp, tee="dev-INSECURE", model_name="m", model_hash=b"\x07" * 32,  # type: ignore[arg-type]
                          data_dir=tmp_path, lifetime=3600)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pub.run)
        await trio.sleep(1800 + 10)
        nursery.cancel_scope.cancel()
    start = puts[0]
    assert [round(t - start) for t in puts] == [0, 15, 75, 1800]
