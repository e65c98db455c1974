"""NETSIM-ONLY: run a ``cocoon-node`` whose mesh dials through netsim's shaped TCP transport, or whose wall
clock is skewed.

``python -m netsim.node [--link-table PATH] [--clock-skew SECONDS] run <cocoon-node run flags>`` runs exactly
what ``cocoon-node run`` runs (same flags, config, logging and ready line), except that:

- with ``--link-table``, the node's mesh is given :func:`netsim.shaping.shaped_transport_factory`: every TCP
  connection it dials is delayed, throttled or blocked as the link table at ``PATH`` says;
- with ``--clock-skew``, the process's wall clock runs ``SECONDS`` ahead (negative: behind), netsim's
  ``skew`` fault (:func:`skew_wall_clock`).

Production code has no flag or setting for either; netsim's other node entry points (``netsim.rogue``,
``netsim.lowball``, ``netsim.misnamed``, ``netsim.pool``) take the same ``--link-table`` option through
:func:`add_link_table_option` and :func:`link_shaping`.

Refused (NETSIM-ONLY): both outside the ``local`` network; shaping next to a QUIC listen address (it is
TCP-only) and when the table file does not exist.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cocoon_node.cli import build_parser, cmd_run, overrides_from_args, setup_logging
from cocoon_node.config import Config, ConfigError, load_config
from cocoon_node.mesh import TransportFactory
from netsim.shaping import NETSIM_ONLY, shaped_transport_factory


def add_link_table_option(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument("--link-table", dest="link_table", type=Path, metavar="PATH", required=required,
                        help=f"{NETSIM_ONLY}: delay, throttle or block the TCP connections this node dials as the "
                             "JSON link table (written by cocoon-netsim) says")


def shaping_problems(config: Config, link_table: Path) -> list[str]:
    """Why ``config``'s node may not be shaped by ``link_table`` (empty: it may)."""
    problems = []
    if config.node.network != "local":
        problems.append(f"--link-table: {NETSIM_ONLY}; refused outside the local network "
                        f"(node.network is {config.node.network!r})")
    if any("/quic" in a for a in config.node.listen):
        problems.append("--link-table: link shaping is TCP-only; remove the /quic-v1 listen address")
    if not link_table.is_file():
        problems.append(f"--link-table: {link_table} is not a file")
    return problems


def link_shaping(config: Config, link_table: Path | None, prog: str) -> TransportFactory | None:
    """The transport factory that shapes ``config``'s node, None without a link table; exits 2 if refused."""
    if link_table is None:
        return None
    problems = shaping_problems(config, link_table)
    if problems:
        for problem in problems:
            print(f"{prog}: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return shaped_transport_factory(link_table)


def skew_wall_clock(seconds: float) -> None:
    """NETSIM-ONLY: shift this process's wall clock (``time.time``/``time_ns``) as a skewed system clock
    would; monotonic time, which only measures intervals, is left alone, as the kernel would leave it."""
    real_time, real_time_ns = time.time, time.time_ns
    offset_ns = int(seconds * 1e9)
    time.time = lambda: real_time() + seconds  # type: ignore[assignment]
    time.time_ns = lambda: real_time_ns() + offset_ns  # type: ignore[assignment]


def clock_skew_problems(config: Config, seconds: float) -> list[str]:
    """Why ``config``'s node may not run with its clock ``seconds`` off (empty: it may)."""
    if seconds and config.node.network != "local":
        return [f"--clock-skew: {NETSIM_ONLY}; refused outside the local network "
                f"(node.network is {config.node.network!r})"]
    return []


def load_run_config(prog: str, node_args: list[str]) -> tuple[Config, argparse.Namespace]:
    """``cocoon-node run`` flags as the node CLI reads them; exits 2 on a config error."""
    args = build_parser().parse_args(node_args)
    if args.command != "run":
        raise SystemExit(f"{prog}: only the run command is supported")
    try:
        return load_config(args.config, overrides=overrides_from_args(args)), args
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{prog}: config error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="netsim.node", description=__doc__.split("\n\n")[0])
    add_link_table_option(parser)
    parser.add_argument("--clock-skew", dest="clock_skew", type=float, default=0.0, metavar="SECONDS",
                        help=f"{NETSIM_ONLY}: run this node's wall clock SECONDS ahead (negative: behind), as a "
                             "skewed system clock would")
    parser.add_argument("node_args", nargs=argparse.REMAINDER, help="run <cocoon-node run flags>")
    args = parser.parse_args(argv)
    config, node_args = load_run_config("netsim.node", args.node_args)
    for problem in clock_skew_problems(config, args.clock_skew):
        print(f"netsim.node: {problem}", file=sys.stderr)
        raise SystemExit(2)
    transport_factory = link_shaping(config, args.link_table, "netsim.node")
    setup_logging(config)
    if args.clock_skew:
        skew_wall_clock(args.clock_skew)
        logging.getLogger("netsim.node").warning(
            "NETSIM-ONLY clock skew: this node's wall clock runs %+.0f s off (local network only)", args.clock_skew)
    raise SystemExit(cmd_run(config, node_args, transport_factory=transport_factory))


if __name__ == "__main__":
    main()
