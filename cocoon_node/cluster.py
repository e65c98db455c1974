"""Local clusters of real ``cocoon-node`` processes: the main job (``just run``), tests and netsim use it.

Each node is its own OS process on 127.0.0.1 with its own data dir. The supervisor only ever signals the
processes it started, by PID, and always reaps them on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio


@dataclass
class NodeProcess:
    name: str
    data_dir: Path
    args: list[str]
    process: trio.Process | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def addr(self) -> str:
        return str(self.ready["addrs"][0])

    @property
    def peer_id(self) -> str:
        return str(self.ready["peer_id"])


def node_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "cocoon_node", *args]


class Cluster:
    """Starts and stops node processes; every wait is bounded."""

    def __init__(self, base_dir: Path, *, env: dict[str, str] | None = None, payments: bool = True) -> None:
        self.base_dir = base_dir
        self.payments = payments
        self.chain_url: str | None = None
        self.nodes: dict[str, NodeProcess] = {}
        self._env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self._nursery: trio.Nursery | None = None

    async def start_node(self, name: str, args: Sequence[str], *, timeout: float = 180.0,
                         command: Sequence[str] | None = None) -> NodeProcess:
        """Start ``cocoon-node run ARGS`` with data dir ``base/name`` and wait for its ready line.

        ``command`` replaces ``python -m cocoon_node`` (netsim's own node entry points, shaped and rogue nodes,
        take the same ``run`` flags)."""
        assert self._nursery is not None, "use `async with cluster.running()`"
        data_dir = self.base_dir / name
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a node refuses a data dir others can read
        log_path = data_dir / "node.log"
        full = ["run", "--data-dir", str(data_dir), *args]
        full += ["--chain-url", self.chain_url] if self.chain_url else ["--no-payments"]
        node = NodeProcess(name, data_dir, list(args), log_path=log_path)
        # 0600: the log sits in the private data dir (a node refuses to start on one with readable files).
        log_file = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        cmd = [*command, *full] if command is not None else node_command(full)
        process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=log_file,
                                                   env=self._env)
        node.process = process
        self.nodes[name] = node
        assert process.stdout is not None
        buffer = b""
        with trio.fail_after(timeout):
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"node {name} exited before becoming ready; see {log_path}")
                buffer += chunk
        node.ready = json.loads(buffer.split(b"\n", 1)[0])
        self._nursery.start_soon(drain_output, process.stdout)
        return node

    async def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        node = self.nodes[name]
        if node.process is not None and node.process.returncode is None:
            node.process.send_signal(sig)
            with trio.fail_after(30):
                await node.process.wait()

    async def stop_all(self) -> None:
        for node in self.nodes.values():
            p = node.process
            if p is not None and p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            p = node.process
            if p is None:
                continue
            with trio.move_on_after(15):
                await p.wait()
            if p.returncode is None:
                p.kill()
                await p.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Cluster]:
        """Run the cluster; with payments, one shared EMULATED chain serves every node (dev only)."""
        async with AsyncExitStack() as stack:
            if self.payments:
                from cocoon_node.payments.chain.local import serve_shared_chain

                self.base_dir.mkdir(parents=True, exist_ok=True)
                self.chain_url = await stack.enter_async_context(
                    serve_shared_chain(self.base_dir / "local-chain.json"))
            nursery = await stack.enter_async_context(trio.open_nursery())
            self._nursery = nursery
            try:
                yield self
            finally:
                with trio.CancelScope(shield=True):
                    await self.stop_all()
                nursery.cancel_scope.cancel()

    async def status(self, name: str) -> dict[str, Any]:
        info = json.loads((self.nodes[name].data_dir / "node.json").read_text())
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(info["admin_url"] + "/status",
                                    headers={"authorization": f"Bearer {info['admin_token']}"})
        data: dict[str, Any] = resp.json()
        return data


async def drain_output(stream: Any) -> None:
    """Read and drop a node process's stdout after its ready line, so a chatty node never blocks on a full pipe."""
    while await stream.receive_some(4096):
        pass


async def wait_for_workers(cluster: Cluster, requester: str, count: int, *, timeout: float,
                           model: str | None = None) -> list[dict[str, Any]]:
    """Poll the requester's status until it lists ``count`` workers (of ``model``, if given)."""
    with trio.fail_after(timeout):
        while True:
            workers = [w for w in (await cluster.status(requester))["workers"] if model is None or w["model"] == model]
            if len(workers) >= count:
                return workers
            await trio.sleep(0.5)


def worker_args(bootstrap: str, backend: str, *, extra: Sequence[str] = ()) -> list[str]:
    return ["--worker", "--local-cluster", "--bootstrap", bootstrap, "--backend", backend, "--tee", "dev",
            *(["--model", "synthetic-echo"] if backend == "synthetic" else []), *extra]


def run_main_job(args: argparse.Namespace) -> int:
    """The README's first command: a local cluster that answers a real chat request."""
    from cocoon_node.chat_client import chat_once

    base = Path(args.base_dir)
    model = "synthetic-echo" if args.backend == "synthetic" else "SmolLM2-135M-Instruct"
    print("cocoon: DEV cluster on 127.0.0.1 — dev-INSECURE TEE, no real chain. Not for real money.", flush=True)

    async def main() -> int:
        cluster = Cluster(base)
        async with cluster.running():
            started = time.monotonic()
            req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                         "--api-port", str(args.api_port)])
            print(f"requester {req.peer_id} up at {req.addr}", flush=True)
            async with trio.open_nursery() as nursery:
                for i in range(args.workers):
                    nursery.start_soon(cluster.start_node, f"worker{i + 1}", worker_args(req.addr, args.backend))
            for i in range(args.workers):
                w = cluster.nodes[f"worker{i + 1}"]
                print(f"worker{i + 1} {w.peer_id} up ({args.backend} backend, model {model})", flush=True)
            workers = await wait_for_workers(cluster, "requester", args.workers, timeout=120, model=model)
            print(f"mesh formed: requester sees {len(workers)} workers after {time.monotonic() - started:.1f}s",
                  flush=True)
            api = req.ready["api_url"]
            print(f"\n> {args.prompt}\n", flush=True)
            code = await trio.to_thread.run_sync(
                lambda: chat_once(api, args.prompt, model=model, max_tokens=96))
            if code != 0:
                return code
            pay = (await cluster.status("requester")).get("payments", {})
            for ch in pay.get("channels", []):
                print(f"paid {ch['voucher_cumulative']} nanotons by voucher #{ch['voucher_seqno']} over channel "
                      f"{ch['address'][:12]}… (EMULATED local chain, deposit {ch['deposit']})", flush=True)
            print(f"\nOpenAI-compatible API: {api}/v1  (model {model!r})", flush=True)
            print(f"try: cocoon-node chat --api {api} \"Hello!\"   — Ctrl-C to stop", flush=True)
            if not args.once:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        print("stopping cluster…", flush=True)
                        break
            return 0

    return trio.run(main)
