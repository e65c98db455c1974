"""NETSIM-ONLY kernel networking: network namespaces, veth pairs and nftables rules, named by run id.

Everything a run creates is a network namespace called ``cnsim-<pid>-<start>-<name>``, where ``pid`` and
``start`` (the kernel's start time of that process, in clock ticks) identify the process that owns the run.
veth pairs are created directly inside their namespaces (never in the root namespace), and nftables rules
live in the namespaces' own rulesets, so deleting a run's namespaces removes every veth and rule it made.
A run that crashed leaves namespaces whose owner is gone: :func:`sweep_stale` finds them by name, ends the
processes still inside them (processes an earlier run started there) and deletes them. Every
:class:`NetnsRun` sweeps before it builds anything, and on exit deletes its own namespaces.

Needs root, iproute2 and nftables (``apt-get install nftables``); :func:`unavailable_reason` says what is
missing. Latency is not shaped here (this kernel has no ``sch_netem``): loss and partitions are nftables
drops, latency stays with the NETSIM-ONLY transport shaping layer.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

PREFIX = "cnsim"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
FAULT_TABLE = "cnsim_faults"
T = TypeVar("T")


class NetnsError(RuntimeError):
    """A namespace, link or rule could not be made (the message carries the command and its stderr)."""


def unavailable_reason() -> str | None:
    """None when namespaces, veth pairs and nftables can be used here; otherwise why not (for skip messages)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, as CI does)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install -y {package})"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    try:
        added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=10, check=False)
        if added.returncode != 0:
            return f"`ip netns add` failed: {added.stderr.decode(errors='replace').strip()}"
        nft = subprocess.run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"], capture_output=True,
                             timeout=10, check=False)
        if nft.returncode != 0:
            return f"nftables unusable in a namespace: {nft.stderr.decode(errors='replace').strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"probing namespaces failed: {exc}"
    finally:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=10, check=False)
    return None


# ----- run ids and crash-safe cleanup ------------------------------------------------------------------------
def _start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def new_run_id() -> str:
    """``<pid>-<start ticks>`` of this process: unique while it lives, recognisably dead once it is gone."""
    pid = os.getpid()
    return f"{pid}-{_start_ticks(pid) or 0}"


def _owner_alive(name: str) -> bool:
    parts = name.split("-")
    if len(parts) < 4 or parts[0] != PREFIX or not (parts[1].isdigit() and parts[2].isdigit()):
        return True  # not ours, or not in our naming scheme: never touch it
    return _start_ticks(int(parts[1])) == int(parts[2])


def list_namespaces(prefix: str = PREFIX + "-") -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


def namespace_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, timeout=10, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def delete_namespace(name: str) -> None:
    """SIGKILL the processes left inside ``name`` (started there by a netsim run), then delete it."""
    for pid in namespace_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10, check=False)


def sweep_stale() -> list[str]:
    """Delete the namespaces (and with them their veths and rules) of runs whose owner process is gone."""
    stale = [n for n in list_namespaces() if not _owner_alive(n)]
    for name in stale:
        delete_namespace(name)
    return stale


# ----- sockets inside a namespace ------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)}")


def in_namespace(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` with this thread inside namespace ``name`` (then back home): sockets it creates stay there.

    Call it from a worker thread (``trio.to_thread.run_sync``), never the Trio thread: setns moves only the
    calling thread.
    """
    with open(NETNS_DIR / name) as target, open("/proc/thread-self/ns/net") as home:
        _setns(target.fileno())
        try:
            return fn()
        finally:
            _setns(home.fileno())


async def ns_socket(name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> trio.socket.SocketType:
    """A Trio socket that lives in namespace ``name`` (connect, bind and listen act there)."""
    raw = await trio.to_thread.run_sync(in_namespace, name, lambda: socket.socket(family, kind))
    return trio.socket.from_stdlib_socket(raw)


async def ns_connect(name: str, host: str, port: int) -> trio.SocketStream:
    """A TCP connection opened from inside namespace ``name``."""
    sock = await ns_socket(name)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


# ----- commands ------------------------------------------------------------------------------------------------
async def run(cmd: Sequence[str], *, stdin: bytes | None = None, check: bool = True) -> str:
    proc = await trio.run_process(list(cmd), stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode()


class NetnsRun:
    """The namespaces of one run: create them, wire them, add and remove rules, delete them all on exit."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or new_run_id()
        self.names: dict[str, str] = {}   # local name -> namespace name
        self.swept: list[str] = []

    def ns(self, local: str) -> str:
        return self.names[local]

    async def __aenter__(self) -> NetnsRun:
        self.swept = await trio.to_thread.run_sync(sweep_stale)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):
            await self.destroy()

    async def destroy(self) -> None:
        mine = f"{PREFIX}-{self.run_id}-"
        for name in list_namespaces(mine):
            await trio.to_thread.run_sync(delete_namespace, name)
        self.names.clear()

    async def add(self, local: str) -> str:
        """Create namespace ``local`` (loopback up, IP forwarding off unless it routes)."""
        name = f"{PREFIX}-{self.run_id}-{local}"
        if len(local) > 40 or not local.replace("_", "").replace("-", "").isalnum():
            raise NetnsError(f"namespace name {local!r}: use up to 40 letters, digits, - and _")
        await run(["ip", "netns", "add", name])
        self.names[local] = name
        await self.ip(local, "link", "set", "lo", "up")
        return name

    async def ip(self, local: str, *args: str) -> str:
        return await run(["ip", "-n", self.ns(local), *args])

    async def sysctl(self, local: str, key: str, value: str) -> None:
        await run(["ip", "netns", "exec", self.ns(local), "sysctl", "-q", "-w", f"{key}={value}"])

    async def nft(self, local: str, script: str) -> str:
        return await run(["ip", "netns", "exec", self.ns(local), "nft", "-f", "-"], stdin=script.encode())

    async def nft_json(self, local: str, *what: str) -> list[dict[str, Any]]:
        out = await run(["ip", "netns", "exec", self.ns(local), "nft", "-j", "-a", "list", *what])
        items: list[dict[str, Any]] = json.loads(out).get("nftables", [])
        return items

    async def veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair with one end in each namespace (created there directly, never in the root namespace)."""
        await run(["ip", "link", "add", a_if, "netns", self.ns(a), "type", "veth", "peer", "name", b_if,
                   "netns", self.ns(b)])
        await self.ip(a, "link", "set", a_if, "up")
        await self.ip(b, "link", "set", b_if, "up")

    async def bridge(self, local: str, name: str) -> None:
        await self.ip(local, "link", "add", name, "type", "bridge")
        await self.ip(local, "link", "set", name, "up")

    async def enslave(self, local: str, iface: str, bridge: str) -> None:
        await self.ip(local, "link", "set", iface, "master", bridge)

    def exec_args(self, local: str, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside the namespace (``ip netns exec`` execs it: the PID is the command's own)."""
        return ["ip", "netns", "exec", self.ns(local), *cmd]

    # ----- fault rules (table inet cnsim_faults in each namespace) -----------------------------------------
    async def ensure_fault_table(self, local: str) -> None:
        await self.nft(local, (
            f"table inet {FAULT_TABLE} {{\n"
            "  chain input { type filter hook input priority -10; }\n"
            "  chain output { type filter hook output priority -10; }\n"
            "  chain forward { type filter hook forward priority -10; }\n"
            "}\n"))

    async def add_rules(self, local: str, tag: str, rules: Sequence[tuple[str, str]]) -> None:
        """Add ``(chain, rule)`` pairs to the fault table, each commented with ``tag`` for removal."""
        await self.ensure_fault_table(local)
        script = "".join(f'add rule inet {FAULT_TABLE} {chain} {rule} comment "{tag}"\n' for chain, rule in rules)
        await self.nft(local, script)

    async def remove_rules(self, local: str, tag: str) -> int:
        """Delete every fault rule commented ``tag``; returns how many there were."""
        items = await self.nft_json(local, "table", "inet", FAULT_TABLE)
        doomed = [i["rule"] for i in items if "rule" in i and i["rule"].get("comment") == tag]
        script = "".join(f"delete rule inet {FAULT_TABLE} {r['chain']} handle {r['handle']}\n" for r in doomed)
        if script:
            await self.nft(local, script)
        return len(doomed)
