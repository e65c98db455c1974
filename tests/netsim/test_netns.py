"""NETSIM-ONLY namespaces, veths and nftables (netsim/netns.py, netsim/topology.py) on the real kernel.

A node behind a NAT dials out and is seen at its gateway's address; nobody outside can dial it back, neither
at its private address nor at the gateway's. An endpoint-independent NAT keeps one outside port for every
destination, a symmetric one picks a new one per destination. Partitions and loss are nftables drops that
heal. Every namespace of a run is gone afterwards, and a sweep deletes leftovers of a run that died.
Skipped (with the reason) where namespaces are unavailable: not root, no iproute2 or nftables.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import trio

from netsim.netns import (
    NetnsRun,
    _start_ticks,
    list_namespaces,
    namespace_pids,
    new_run_id,
    ns_socket,
    sweep_stale,
    unavailable_reason,
)
from netsim.topology import NatSpec, Network, Topology, parse_topology

REASON = unavailable_reason()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}")
PORT = 5000


async def listener(ns: str, port: int = PORT) -> trio.socket.SocketType:
    sock = await ns_socket(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind(("0.0.0.0", port))
    sock.listen(16)
    return sock


async def dial(ns: str, ip: str, port: int = PORT, *, source_port: int = 0,
               bound: float = 2.0) -> trio.socket.SocketType | None:
    """Connect from inside ``ns``; None if no connection within ``bound`` seconds (a dropped SYN)."""
    sock = await ns_socket(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if source_port:
        await sock.bind(("0.0.0.0", source_port))
    with trio.move_on_after(bound):
        try:
            await sock.connect((ip, port))
            return sock
        except OSError:
            pass
    sock.close()
    return None


async def seen_as(net: Network, src: str, dst: str, *, source_port: int = 0) -> tuple[str, int]:
    """The (address, port) ``dst`` sees a connection from ``src`` arrive from."""
    srv = await listener(net.namespace(dst))
    try:
        with trio.fail_after(10):
            client = await dial(net.namespace(src), net.hosts[dst].ip, source_port=source_port, bound=10)
            assert client is not None
            conn, addr = await srv.accept()
        conn.close()
        client.close()
        return addr[0], addr[1]
    finally:
        srv.close()


TOPOLOGY = Topology(nats=(NatSpec("home", "eim"), NatSpec("cgnat", "symmetric")))
PLACES = [("pub1", "public"), ("pub2", "public"), ("pub3", "public"), ("eim1", "home"), ("sym1", "cgnat")]


@needs_netns
async def test_nat_dials_out_and_cannot_be_dialled_back() -> None:
    async with NetnsRun() as run:
        net = Network(run, TOPOLOGY)
        await net.build(PLACES)
        for inside in ("eim1", "sym1"):
            ip, _ = await seen_as(net, inside, "pub1")
            assert ip == net.gateways[net.hosts[inside].nat or ""].wan_ip != net.hosts[inside].ip
            srv = await listener(net.namespace(inside))
            try:
                # At its private address: no route from the public side at all.
                assert await dial(net.namespace("pub1"), net.hosts[inside].ip) is None
                # At the gateway's address: the SYN is dropped (no mapping opened from inside).
                assert await dial(net.namespace("pub1"), net.hosts[inside].visible_ip) is None
            finally:
                srv.close()
        # Public hosts reach each other directly, at their own addresses.
        assert (await seen_as(net, "pub2", "pub1"))[0] == net.hosts["pub2"].ip


@needs_netns
async def test_eim_keeps_the_port_and_symmetric_does_not() -> None:
    async with NetnsRun() as run:
        net = Network(run, TOPOLOGY)
        await net.build(PLACES)
        eim = {await seen_as(net, "eim1", dst, source_port=4001) for dst in ("pub1", "pub2", "pub3")}
        assert eim == {(net.hosts["eim1"].visible_ip, 4001)}
        sym = [await seen_as(net, "sym1", dst, source_port=4001) for dst in ("pub1", "pub2", "pub3")]
        assert len({port for _, port in sym}) > 1, f"symmetric NAT reused one outside port: {sym}"


@needs_netns
async def test_partition_and_loss_are_rules_that_heal() -> None:
    async with NetnsRun() as run:
        net = Network(run, TOPOLOGY)
        await net.build(PLACES)
        tag = await net.partition(["home"], ["pub1"])  # a NAT gateway cut off from one public host
        srv = await listener(net.namespace("pub1"))
        try:
            assert await dial(net.namespace("eim1"), net.hosts["pub1"].ip) is None
            await net.heal(tag)
            healed = await dial(net.namespace("eim1"), net.hosts["pub1"].ip, bound=10)
            assert healed is not None
            healed.close()
            await net.set_loss("pub1", 0.9999)
            assert await dial(net.namespace("pub2"), net.hosts["pub1"].ip) is None
            await net.set_loss("pub1", 0)
            again = await dial(net.namespace("pub2"), net.hosts["pub1"].ip, bound=10)
            assert again is not None
            again.close()
        finally:
            srv.close()


@needs_netns
async def test_run_leaves_nothing_behind() -> None:
    async with NetnsRun() as run:
        net = Network(run, TOPOLOGY)
        await net.build(PLACES[:2])
        mine = list_namespaces(f"cnsim-{run.run_id}-")
        assert len(mine) == 2 + 2 + 1  # two hosts, two gateways, the WAN
    assert list_namespaces(f"cnsim-{run.run_id}-") == []


def _poll(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@needs_netns
def test_sweep_removes_namespaces_and_processes_of_dead_runs() -> None:
    # A run that "crashed": its owner process is gone, its namespace and a process inside it are left.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = f"cnsim-{dead.pid}-{_start_ticks(os.getpid())}-orphan"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    inside = subprocess.Popen(["ip", "netns", "exec", leftover, sys.executable, "-c",
                               "import time; time.sleep(120)"])
    try:
        _poll(lambda: inside.pid in namespace_pids(leftover))
        live = f"cnsim-{new_run_id()}-alive"  # a run whose owner (this process) lives: left alone
        subprocess.run(["ip", "netns", "add", live], check=True)
        try:
            assert sweep_stale() == [leftover]
            assert leftover not in list_namespaces() and live in list_namespaces()
        finally:
            subprocess.run(["ip", "netns", "delete", live], capture_output=True, check=False)
        _poll(lambda: inside.poll() is not None)
        assert inside.returncode == -9
    finally:
        if inside.poll() is None:
            inside.kill()
        subprocess.run(["ip", "netns", "delete", leftover], capture_output=True, check=False)


def test_topology_parsing_is_strict() -> None:
    topo = parse_topology({"nat": [{"name": "home", "kind": "eim"}], "place": {"w1": "home"},
                           "loss": {"w1": 0.01}})
    assert topo.problems() == []
    bad = parse_topology({"nat": [{"name": "home", "kind": "cone"}], "place": {"w1": "nowhere"},
                          "loss": {"w1": 1.0}})
    problems = " ".join(bad.problems())
    assert "kind must be one of" in problems and "nowhere" in problems and "topology.loss.w1" in problems
    with pytest.raises(ValueError, match="unknown keys"):
        parse_topology({"routers": 3})
