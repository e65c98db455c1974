"""Issue 15 (netsim scale at 100 nodes): the scale scenario's workers advertise their loopback listen address
from the start. With issue 14's ``--reachability auto`` a node advertises only addresses a dial-back
confirmed; in the 100-node run 97 pooled workers asked the seed at once, stayed ``unknown``, advertised
nothing (announcements, identify and the DHT carried no address), and every path went through the seed.
Every node of that scenario listens on 127.0.0.1, which every other node can dial, so its workers say so
(``--reachability public``); real nodes keep ``auto`` (the NAT scenario tests that)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.cli import build_parser, overrides_from_args
from cocoon_node.config import load_config
from cocoon_node.mesh import Connectivity, ConnectivitySettings, Mesh, MeshSettings
from netsim.scenario import load_scenario

SCALE = Path(__file__).resolve().parents[2] / "netsim" / "scenarios" / "scale.toml"


def reachability_of(data_dir: Path, extra_args: list[str]) -> str:
    """What a worker started with the scenario's flags runs with, read by the node's own CLI and config."""
    args = build_parser().parse_args(["run", "--data-dir", str(data_dir), "--worker", "--local-cluster",
                                      *extra_args])
    return load_config(None, overrides=overrides_from_args(args)).node.reachability


async def test_scale_workers_advertise_their_listen_address_without_any_dial_back(tmp_path: Path) -> None:
    scenario = load_scenario(SCALE)
    assert any(g.pooled for g in scenario.workers)
    for group in scenario.workers:
        mode = reachability_of(tmp_path / group.name, list(group.extra_args))
        # A lone node, no peer to dial it back: with "auto" it would advertise nothing until confirmed.
        mesh = Mesh(create_new_key_pair(), MeshSettings(listen_addrs=("/ip4/127.0.0.1/tcp/0",), local_cluster=True))
        connectivity = Connectivity(mesh, ConnectivitySettings(reachability=mode))
        connectivity.install()
        with trio.fail_after(20):
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(mesh.start())
                nursery = await stack.enter_async_context(trio.open_nursery())
                await nursery.start(connectivity.run)
                assert mesh.advertised_addrs() == mesh.listen_addrs() != [], (
                    f"worker group {group.name!r} (reachability {mode!r}) advertises {mesh.advertised_addrs()}")
                nursery.cancel_scope.cancel()
