"""Process control on top of :class:`cocoon_node.cluster.Cluster`: host pools, non-waiting signals, restarts.

``Cluster.kill`` waits for the process to exit, which is right for SIGKILL/SIGTERM but would hang forever on
SIGSTOP; faults that freeze a node go through :meth:`SimCluster.signal` instead. Every process is still
started, signalled and reaped by PID through the cluster, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from cocoon_node.cluster import Cluster, NodeProcess, drain_output


def process_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds (user + system) and resident memory in bytes of a live process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as fh:
            rss_pages = int(fh.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, rss_pages * os.sysconf("SC_PAGE_SIZE")


class SimCluster(Cluster):
    """A cluster that can also run host-pool processes and freeze/thaw nodes."""

    def __init__(self, base_dir: Path, *, env: dict[str, str] | None = None) -> None:
        super().__init__(base_dir, env=env)
        self.stopped: set[str] = set()
        self.pools: dict[str, list[str]] = {}

    async def start_pool(self, pool: str, prefix: str, count: int, start_index: int, args: Sequence[str], *,
                         timeout: float = 300.0, link_table: Path | None = None) -> list[NodeProcess]:
        """Start ``count`` in-process nodes in one ``netsim.pool`` process; each is registered as a node.

        With ``link_table``, every node in it dials through netsim's NETSIM-ONLY shaped transport."""
        assert self._nursery is not None, "use `async with cluster.running()`"
        log_path = self.base_dir / f"{pool}.log"
        self.base_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: ASYNC230 - opening a local log file does not block meaningfully
        cmd = [sys.executable, "-m", "netsim.pool", "--base-dir", str(self.base_dir), "--prefix", prefix,
               "--count", str(count), "--start-index", str(start_index), "--timeout", str(timeout),
               *(["--link-table", str(link_table)] if link_table is not None else []), "--", *args,
               # Same payments wiring as Cluster.start_node: the cluster's shared emulated chain, or none.
               *(["--chain-url", self.chain_url] if self.chain_url else ["--no-payments"])]
        process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=log_file, env=self._env)
        assert process.stdout is not None
        buffer = b""
        try:
            with trio.fail_after(timeout + 10):
                while b"\n" not in buffer:
                    chunk = await process.stdout.receive_some(65536)
                    if not chunk:
                        raise RuntimeError(f"pool {pool} exited before becoming ready; see {log_path}")
                    buffer += chunk
        except BaseException:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()
            raise
        ready = json.loads(buffer.split(b"\n", 1)[0])
        self._nursery.start_soon(drain_output, process.stdout)
        out = []
        for info in ready["nodes"]:
            node = NodeProcess(info["name"], self.base_dir / info["name"], list(args), process=process,
                               ready=info, log_path=log_path)
            self.nodes[node.name] = node
            out.append(node)
        self.pools[pool] = [n.name for n in out]
        return out

    def signal(self, name: str, sig: signal.Signals) -> bool:
        """Send ``sig`` to the node's process by PID without waiting; False if it is not running."""
        node = self.nodes[name]
        if node.process is None or node.process.returncode is not None:
            return False
        node.process.send_signal(sig)
        if sig == signal.SIGSTOP:
            self.stopped.add(name)
        elif sig == signal.SIGCONT:
            self.stopped.discard(name)
        return True

    def usage(self) -> dict[str, dict[str, Any]]:
        """Per running process (a host pool or a single node): pid, nodes in it, CPU seconds so far, RSS."""
        owner = {name: pool for pool, names in self.pools.items() for name in names}
        out: dict[str, dict[str, Any]] = {}
        for name, node in self.nodes.items():
            if node.process is None or node.process.returncode is not None:
                continue
            key = owner.get(name, name)
            if key in out:
                out[key]["nodes"] += 1
                continue
            used = process_usage(node.process.pid)
            if used is not None:
                out[key] = {"pid": node.process.pid, "nodes": 1, "cpu_s": used[0], "rss_bytes": used[1]}
        return out

    def running_node(self, name: str) -> bool:
        node = self.nodes.get(name)
        return bool(node and node.process is not None and node.process.returncode is None)

    async def thaw_all(self) -> None:
        """SIGCONT every frozen node, so shutdown's SIGTERM is not left pending on a stopped process."""
        for name in sorted(self.stopped):
            self.signal(name, signal.SIGCONT)
        await trio.lowlevel.checkpoint()

    async def try_status(self, name: str, timeout: float = 3.0) -> dict[str, Any] | None:
        """Status of a node, or None when it is down, frozen or slow."""
        if not self.running_node(name) or name in self.stopped:
            return None
        with trio.move_on_after(timeout):
            try:
                return await self.status(name)
            except Exception:
                return None
        return None
