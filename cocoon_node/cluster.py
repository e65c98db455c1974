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
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from cocoon_node.observe.startup import StartupFailure


class NodeStartFailed(StartupFailure, RuntimeError):
    """A node process exited before its ready line; the message carries the cause it printed."""


def _cause_in_log(log_path: Path) -> str:
    """The one-line cause a failed node printed last (``cocoon-node: ...``), or ""."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines[-50:]):
        if line.startswith("cocoon-node: "):
            return line.removeprefix("cocoon-node: ").removesuffix("  (--debug shows the traceback)")
    return ""


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
        waiting = trio.move_on_after(timeout)
        with waiting:
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    with trio.move_on_after(5):
                        await process.wait()
                    log_file.flush()
                    cause = _cause_in_log(log_path)
                    raise NodeStartFailed(f"node {name} did not start: {cause} (log: {log_path})" if cause else
                                          f"node {name} exited before becoming ready; see {log_path}")
                buffer += chunk
        if waiting.cancelled_caught:
            raise NodeStartFailed(f"node {name} not ready after {timeout:.0f} s (a busy machine loads models slowly): "
                                  f"see {log_path}")
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
        """SIGTERM every node and reap it: requesters first, the rest once they are gone, so whatever a
        requester does on its way out (finishing requests, a close with ``payments.close_on_shutdown``) still
        finds its workers up and the closes are cooperative."""
        first = [n for n in self.nodes.values() if is_requester_only(n.args)]
        await _stop(first)
        await _stop([n for n in self.nodes.values() if n not in first])

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Cluster]:
        """Run the cluster; with payments, one shared EMULATED chain serves every node (dev only)."""
        async with AsyncExitStack() as stack:
            if self.payments:
                from cocoon_node.payments import serve_shared_chain

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


def is_requester_only(args: Sequence[str]) -> bool:
    """A node started with ``--requester`` and not ``--worker``: it buys from the others."""
    return "--requester" in args and "--worker" not in args


async def _stop(nodes: Sequence[NodeProcess]) -> None:
    """SIGTERM ``nodes`` at once, then wait for each (15 s, then SIGKILL)."""
    for node in nodes:
        p = node.process
        if p is not None and p.returncode is None:
            p.send_signal(signal.SIGTERM)
    for node in nodes:
        p = node.process
        if p is None:
            continue
        with trio.move_on_after(15):
            await p.wait()
        if p.returncode is None:
            p.kill()
            await p.wait()


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


async def echo_load_phases(cluster: Cluster, name: str, print_line: Any) -> None:
    """Print the loading phases node ``name`` logs (``worker MODEL: phase…``) until cancelled: the main job's
    long wait says what it is waiting for."""
    marker = "cocoon_node.node.worker: worker "
    path = cluster.base_dir / name / "node.log"  # where start_node logs; earlier runs' lines are skipped
    offset = path.stat().st_size if path.exists() else 0
    while True:
        if path.exists():
            with open(path, "rb") as fh:  # noqa: ASYNC230 - a small local read once a second
                fh.seek(offset)
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if marker in line:
                    print_line(f"  {name}: {line.split(marker, 1)[1].split(': ', 1)[-1]}")
        await trio.sleep(1.0)


def worker_args(bootstrap: str, backend: str, *, extra: Sequence[str] = ()) -> list[str]:
    return ["--worker", "--local-cluster", "--bootstrap", bootstrap, "--backend", backend, "--tee", "dev",
            *(["--model", "synthetic-echo"] if backend == "synthetic" else []), *extra]


def run_main_job(args: argparse.Namespace) -> int:
    """The README's first command: a local cluster that answers a real chat request, each stage timed."""
    from cocoon_node.chat_client import chat_once
    from cocoon_node.observe.progress import Stages

    base = Path(args.base_dir)
    model = "synthetic-echo" if args.backend == "synthetic" else "SmolLM2-135M-Instruct"
    print("cocoon: DEV cluster on 127.0.0.1 — dev-INSECURE TEE, no real chain. Not for real money.", flush=True)
    stages = Stages()

    async def main() -> int:
        cluster = Cluster(base)
        stages.begin("chain up", "EMULATED TON chain sidecar")
        async with cluster.running():
            stages.done("chain up", cluster.chain_url or "")
            stages.begin("nodes up", f"requester + {args.workers} workers")
            req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                         "--api-port", str(args.api_port)])
            print(f"requester {req.peer_id} up at {req.addr}", flush=True)
            # A worker's ready line comes after its model loaded: the wait here is model loading.
            stages.begin("model loading", f"{args.workers} workers load {model}"
                         + ("; about 30 s on 2 cores" if args.backend == "torch" else ""))
            async with trio.open_nursery() as nursery:
                echo = trio.CancelScope()

                async def echo_phases() -> None:
                    with echo:
                        await echo_load_phases(cluster, "worker1", stages.note)

                nursery.start_soon(echo_phases)
                async with trio.open_nursery() as starting:
                    for i in range(args.workers):
                        # Loading phases are echoed meanwhile, so a slow, busy machine may take its time.
                        starting.start_soon(partial(cluster.start_node, f"worker{i + 1}",
                                                    worker_args(req.addr, args.backend), timeout=900))
                echo.cancel()
            stages.done("model loading")
            stages.done("nodes up")
            for i in range(args.workers):
                w = cluster.nodes[f"worker{i + 1}"]
                print(f"worker{i + 1} {w.peer_id} up ({args.backend} backend, model {model})", flush=True)
            stages.begin("mesh formed", "announcements gossiped, attestation reports checked")
            workers = await wait_for_workers(cluster, "requester", args.workers, timeout=120, model=model)
            stages.done("mesh formed", f"requester sees {len(workers)} workers")
            api = req.ready["api_url"]
            print(f"\n> {args.prompt}\n", flush=True)
            stages.begin("first answer")
            code = await trio.to_thread.run_sync(
                lambda: chat_once(api, args.prompt, model=model, max_tokens=96))
            if code != 0:
                return code
            stages.done("first answer")
            pay = (await cluster.status("requester")).get("payments", {})
            for ch in pay.get("channels", []):
                print(f"paid {ch['voucher_cumulative']} nanotons by voucher #{ch['voucher_seqno']} over channel "
                      f"{ch['address'][:12]}… (EMULATED local chain, deposit {ch['deposit']})", flush=True)
            print(f"\nOpenAI-compatible API: {api}/v1  (model {model!r})", flush=True)
            print(f"dashboard: {req.ready.get('dashboard_url') or api + '/dashboard'}   metrics: {api}/metrics",
                  flush=True)
            print(f"try: cocoon-node chat --api {api} \"Hello!\"   — Ctrl-C to stop", flush=True)
            if not args.once:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        print("stopping cluster…", flush=True)
                        break
            return 0

    try:
        return trio.run(main)
    except Exception as exc:
        from cocoon_node.observe.startup import report_failure

        return report_failure(exc, debug=getattr(args, "debug", False), prog="cocoon")
