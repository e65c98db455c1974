"""netsim link shaping: the scenario's [links] section, the link table the runner writes, the netem probe and
the NETSIM-ONLY node setting that points a node at the table."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from cocoon_node.cli import build_parser, overrides_from_args
from cocoon_node.config import ConfigError, load_config
from cocoon_node.mesh.shaping import LinkParams, LinkTable
from netsim.links import LinkPlan, probe_netem, shaping_note
from netsim.scenario import LinkPair, Links, ScenarioError, parse_scenario

BASE: dict[str, Any] = {"name": "x", "duration": 5, "shaping": "auto",
                        "cluster": {"requesters": 2, "workers": [{"name": "worker", "count": 3}]}}


def scenario(**extra: Any) -> Any:
    return parse_scenario({**BASE, **extra})


def test_links_section_parses_default_and_pairs() -> None:
    s = scenario(links={"latency_ms": 20, "jitter_ms": 5, "loss": 0.01, "bandwidth_kbps": 800,
                        "pairs": [{"a": ["worker1", "worker2"], "b": ["requesters"], "latency_ms": 80},
                                  {"a": ["*"], "b": ["worker"], "loss": 0}]})
    assert s.links == Links(latency_ms=20.0, jitter_ms=5.0, loss=0.01, bandwidth_kbps=800.0, pairs=(
        LinkPair(a=("worker1", "worker2"), b=("requesters",), latency_ms=80),
        LinkPair(a=("*",), b=("worker",), loss=0)))


@pytest.mark.parametrize(("links", "message"), [
    ({"latency": 20}, "unknown keys"),
    ({"pairs": [{"a": ["worker1"], "b": ["requester1"], "delay_ms": 3}]}, "unknown keys"),
    ({"pairs": [{"a": ["worker9"], "b": ["requester1"], "latency_ms": 3}]}, "no node or group named"),
    ({"pairs": [{"a": [], "b": ["requester1"], "latency_ms": 3}]}, "non-empty list"),
    ({"pairs": [{"a": ["worker1"], "b": ["requester1"]}]}, "sets nothing"),
    ({"loss": 1.0}, "below 1"),
    ({"latency_ms": -5}, "non-negative"),
    ({"jitter_ms": "lots"}, "non-negative"),
    ({"pairs": {"a": ["worker1"]}}, "links.pairs"),
])
def test_bad_links_are_rejected(links: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        scenario(links=links)


def test_shaped_links_and_partitions_need_shaping_auto() -> None:
    with pytest.raises(ScenarioError, match='shaping = "auto"'):
        scenario(shaping="none", links={"latency_ms": 5})
    partition = [{"at": 1.0, "action": "partition", "targets": ["worker1"], "duration": 2.0}]
    with pytest.raises(ScenarioError, match='shaping = "auto"'):
        scenario(shaping="none", faults=partition)
    with pytest.raises(ScenarioError, match="shaping: one of"):
        scenario(shaping="netns")
    assert scenario(faults=partition).faults[0].action == "partition"
    stop = [{"at": 1.0, "action": "stop", "targets": ["worker1"], "duration": 2.0}]
    assert scenario(shaping="none", faults=stop).shaping == "none"


def test_link_plan_expands_selectors_and_partitions(tmp_path: Path) -> None:
    links = Links(latency_ms=20, bandwidth_kbps=800, pairs=(
        LinkPair(a=("worker",), b=("requesters",), latency_ms=80),
        LinkPair(a=("worker2",), b=("*",), loss=0.1)))
    plan = LinkPlan(tmp_path / "links.json", links, seed=3)
    plan.register("worker1", "PEER-W1", ["/ip4/127.0.0.1/tcp/4001/p2p/PEER-W1"], {"worker"})
    plan.register("worker2", "PEER-W2", ["/ip4/127.0.0.1/tcp/4002/p2p/PEER-W2"], {"worker"})
    plan.register("requester1", "PEER-R1", ["/ip4/127.0.0.1/tcp/4003/p2p/PEER-R1"], {"requesters"})
    plan.write()
    table = LinkTable.from_file(plan.path)
    assert table.link("worker1", "worker2") == LinkParams(latency_ms=20, loss=0.1, bandwidth_bytes_s=100_000)
    assert table.link("worker1", "requester1") == LinkParams(latency_ms=80, bandwidth_bytes_s=100_000)
    assert table.name_of(peer_id="PEER-R1") == "requester1" and table.name_of(port=4002) == "worker2"

    token = plan.partition({"worker2", "requester1"}, "test cut")
    plan.register("churn1", "PEER-C1", ["/ip4/127.0.0.1/tcp/4004/p2p/PEER-C1"], {"worker"})  # joins mid-cut
    plan.write()
    table = LinkTable.from_file(plan.path)
    assert table.link("worker1", "worker2").blocked and table.link("churn1", "requester1").blocked
    assert not table.link("worker2", "requester1").blocked and not table.link("worker1", "churn1").blocked
    plan.heal(token)
    plan.write()
    table = LinkTable.from_file(plan.path)
    assert not table.link("worker1", "worker2").blocked and not table.link("churn1", "requester1").blocked
    # A restart on a new port replaces the old one.
    plan.register("worker1", "PEER-W1", ["/ip4/127.0.0.1/tcp/5001/p2p/PEER-W1"], {"worker"})
    plan.write()
    assert LinkTable.from_file(plan.path).name_of(port=5001) == "worker1"


async def test_netem_probe_answers_and_cleans_up() -> None:
    problem = await probe_netem()
    assert problem is None or (isinstance(problem, str) and problem)
    note = shaping_note(problem)
    assert note.startswith("transport (NETSIM-ONLY") and "not implemented" in note
    if problem is not None:
        assert "tc netem unavailable: " + problem in note
    ip = shutil.which("ip")
    if ip is not None:  # the scratch namespace is gone again
        listed = await trio.run_process([ip, "netns", "list"], capture_stdout=True, check=False)
        assert b"cocoon-netsim-probe" not in listed.stdout


def run_config(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> Any:
    args = build_parser().parse_args(["run", "--data-dir", str(tmp_path / "node"), *flags])
    return load_config(None, env=env or {}, overrides=overrides_from_args(args))


def test_link_table_setting_flows_from_flag_and_environment(tmp_path: Path) -> None:
    table = tmp_path / "links.json"
    table.write_text("{}")
    assert run_config(tmp_path).netsim_link_table_path is None
    assert run_config(tmp_path, "--netsim-link-table", str(table)).netsim_link_table_path == table
    from_env = run_config(tmp_path, env={"COCOON_NODE_NETSIM_LINK_TABLE": str(table)})
    assert from_env.netsim_link_table_path == table


@pytest.mark.parametrize(("flags", "problem"), [
    (["--network", "testnet", "--tee", "tdx"], "refused outside the local network"),
    (["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"], "TCP-only"),
])
def test_link_table_setting_is_netsim_only(tmp_path: Path, flags: list[str], problem: str) -> None:
    table = tmp_path / "links.json"
    table.write_text("{}")
    with pytest.raises(ConfigError) as err:
        run_config(tmp_path, "--netsim-link-table", str(table), *flags)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_missing_link_table_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        run_config(tmp_path, "--netsim-link-table", str(tmp_path / "absent.json"))
    assert any("node.netsim_link_table" in p for p in err.value.problems)
