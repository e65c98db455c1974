"""Closing channels on command (issue 16): the admin endpoint's ``POST /channels/close`` and its bad input,
``cocoon-node channels list|close`` on a stopped node, and the cluster stopping requesters before workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cocoon_node.api.admin import admin_app
from cocoon_node.cli import main
from cocoon_node.cluster import Cluster, NodeProcess
from cocoon_node.payments.store import PaymentStore
from cocoon_node.payments.voucher import ChannelParams, sign_voucher
from tests.payments.conftest import party_key


async def test_the_close_endpoint_wants_its_token_and_a_peer_or_nothing() -> None:
    asked: list[str | None] = []

    async def status() -> dict[str, Any]:
        return {}

    async def close(peer: str | None) -> dict[str, Any]:
        asked.append(peer)
        if peer == "unknown":
            return {"closed": [], "error": "no open channel to unknown"}
        return {"closed": [{"peer": peer or "all", "address": "a", "success": True, "cooperative": True}]}

    auth = {"authorization": "Bearer tok"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admin_app(status, "tok", close_channels=close)),
                                 base_url="http://admin") as http:
        denied = await http.post("/channels/close", json={"peer": "w1"})
        not_json = await http.post("/channels/close", content=b"{nope", headers=auth)
        not_a_peer = await http.post("/channels/close", json={"peer": 7}, headers=auth)
        a_list = await http.post("/channels/close", json=["w1"], headers=auth)
        unknown = await http.post("/channels/close", json={"peer": "unknown"}, headers=auth)
        one = await http.post("/channels/close", json={"peer": "w1"}, headers=auth)
        every = await http.post("/channels/close", headers=auth)
    assert denied.status_code == 401
    assert not_json.status_code == not_a_peer.status_code == a_list.status_code == 400
    assert unknown.status_code == 404 and "no open channel" in unknown.json()["error"]
    assert one.status_code == every.status_code == 200
    assert asked == ["unknown", "w1", None]  # nothing malformed reached the node


def test_channels_list_reads_a_stopped_nodes_store_and_close_needs_the_running_node(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    store = PaymentStore.open(data / "payments.db")
    params = ChannelParams(b"\x01" * 32, b"\x02" * 32, "0:" + "11" * 32, "0:" + "22" * 32, 5, 600)
    store.upsert_channel("EQchannel", "payer", "12D3worker", params, 1000)
    store.add_voucher("EQchannel", sign_voucher(party_key("payer"), 5, 3, 420))
    store.close()
    with pytest.raises(SystemExit) as listed:
        main(["channels", "list", "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert listed.value.code == 0 and "node not running" in out
    assert "EQchannel" in out and "12D3worker" in out and " 3 " in out and "420" in out
    with pytest.raises(SystemExit) as closed:
        main(["channels", "close", "12D3worker", "--data-dir", str(data)])
    assert closed.value.code == 1 and "no running node" in capsys.readouterr().err


# A fake node: on SIGTERM it logs that, takes a moment to shut down (a requester finishing its work), logs its
# exit and exits. The log's order says whether the cluster signalled the workers before its requester was gone.
FAKE_NODE = """
import os, signal, sys, time
log, name, linger = sys.argv[1], sys.argv[2], float(sys.argv[3])
def note(what):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{name} {what}\\n".encode()); os.close(fd)
def on_term(signum, frame):
    note("term"); time.sleep(linger); note("exit"); sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


async def test_the_cluster_stops_requesters_before_workers(tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    cluster = Cluster(tmp_path, payments=False)
    with trio.fail_after(60):
        async with cluster.running():
            for name, args, linger in (("worker1", ["--worker"], "0"), ("requester", ["--requester"], "1.0"),
                                       ("worker2", ["--worker", "--local-cluster"], "0")):
                process = await trio.lowlevel.open_process([sys.executable, "-c", FAKE_NODE, str(log), name, linger],
                                                           stdout=subprocess.PIPE)
                cluster.nodes[name] = NodeProcess(name, tmp_path / name, args, process=process)  # reaped on exit
                assert process.stdout is not None
                got = b""
                while not got.endswith(b"\n"):  # its SIGTERM handler is installed
                    chunk = await process.stdout.receive_some(64)
                    assert chunk, f"fake node {name} exited"
                    got += chunk
    lines = log.read_text().splitlines()
    assert lines[:2] == ["requester term", "requester exit"], lines  # the workers were up all along
    assert sorted(lines[2:]) == ["worker1 exit", "worker1 term", "worker2 exit", "worker2 term"]
