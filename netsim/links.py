"""Link shaping for netsim: which layer shapes, and the link table every node of a run reads.

Issue 5 asks for kernel shaping (network namespaces, veth pairs, ``tc netem``) where the process may, and a
transport layer otherwise. :func:`probe_netem` finds out whether netem would work here; the namespace path
itself is **not implemented**, so shaped runs always use the transport layer
(:mod:`netsim.shaping`, NETSIM-ONLY) and the report says why.

The run keeps one link table (``links.json`` in its base dir) and starts every node through netsim's own entry
points with ``--link-table`` (:mod:`netsim.node`, the rogue nodes, host pools), which inject the shaped TCP
transport into the node's mesh. :class:`LinkPlan` rewrites the table atomically whenever a node
comes up (so the table knows its peer id and port) and when a partition starts or heals; the nodes re-read it
within :data:`netsim.shaping.POLL_INTERVAL_S`, and open connections follow. What is not shaped:
QUIC, connections dialed by processes without the table (the in-process junk flooder), the HTTP API/admin
endpoints and the emulated chain (all loopback, outside the mesh).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from netsim.scenario import ALL_NODES, LinkPair, Links
from netsim.shaping import write_table_file

TRANSPORT_LAYER = "transport (NETSIM-ONLY shaping layer in every node's TCP transport; "
NAMESPACE_PATH_MISSING = "the network-namespace + veth + netem path is not implemented"


async def probe_netem(timeout: float = 15.0) -> str | None:
    """None when ``tc netem`` works in a scratch network namespace here; otherwise the reason it does not."""
    if os.geteuid() != 0:
        return "not root"
    ip, tc = shutil.which("ip"), shutil.which("tc")
    if ip is None or tc is None:
        return "iproute2 (ip, tc) not installed"
    namespace = f"cocoon-netsim-probe-{os.getpid()}"
    with trio.move_on_after(timeout):
        added = await _run([ip, "netns", "add", namespace])
        if added.returncode != 0:
            return f"`ip netns add` failed: {_stderr(added)}"
        try:
            tried = await _run([ip, "netns", "exec", namespace, tc, "qdisc", "add", "dev", "lo", "root", "netem",
                                "delay", "0ms"])
            if tried.returncode != 0:
                return f"`tc qdisc add dev lo root netem` in a scratch network namespace: {_stderr(tried)}"
            return None
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await _run([ip, "netns", "delete", namespace])
    return f"the probe took longer than {timeout} s"


async def _run(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)


def _stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = (proc.stderr or b"").decode(errors="replace").strip().replace("\n", " ")
    return text or f"exit status {proc.returncode}"


def shaping_note(netem_problem: str | None) -> str:
    """The report's ``shaping`` line for a shaped run: the layer used and why."""
    if netem_problem is None:
        return TRANSPORT_LAYER + f"tc netem works here, but {NAMESPACE_PATH_MISSING})"
    return TRANSPORT_LAYER + f"tc netem unavailable: {netem_problem}; {NAMESPACE_PATH_MISSING})"


def _params(spec: Links | LinkPair) -> dict[str, Any]:
    """A scenario link spec as link-table keys (only the keys it sets)."""
    out: dict[str, Any] = {}
    for key in ("latency_ms", "jitter_ms", "loss"):
        value = getattr(spec, key)
        if value is not None:
            out[key] = float(value)
    if spec.bandwidth_kbps is not None:
        out["bandwidth_bytes_s"] = float(spec.bandwidth_kbps) * 1000 / 8
    return out


@dataclass
class _Member:
    peer_id: str
    ports: list[int]
    groups: set[str]


@dataclass
class LinkPlan:
    """The run's link table: scenario links, the nodes known so far and the partitions in force."""

    path: Path
    links: Links
    seed: int
    members: dict[str, _Member] = field(default_factory=dict)
    partitions: dict[int, tuple[frozenset[str], str]] = field(default_factory=dict)
    _next_partition: int = 0

    def register(self, name: str, peer_id: str, addrs: list[str], groups: set[str]) -> None:
        """Record (or update, after a restart) where a node listens; call :meth:`write` after."""
        ports = sorted({int(m.group(1)) for a in addrs if (m := re.search(r"/tcp/(\d+)", a))})
        self.members[name] = _Member(peer_id, ports, set(groups))

    def partition(self, side: set[str], why: str) -> int:
        """Block every link between ``side`` and everyone else until :meth:`heal` (joiners land outside)."""
        self._next_partition += 1
        self.partitions[self._next_partition] = (frozenset(side), why)
        return self._next_partition

    def heal(self, token: int) -> None:
        self.partitions.pop(token, None)

    def _select(self, selectors: tuple[str, ...]) -> list[str]:
        out = []
        for name, m in self.members.items():
            if ALL_NODES in selectors or name in selectors or m.groups & set(selectors):
                out.append(name)
        return sorted(out)

    def table(self) -> dict[str, Any]:
        rules: list[dict[str, Any]] = []
        for pair in self.links.pairs:
            a, b = self._select(pair.a), self._select(pair.b)
            if a and b:
                rules.append({"a": a, "b": b, **_params(pair)})
        for side, why in self.partitions.values():
            inside = sorted(n for n in self.members if n in side)
            outside = sorted(n for n in self.members if n not in side)
            if inside and outside:
                rules.append({"a": inside, "b": outside, "blocked": True, "why": why})
        return {"version": 1, "seed": self.seed, "default": _params(self.links),
                "nodes": {n: {"peer_id": m.peer_id, "ports": m.ports} for n, m in sorted(self.members.items())},
                "rules": rules}

    def write(self) -> None:
        write_table_file(self.path, self.table())
