"""netsim link shaping: the scenario's [links] section, the link table the runner writes, the netem probe and
netsim's NETSIM-ONLY node entry point that points a node at the table (production nodes have no such setting)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from cocoon_node.cli import build_parser, overrides_from_args
from cocoon_node.config import ConfigError, load_config
from netsim.links import LinkPlan, probe_netem, shaping_note
from netsim.node import link_shaping, shaping_problems
from netsim.scenario import LinkPair, Links, ScenarioError, parse_scenario
from netsim.shaping import LinkParams, LinkTable

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


def test_production_nodes_have_no_link_table_setting(tmp_path: Path) -> None:
    """Shaping reaches a node only through netsim's entry points; cocoon-node knows no flag or key for it."""
    with pytest.raises(SystemExit):
        run_config(tmp_path, "--netsim-link-table", str(tmp_path / "links.json"))
    with pytest.raises(ConfigError) as err:
        run_config(tmp_path, env={"COCOON_NODE_NETSIM_LINK_TABLE": str(tmp_path / "links.json")})
    assert any("unknown setting node.netsim_link_table" in p for p in err.value.problems), err.value.problems


def test_link_table_shapes_a_local_tcp_node(tmp_path: Path) -> None:
    table = tmp_path / "links.json"
    table.write_text("{}")
    assert shaping_problems(run_config(tmp_path), table) == []
    assert link_shaping(run_config(tmp_path), table, "netsim.node") is not None
    assert link_shaping(run_config(tmp_path), None, "netsim.node") is None


@pytest.mark.parametrize(("node", "problem"), [
    ({"network": "testnet"}, "refused outside the local network"),
    ({"listen": ("/ip4/127.0.0.1/udp/0/quic-v1",)}, "TCP-only"),
])
def test_link_table_is_netsim_only(tmp_path: Path, node: dict[str, Any], problem: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "links.json"
    table.write_text("{}")
    config = run_config(tmp_path)
    config = replace(config, node=replace(config.node, **node))  # only the node section matters here
    assert any(problem in p for p in shaping_problems(config, table))
    with pytest.raises(SystemExit) as exit_:
        link_shaping(config, table, "netsim.node")
    assert exit_.value.code == 2 and problem in capsys.readouterr().err


def test_missing_link_table_is_refused(tmp_path: Path) -> None:
    problems = shaping_problems(run_config(tmp_path), tmp_path / "absent.json")
    assert problems == [f"--link-table: {tmp_path / 'absent.json'} is not a file"]


@pytest.mark.parametrize(("module", "argv"), [
    ("netsim.node", []),
    ("netsim.rogue", ["--kind", "overclaim"]),
    ("netsim.lowball", ["--trigger", "never"]),
    ("netsim.misnamed", []),
])
def test_every_netsim_node_entry_point_takes_the_link_table(tmp_path: Path, module: str, argv: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Rogue nodes are shaped like honest ones: each entry point reads --link-table and applies the refusals
    (here: the table is missing) before it builds its node."""
    import importlib

    missing = tmp_path / "absent.json"
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main([*argv, "--link-table", str(missing), "run", "--worker",
                                              "--data-dir", str(tmp_path / "node")])
    assert exit_.value.code == 2
    assert f"{module}: --link-table: {missing} is not a file" in capsys.readouterr().err
    assert not (tmp_path / "node").exists()  # refused before the node (and its identity) was made


def test_host_pool_takes_the_link_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from netsim.pool import main

    missing = tmp_path / "absent.json"
    with pytest.raises(SystemExit) as exit_:
        main(["--base-dir", str(tmp_path), "--prefix", "w", "--count", "1", "--link-table", str(missing), "--",
              "--worker", "--no-payments"])
    assert exit_.value.code == 2
    assert f"netsim.pool: --link-table: {missing} is not a file" in capsys.readouterr().err


def test_a_shaped_run_starts_every_node_through_a_netsim_entry_point(tmp_path: Path) -> None:
    """Honest nodes start as ``netsim.node``, rogue ones as themselves, each with --link-table; unshaped runs
    start plain ``cocoon-node`` (the cluster's default) and the rogue command as it is."""
    import sys

    from netsim.context import SimContext
    from netsim.lifecycle import Lifecycle

    rogue = [sys.executable, "-m", "netsim.rogue", "--kind", "nonpayer"]
    shaped = Lifecycle(SimContext(scenario(), seed=1, base_dir=tmp_path))
    table = ["--link-table", str(tmp_path / "links.json")]
    assert shaped.command() == [sys.executable, "-m", "netsim.node", *table]
    assert shaped.command(rogue) == [*rogue, *table]
    plain = Lifecycle(SimContext(scenario(shaping="none"), seed=1, base_dir=tmp_path))
    assert plain.command() is None and plain.command(rogue) == rogue
