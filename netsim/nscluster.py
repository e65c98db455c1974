"""NETSIM-ONLY: a cluster whose nodes each run inside their own network namespace (netsim/topology.py).

Nodes are the same ``cocoon-node run`` processes as everywhere else, started through ``ip netns exec`` (which
execs: the PID netsim signals is the node's own). Each listens on its namespace's address; their admin
endpoints and APIs (127.0.0.1 inside the namespace) are reached through :class:`netsim.nsforward.Forwarder`,
and so is the shared EMULATED chain from inside each namespace.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from cocoon_node.cluster import NodeProcess
from netsim.nsforward import Forwarder
from netsim.procs import SimCluster
from netsim.topology import Network


class NamespacedCluster(SimCluster):
    def __init__(self, base_dir: Path, network: Network, forwarder: Forwarder, *,
                 env: dict[str, str] | None = None, payments: bool = True) -> None:
        super().__init__(base_dir, env=env)
        self.payments = payments
        self.network = network
        self.forwarder = forwarder

    async def start_node(self, name: str, args: Sequence[str], *, timeout: float = 180.0,
                         command: Sequence[str] | None = None) -> NodeProcess:
        ns = self.network.namespace(name)
        # Each node has its own IP here: IP-diversity rules (colocation scoring, eclipse protection) stay on.
        args = [a for a in args if a != "--local-cluster"]
        if self.chain_url:
            await self.forwarder.reach_root(ns, int(self.chain_url.rsplit(":", 1)[1]))
        listen = [] if "--listen" in args else ["--listen", self.network.listen_addr(name)]
        base = list(command) if command is not None else [sys.executable, "-m", "cocoon_node"]
        node = await super().start_node(name, [*args, *listen], timeout=timeout,
                                        command=self.network.exec_args(name, base))
        api = node.ready.get("api_url")
        if api:
            await self.forwarder.expose(ns, int(api.rsplit(":", 1)[1]))
            node.ready["ns_api_url"] = api
            node.ready["api_url"] = self.forwarder.url(ns, api)
        return node

    async def status(self, name: str) -> dict[str, Any]:
        info = json.loads((self.nodes[name].data_dir / "node.json").read_text())
        ns = self.network.namespace(name)
        await self.forwarder.expose(ns, int(info["admin_url"].rsplit(":", 1)[1]))
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(self.forwarder.url(ns, info["admin_url"]) + "/status",
                                    headers={"authorization": f"Bearer {info['admin_token']}"})
        data: dict[str, Any] = resp.json()
        return data
