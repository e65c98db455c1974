"""Host pool: many full cocoon nodes (``cocoon_node.node.Node``) in one Trio process.

A 2-core machine cannot run fifty Python interpreters with a libp2p stack each, but it can run a few
processes holding many nodes each. Every node keeps its own key, data dir, TCP listener and admin endpoint,
so the mesh sees fifty distinct peers talking over real loopback sockets.

Usage: ``python -m netsim.pool --base-dir D --prefix NAME --count K [--link-table PATH] -- <cocoon-node run flags>``.
Prints one JSON line ``{"event": "ready", "nodes": [...]}`` once every node is up.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from cocoon_node.api import NodeHttp
from cocoon_node.cli import build_parser, overrides_from_args
from cocoon_node.config import load_config
from cocoon_node.node import Node
from netsim.lateness import log_scheduler_lateness
from netsim.node import add_link_table_option, link_shaping
from netsim.taskdump import dump_on_sigusr1


def _config_for(data_dir: Path, run_args: list[str]) -> Any:
    # Reuses the node CLI's own flag handling so a pooled node is configured exactly like a process node.
    args = build_parser().parse_args(["run", "--data-dir", str(data_dir), *run_args])
    return load_config(None, overrides=overrides_from_args(args))


def _node(data_dir: Path, run_args: list[str], link_table: Path | None) -> Node:
    config = _config_for(data_dir, run_args)
    return Node(config, http=NodeHttp(), transport_factory=link_shaping(config, link_table, "netsim.pool"))


async def _run_pool(base_dir: Path, prefix: str, count: int, start_index: int, run_args: list[str],
                    timeout: float, link_table: Path | None) -> None:
    nodes = [_node(base_dir / f"{prefix}{start_index + i}", run_args, link_table) for i in range(count)]
    async with trio.open_nursery() as nursery:
        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        # kill -USR1 <pid>: where every task waits, and connections whose other end is gone (stalls)
        nursery.start_soon(dump_on_sigusr1, lambda: [n.mesh.host for n in nodes])
        nursery.start_soon(log_scheduler_lateness)  # is the shared loop starved? one log line per 10 s
        infos: list[dict[str, Any]] = [{} for _ in nodes]

        async def start_one(i: int) -> None:
            info = await nursery.start(nodes[i].run)
            infos[i] = {"name": f"{prefix}{start_index + i}", "peer_id": info.peer_id, "addrs": info.addrs,
                        "admin_url": info.admin_url, "api_url": info.api_url}

        with trio.fail_after(timeout):
            async with trio.open_nursery() as starters:
                for i in range(count):
                    starters.start_soon(start_one, i)
        print(json.dumps({"event": "ready", "nodes": infos}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="netsim.pool")
    parser.add_argument("--base-dir", required=True, type=Path)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--start-index", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    add_link_table_option(parser)
    parser.add_argument("run_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(_run_pool, args.base_dir, args.prefix, args.count, args.start_index, run_args, args.timeout,
             args.link_table)


if __name__ == "__main__":
    main()
