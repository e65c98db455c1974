"""netsim's misnamed worker (NETSIM-ONLY): it announces a popular model name while its attestation report
names another. Run in process against a real requester node over loopback libp2p: it never gets a
stream, let alone a prompt, though it is the cheapest; and the report's invariant can FAIL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from cocoon_node.api import NodeHttp
from cocoon_node.config import load_config
from cocoon_node.inference.chat import parse_chat_request
from cocoon_node.inference.requester import StreamStart
from cocoon_node.node import Node
from netsim.misnamed import KIND, MisnamedNode, config_for
from netsim.report import adversary_lines, invariants
from netsim.runner import SimData, SimNode
from netsim.scenario import parse_scenario
from netsim.workload import RequestResult
from tests.waiting import wait_until


def node_config(tmp_path: Path, name: str, *, bootstrap: tuple[str, ...] = (), **sections: Any) -> Any:
    overrides: dict[str, Any] = {
        "node": {"data_dir": str(tmp_path / name), "bootstrap": bootstrap, "local_cluster": True,
                 "admin_port": 0},
        "payments": {"enabled": False},
        **sections,
    }
    return load_config(env={}, overrides=overrides)


def worker(model: str, price: int) -> dict[str, Any]:
    return {"enabled": True, "backend": "synthetic", "model": model, "price_prompt": price,
            "price_completion": price, "announce_interval": 0.5, "announce_ttl": 5}


async def test_a_misnamed_worker_never_receives_a_prompt(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        honest = Node(node_config(tmp_path, "honest", worker=worker("synthetic-echo", 1000)), http=NodeHttp())
        info = await nursery.start(honest.run)
        boot = (info.addrs[0],)
        liar = MisnamedNode(node_config(tmp_path, "liar", bootstrap=boot, worker=worker("tiny-model", 1)),
                            offered="synthetic-echo")
        await nursery.start(liar.run)
        assert liar.worker is not None and liar.worker.announcement is not None
        tiny_hash = liar.worker.announcement.model_hash.hex()
        assert liar.worker.announcement.model == "synthetic-echo"
        assert honest.worker is not None and honest.worker.announcement is not None
        good_hash = honest.worker.announcement.model_hash.hex()
        # The requester allows the liar's weights -- for "tiny-model", the name its report gives them.
        req = Node(node_config(tmp_path, "req", bootstrap=boot, requester={"enabled": True, "api_port": 0},
                               policy={"allow_dev_tee": True, "allowed_models": [f"synthetic-echo={good_hash}",
                                                                                 f"tiny-model={tiny_hash}"]}),
                   http=NodeHttp())
        await nursery.start(req.run)
        assert req.gate is not None and req.requester is not None

        def decided() -> bool:
            """The requester lists both under "synthetic-echo" and its gate has checked both."""
            (offer,) = [m for m in req.models() if m["id"] == "synthetic-echo"] or [None]
            entries = {e["worker"]: e for e in (offer["cocoon"]["attestation"] if offer else [])}
            lie = entries.get(liar.peer_id.to_base58())
            good = entries.get(honest.peer_id.to_base58(), {})
            return bool(lie and lie["check"] == "binding" and good.get("verified"))

        await wait_until(decided, timeout=60)
        chat = parse_chat_request({"model": "synthetic-echo", "messages": [{"role": "user", "content": "secret"}]})
        served_by = set()
        with trio.fail_after(60):
            for _ in range(3):
                async with req.requester.stream(chat) as events:
                    async for ev in events:
                        if isinstance(ev, StreamStart):
                            served_by.add(ev.worker.peer_id)
        assert served_by == {honest.peer_id.to_bytes()}
        assert liar.streams_opened == 0 and liar.worker.server is not None
        assert len(liar.worker.server.request_log) == 0 and liar.worker.server.stats.rejected == 0
        lie = next(e for m in req.models() for e in m["cocoon"]["attestation"]
                   if e["worker"] == liar.peer_id.to_base58())
        assert lie["verified"] is False and lie["check"] == "binding"
        assert any("report attests model 'tiny-model'" in r for r in lie["reasons"])
        status = await liar.status()
        assert status["adversary"] == {"kind": KIND, "offered_model": "synthetic-echo", "attested_model": "tiny-model",
                                       "streams_opened": 0, "prompts_received": 0}
        nursery.cancel_scope.cancel()


def test_the_misnamed_worker_refuses_a_real_network(tmp_path: Path) -> None:
    cfg = tmp_path / "testnet.toml"
    cfg.write_text('[node]\nnetwork = "testnet"\n[worker]\ntee = "tdx"\n[payments]\nchain = "ton"\n')
    with pytest.raises(SystemExit, match="NETSIM-ONLY"):
        config_for(["run", "--config", str(cfg), "--data-dir", str(tmp_path), "--worker", "--backend", "synthetic"],
                   "tiny-model")
    config, offered = config_for(["run", "--data-dir", str(tmp_path), "--worker", "--model", "popular"], "tiny")
    assert (config.worker.model, offered, config.node.network) == ("tiny", "popular", "local")


def _world(adversary: dict[str, Any], gate: dict[str, Any], answered_by_liar: bool = False) -> SimData:
    s = parse_scenario({"name": "m", "duration": 5, "cluster": {"workers": [
        {"name": "worker"}, {"name": "misnamed", "adversary": "misnamed"}]}})
    data = SimData(s, 1)
    for name, role, peer, adv in (("worker1", "worker", "W", None), ("requester1", "requester", "R", None),
                                  ("misnamed1", "worker", "M", KIND)):
        data.nodes[name] = SimNode(name, role, None, adv is not None, peer_id=peer, state="up", adversary=adv)
    data.final_status["misnamed1"] = {"adversary": adversary, "worker": {"served": 0, "rejected": 0}}
    data.last_status["requester1"] = {"workers": [{"peer_id": "M", "gate": gate}]}
    data.results.append(RequestResult(index=0, at=0.0, requester="requester1", stream=False, max_tokens=8, ok=True,
                                      cause="ok", worker="M" if answered_by_liar else "W"))
    return data


@pytest.mark.parametrize("adversary, gate, answered, verdict", [
    ({"streams_opened": 0, "prompts_received": 0}, {"verified": False, "check": "binding",
                                                    "attested_model": "tiny-model"}, False, "PASS"),
    ({"streams_opened": 1, "prompts_received": 0}, {"verified": False, "check": "binding",
                                                    "attested_model": "tiny-model"}, False, "FAIL"),
    ({"streams_opened": 0, "prompts_received": 0}, {"verified": True, "check": None,
                                                    "attested_model": "tiny-model"}, False, "FAIL"),
    ({"streams_opened": 0, "prompts_received": 0}, {"verified": False, "check": "binding",
                                                    "attested_model": "tiny-model"}, True, "FAIL"),
    ({}, {}, False, "FAIL"),
])
def test_the_invariant_passes_only_when_it_was_never_prompted(adversary: dict[str, Any], gate: dict[str, Any],
                                                             answered: bool, verdict: str) -> None:
    adversary = {**adversary, "offered_model": "synthetic-echo", "attested_model": "tiny-model"} if adversary else {}
    found = invariants(_world(adversary, gate, answered))
    out = {i["name"]: i for i in found}
    assert out["misnamed_never_prompted[misnamed1]"]["verdict"] == verdict, out["misnamed_never_prompted[misnamed1]"]
    (line,) = [x for x in adversary_lines({"invariants": found}) if x["adversary"] == "misnamed (misnamed1)"]
    assert line["verdict"] == ("detected and contained" if verdict == "PASS" else "NOT contained")
