"""NETSIM-ONLY misnamed worker: announces a popular model name while its attestation report attests another.

A real ``cocoon-node`` worker serving ``--attested-model`` (default ``tiny-model``): its report, signed and
attested like any other, honestly names that model and its weights, and the requesters' policy *allows*
those weights for that name (netsim passes ``--allowed-model tiny-model=HASH``). Its gossip announcement,
though, offers the popular model the scenario names (``--model``, e.g. ``synthetic-echo``), at the lowest
price, and its server answers requests for that name, so a requester that bound only the weight hash and
the TEE kind (issue 21) would send it prompts for a model it does not run. The invariant: it never receives
a prompt (no inference stream is ever opened to it) and every requester's gate reports the mismatch.

Nothing here is reachable from the node's own code: it builds the public :class:`~cocoon_node.node.Node`
and changes its announcement and server terms from outside, and it refuses anything but the ``local``
network with the EMULATED chain.

Usage: ``python -m netsim.misnamed [--attested-model NAME] [--link-table PATH] run <cocoon-node run flags>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from typing import Any

import msgspec
import trio

from cocoon_node.api import NodeHttp
from cocoon_node.cli import build_parser, overrides_from_args, serve_until_signalled
from cocoon_node.config import Config, ConfigError, load_config
from cocoon_node.inference.stream import PROTOCOL_ID
from cocoon_node.mesh import TransportFactory
from cocoon_node.node import Node
from netsim.node import add_link_table_option, link_shaping

log = logging.getLogger("netsim.misnamed")

KIND = "misnamed"
DEFAULT_ATTESTED_MODEL = "tiny-model"


class _OnStarted:
    """A task status that runs ``hook`` just before reporting the node started."""

    def __init__(self, inner: Any, hook: Any) -> None:
        self._inner, self._hook = inner, hook

    def started(self, value: Any = None) -> None:
        self._hook()
        self._inner.started(value)


class MisnamedNode(Node):
    """A worker whose config (and so its report and weights) is ``attested_model``, announcing ``offered``."""

    def __init__(self, config: Config, *, offered: str, transport_factory: TransportFactory | None = None) -> None:
        super().__init__(config, http=NodeHttp(), transport_factory=transport_factory)
        self.offered = offered
        self.streams_opened = 0     # inference streams any requester opened to us: each could carry a prompt
        self.requests_seen = 0

    async def _run_roles(self, nursery: trio.Nursery, task_status: Any) -> None:
        await super()._run_roles(nursery, _OnStarted(task_status, self._misname))

    def _misname(self) -> None:
        worker = self.worker
        assert worker is not None and worker.server is not None and worker.announcement is not None
        worker.announcement = msgspec.structs.replace(worker.announcement, model=self.offered)
        server = worker.server
        server.terms = replace(server.terms, model=self.offered)  # it would serve the popular name if reached
        honest = server.handle

        async def counting(stream: Any) -> None:
            self.streams_opened += 1
            await honest(stream)

        self.mesh.set_stream_handler(PROTOCOL_ID, counting)
        log.warning("NETSIM-ONLY: announcing %r while the attestation report names %r", self.offered,
                    self.config.worker.model)

    async def status(self) -> dict[str, Any]:
        out = await super().status()
        server = self.worker.server if self.worker else None
        out["adversary"] = {
            "kind": KIND, "offered_model": self.offered, "attested_model": self.config.worker.model,
            "streams_opened": self.streams_opened,
            "prompts_received": len(server.request_log) if server else 0,
        }
        return out


def invariant(data: Any, add: Any) -> None:
    """``misnamed_never_prompted[NAME]``: no stream, no prompt, no answer, and every requester's gate says why."""
    for node in [n for n in data.nodes.values() if n.adversary == KIND]:
        st = data.final_status.get(node.name) or data.last_status.get(node.name) or {}
        adv, worker = st.get("adversary") or {}, st.get("worker") or {}
        problems = []
        if not adv:
            problems.append("no status from the misnamed worker")
        if adv.get("streams_opened") or adv.get("prompts_received"):
            problems.append(f"{adv.get('streams_opened')} stream(s), {adv.get('prompts_received')} prompt(s) "
                            "reached it")
        if worker.get("served") or worker.get("rejected"):
            problems.append(f"served={worker.get('served')} rejected={worker.get('rejected')}")
        answered = [r.index for r in data.results if r.ok and r.worker == node.peer_id]
        if answered:
            problems.append(f"answered requests {answered[:10]}")
        seen = []
        for name, rst in data.last_status.items():
            if data.nodes.get(name) is None or data.nodes[name].role != "requester":
                continue
            for w in rst.get("workers") or []:
                gate = w.get("gate") or {}
                if w.get("peer_id") == node.peer_id and gate.get("attested_model") is not None:
                    seen.append((name, gate))
        refused = [n for n, g in seen if g.get("verified") is False and g.get("check") == "binding"]
        if any(g.get("verified") for _, g in seen):
            problems.append("a requester's gate lists it as verified")
        detail = (f"announced {adv.get('offered_model')!r}, report attests {adv.get('attested_model')!r}: "
                  f"0 streams, 0 prompts; refused on the binding check by {len(refused)}/{len(seen)} requesters "
                  "that had verified its report")
        add(f"misnamed_never_prompted[{node.name}]", "FAIL" if problems else "PASS", "; ".join(problems) or detail)


def config_for(node_args: list[str], attested_model: str) -> tuple[Config, str]:
    args = build_parser().parse_args(node_args)
    if args.command != "run":
        raise SystemExit("netsim.misnamed: only the run command is supported")
    overrides = overrides_from_args(args)
    offered = load_config(args.config, overrides=overrides).worker.model
    overrides.setdefault("worker", {})["model"] = attested_model
    config = load_config(args.config, overrides=overrides)
    if config.node.network != "local" or config.payments.chain != "local" or not config.worker.enabled:
        raise SystemExit("netsim.misnamed: NETSIM-ONLY; a worker on the local network and EMULATED chain only")
    return config, offered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="netsim.misnamed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--attested-model", default=DEFAULT_ATTESTED_MODEL)
    add_link_table_option(parser)
    parser.add_argument("node_args", nargs=argparse.REMAINDER, help="run <cocoon-node run flags>")
    args = parser.parse_args(argv)
    try:
        config, offered = config_for(args.node_args, args.attested_model)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"netsim.misnamed: config error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("libp2p", "hypercorn", "httpx", "multiaddr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    node = MisnamedNode(config, offered=offered,
                        transport_factory=link_shaping(config, args.link_table, "netsim.misnamed"))
    trio.run(serve_until_signalled, node, {"adversary": KIND})


if __name__ == "__main__":
    main()
