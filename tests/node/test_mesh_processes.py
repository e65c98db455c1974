"""Issue 2 must-show: separate processes discover each other; kill, late join and restart behave."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from cocoon_node.cluster import Cluster, worker_args

from .conftest import FAST, wait_until, worker_ids


async def test_requester_sees_workers_join_die_and_restart(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    async with cluster.running():
        req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                     "--api-port", "0"])
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(cluster.start_node, f"w{i}", worker_args(req.addr, "synthetic", extra=FAST))
        ids = {cluster.nodes[f"w{i}"].peer_id for i in range(3)}

        async def all_three() -> bool:
            return ids <= await worker_ids(cluster)

        await wait_until(all_three, timeout=30)

        late = await cluster.start_node("late", worker_args(req.addr, "synthetic", extra=FAST))

        async def late_seen() -> bool:
            return late.peer_id in await worker_ids(cluster)

        await wait_until(late_seen, timeout=30)

        victim = cluster.nodes["w1"]
        await cluster.kill("w1", signal.SIGKILL)

        async def victim_gone() -> bool:
            return victim.peer_id not in await worker_ids(cluster)

        await wait_until(victim_gone, timeout=30)
        assert ids - {victim.peer_id} <= await worker_ids(cluster)

        # Same data dir, same identity, same peer id; and it is discovered again.
        again = await cluster.start_node("w1", worker_args(req.addr, "synthetic", extra=FAST))
        assert again.peer_id == victim.peer_id
        async def back() -> bool:
            return victim.peer_id in await worker_ids(cluster)

        await wait_until(back, timeout=30)

        # The CLI asks the running node over its admin endpoint, and chats through the requester's API.
        status = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "cocoon_node", "status", "--json", "--data-dir", str(req.data_dir)],
            capture_output=True, text=True, timeout=60))
        assert status.returncode == 0 and f'"peer_id": "{req.peer_id}"' in status.stdout
        chat = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "cocoon_node", "chat", "--data-dir", str(req.data_dir), "--model",
             "synthetic-echo", "hello mesh"], capture_output=True, text=True, timeout=60))
        assert chat.returncode == 0 and "hello mesh" in chat.stdout and "usage" in chat.stdout

        # SIGTERM shuts a node down cleanly: no hanging tasks, exit status 0.
        await cluster.kill("late", signal.SIGTERM)
        assert cluster.nodes["late"].process is not None and cluster.nodes["late"].process.returncode == 0


def test_bad_config_prints_one_line_per_error_and_exits_nonzero(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cocoon_node", "run", "--data-dir", str(tmp_path), "--network", "mainnet",
         "--worker", "--tee", "dev", "--api-port", "70000", "--bootstrap", "/ip4/127.0.0.1/tcp/1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("cocoon-node: config error: ") for line in lines)
    text = "\n".join(lines)
    assert "requester.api_port" in text and "node.bootstrap" in text and "worker.tee" in text
    assert "payments.chain" in text


def test_bad_config_file_and_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[worker]\nmax_concurrent = 'many'\n[nonsense]\nx = 1\n")
    proc = subprocess.run([sys.executable, "-m", "cocoon_node", "run", "--config", str(cfg),
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "COCOON_NODE_TARGET_PEERS": "lots"})
    assert proc.returncode == 2
    assert "worker.max_concurrent" in proc.stderr and "[nonsense]" in proc.stderr
    assert "node.target_peers" in proc.stderr


def test_world_readable_identity_refused(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "cocoon_node", "keygen", "--data-dir", str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    key = tmp_path / "identity.key"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    proc = subprocess.run([sys.executable, "-m", "cocoon_node", "id", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr
