"""Issue 15: workers announce what serves the model (accelerator kind, count, memory; context length), detected
where the backend can tell and marked "declared" otherwise; requesters show it in /v1/models and filter by it."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import msgspec
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from msgspec.structs import replace  # announcements are msgspec Structs

from cocoon_node.cluster import Cluster, worker_args
from cocoon_node.config import WorkerSection
from cocoon_node.mesh import Announcement
from cocoon_node.mesh.announce import Hardware
from cocoon_node.node.hardware import (
    describe_hardware,
    hardware_dict,
    hardware_matches,
    hardware_summary,
    upstream_context_length,
)
from cocoon_node.wire import SchemaError, canonical_dumps, canonical_loads

from .conftest import api_url, wait_until


def backend(kind: str, context: int = 0) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, context_length=context, synthetic=kind == "synthetic")


async def test_detected_facts_win_and_declared_ones_fill_the_gaps() -> None:
    declared = WorkerSection(accelerator="NVIDIA H200", accelerator_count=8, accelerator_memory_mib=143_771,
                             context_length=32_768)
    torch_hw = await describe_hardware(backend("torch", 8192), declared)  # type: ignore[arg-type]
    assert (torch_hw.accelerator, torch_hw.hardware_source) == ("cpu", "detected")
    assert (torch_hw.context_length, torch_hw.context_source) == (8192, "detected")
    synthetic_hw = await describe_hardware(backend("synthetic"), declared)  # type: ignore[arg-type]
    assert (synthetic_hw.accelerator, synthetic_hw.accelerator_count, synthetic_hw.accelerator_memory_mib,
            synthetic_hw.hardware_source) == ("NVIDIA H200", 8, 143_771, "declared")
    assert (synthetic_hw.context_length, synthetic_hw.context_source) == (32_768, "declared")
    unknown = await describe_hardware(backend("synthetic"), WorkerSection())  # type: ignore[arg-type]
    assert (unknown.hardware_source, unknown.context_source, unknown.context_length) == ("unknown", "unknown", 0)


async def test_the_upstream_servers_model_info_gives_the_context_length() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json={"data": [{"id": "other", "max_model_len": 4096},
                                                  {"id": "qwen", "max_model_len": 131072}]})

    transport = httpx.MockTransport(handler)
    assert await upstream_context_length("http://upstream/v1", "qwen", transport=transport) == 131072
    assert await upstream_context_length("http://upstream/v1", "missing", transport=transport) == 0
    broken = httpx.MockTransport(lambda r: httpx.Response(500))
    assert await upstream_context_length("http://upstream/v1", "qwen", transport=broken) == 0


def test_hardware_rides_only_in_version_2_and_round_trips() -> None:
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    now = int(time.time())
    base = Announcement(peer_id=peer.to_bytes(), addrs=(), model="m", model_hash=b"\x01" * 32, backend="synthetic",
                        synthetic=True, price_prompt=1, price_completion=1, max_concurrent=1, load=0, protocols=(),
                        tee_kind="dev-INSECURE", seqno=1, issued_at=now, expires_at=now + 10, payout="", v=1)
    hw = Hardware("NVIDIA H200", 8, 143_771, "detected", 32_768, "declared")
    v2 = replace(base, hardware=hw, v=2)
    assert Announcement.from_wire(canonical_loads(canonical_dumps(v2.to_wire()), max_bytes=4096)) == v2
    assert "hardware" not in base.to_wire()
    with pytest.raises(SchemaError):
        Announcement.from_wire({**base.to_wire(), "hardware": hw.to_dict()})  # v1 carrying hardware
    with pytest.raises(ValueError, match="must not carry hardware"):
        replace(base, hardware=hw)  # nor can one be built in code
    with pytest.raises(SchemaError):
        Announcement.from_wire({**v2.to_wire(), "hardware": {**hw.to_dict(), "hardware_source": "guessed"}})
    assert hardware_matches(hw, {"min_context_length": "32768", "accelerator": "h200"})
    assert not hardware_matches(hw, {"min_context_length": "65536"})
    assert not hardware_matches(None, {"accelerator": "h200"})
    # a v1 announcement carries no hardware (UNSET, never nil): nothing to show, match or summarise
    assert base.hardware is msgspec.UNSET and not hardware_matches(base.hardware, {"accelerator": "h200"})
    assert hardware_dict(base) is None and hardware_dict(v2) == hw.to_dict()
    assert hardware_summary([base])["context_length"] is None
    assert hardware_summary([base, v2])["context_length"] == [32_768, 32_768]


async def test_v1_models_shows_and_filters_by_the_announced_hardware(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, payments=False)
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0"])
        extra = ["--announce-interval", "1", "--announce-ttl", "4", "--accelerator", "NVIDIA H200",
                 "--accelerator-count", "8", "--accelerator-memory-mib", "143771", "--context-length", "32768"]
        await cluster.start_node("w", worker_args(req.addr, "synthetic", extra=extra))
        url = api_url(cluster) + "/v1/models"

        async def listed(query: str = "") -> list[dict] | None:
            async with httpx.AsyncClient(timeout=10) as client:
                data = (await client.get(url + query)).json()["data"]
            return data or None

        models = await wait_until(listed, timeout=30)
        info = models[0]["cocoon"]
        assert info["context_length"] == [32768, 32768] and info["accelerators"] == ["NVIDIA H200 x8"]
        assert info["hardware_declared_only"] is True
        hw = info["attestation"][0]["hardware"]
        assert hw == {"accelerator": "NVIDIA H200", "accelerator_count": 8, "accelerator_memory_mib": 143771,
                      "hardware_source": "declared", "context_length": 32768, "context_source": "declared"}
        assert await listed("?accelerator=h200&min_context_length=32768")
        assert await listed("?min_context_length=65536") is None
        async with httpx.AsyncClient(timeout=10) as client:
            bad = await client.get(url + "?min_context_length=lots")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_filter"
