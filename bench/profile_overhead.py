"""Profile the mesh token path under load: py-spy on the worker, the requester and this load generator.

Starts the same two-node cluster as ``bench_overhead.py`` (synthetic backend, payments on), warms it up at
``--concurrency`` streams, then keeps that many streams going while ``py-spy record`` samples each process
for ``--seconds`` (Python frames only, ``--native`` off). Writes one collapsed-stack file per process
(``--out``/{worker,requester,client}.txt) and prints each process's top functions by own time and by time
including callees, which is what ``bench/RESULTS.md`` quotes.

Needs ``py-spy`` (``pip install py-spy``; it samples by ptrace, so root or ``ptrace_scope`` 0).
    .venv/bin/python bench/profile_overhead.py [--concurrency 128] [--seconds 20] [--out /tmp/prof] [--top 12]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import trio
from bench_overhead import mesh_round  # bench/bench_overhead.py (the script directory is on sys.path)
from sse_client import SSEClient

from cocoon_node.cluster import Cluster, wait_for_workers

#: Leaf frames where a thread waits rather than computes (epoll with a timeout, idle worker threads).
IDLE_LEAVES = ("EpollIOManager.get_events", "Condition.wait", "WorkerThread._work", "Event.wait (threading")
#: Frames every stack of the event loop shares: left out of the "including callees" list.
GENERIC = ("_run_module_as_main", "_run_code", "<module>", "main (", "cmd_run", "run (_run.py)",
           "unrolled_run", "Thread.", "profile_overhead")


SOCKET_CALLS = "sendto,recvfrom,sendmsg,recvmsg,write,read"


def syscall_counts(summary: Path) -> dict[str, int]:
    """Calls per syscall from ``strace -c`` output."""
    counts: dict[str, int] = {}
    for line in summary.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in SOCKET_CALLS.split(",") and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


def _frame(f: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``."""
    name, _, where = f.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]}" + ")" if where else f


def _package(f: str) -> str:
    """The library (or our package) a frame's file belongs to, from its path."""
    where = f.partition(" (")[2]
    parts = where.split(":")[0].split("/")
    if parts[0] == "cocoon_node" and len(parts) > 1:
        return "cocoon_node." + parts[1].removesuffix(".py")
    if parts[0] == "libp2p" and len(parts) > 2:
        return "libp2p." + parts[1] + ("." + parts[2] if parts[1] in ("stream_muxer", "security") else "")
    return parts[0].removesuffix(".py") if parts else f


def top_entries(collapsed: Path, n: int) -> dict[str, object]:
    """A py-spy ``--format raw`` file summed up: busy samples (idle waits left out), the top functions by
    own time and by time including callees, and own time per package."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = stack.split(";")
        if any(x in frames[-1] for x in IDLE_LEAVES):
            idle += k
            continue
        total += k
        own[_frame(frames[-1])] += k
        packages[_package(frames[-1])] += k
        for f in {_frame(x) for x in frames}:
            if not any(g in f for g in GENERIC):
                incl[f] += k
    return {"busy": total, "idle": idle, "own": own.most_common(n), "incl": incl.most_common(n),
            "packages": packages.most_common(n)}


def report(name: str, summary: dict[str, object]) -> None:
    total = int(summary["busy"])  # type: ignore[call-overload]
    print(f"\n== {name}: {total} busy samples ({summary['idle']} idle left out)")
    for key, title in (("own", "own time"), ("incl", "including callees"), ("packages", "own time by package")):
        print(f"  {title}:")
        for f, k in summary[key]:  # type: ignore[attr-defined]
            print(f"    {100 * k / max(total, 1):5.1f}%  {f}")


async def main_async(args: argparse.Namespace) -> None:
    model = "synthetic-echo"
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="profile-overhead-") as tmp:
        cluster = Cluster(Path(tmp))
        async with cluster.running():
            worker = await cluster.start_node("worker", [
                "--worker", "--local-cluster", "--backend", "synthetic", "--tee", "dev", "--model", model,
                "--synthetic-rate", str(args.rate), "--max-concurrent", str(args.concurrency)])
            req = await cluster.start_node("requester", ["--requester", "--local-cluster", "--allow-dev-tee",
                                                         "--api-port", "0", "--bootstrap", worker.addr])
            await wait_for_workers(cluster, "requester", 1, timeout=60, model=model)
            client = SSEClient(req.ready["api_url"])
            pids = {"worker": worker.process.pid, "requester": req.process.pid,  # type: ignore[union-attr]
                    "client": os.getpid()}
            try:
                await mesh_round(client, model, args.tokens, args.concurrency)  # warm-up
                if args.strace:  # socket syscalls of the two nodes instead of a profile
                    spies = [subprocess.Popen(["strace", "-c", "-f",  # noqa: ASYNC220 - before the rounds
                                               "-e", "trace=" + SOCKET_CALLS, "-o", str(out / f"{name}.strace"),
                                               "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                             for name, pid in pids.items() if name != "client"]
                else:
                    spies = [subprocess.Popen([args.py_spy, "record",  # noqa: ASYNC220 - before the rounds
                                               "--pid", str(pid), "--duration", str(args.seconds), "--format",
                                               "raw", "--rate", "100", "--function",
                                               "--output", str(out / f"{name}.txt")],
                                              stdout=subprocess.DEVNULL, stderr=(out / f"{name}.err").open("wb"))
                             for name, pid in pids.items()]
                rounds = 0
                await trio.sleep(1)  # let the tracers attach
                deadline = trio.current_time() + args.seconds
                while trio.current_time() < deadline:  # whole rounds only
                    await mesh_round(client, model, args.tokens, args.concurrency)
                    rounds += 1
                if args.strace:
                    for spy in spies:
                        spy.send_signal(signal.SIGINT)
                for spy in spies:
                    await trio.to_thread.run_sync(spy.wait)
            finally:
                await client.aclose()
    print(f"{rounds} rounds of {args.concurrency} streams while sampling")
    if args.strace:
        for name in ("worker", "requester"):
            calls = syscall_counts(out / f"{name}.strace")
            # Whole rounds only were traced (tracing stops after the last one): calls per request.
            print(f"{name}: " + ", ".join(f"{k} {v / (rounds * args.concurrency):.1f}" for k, v in calls.items())
                  + " per request")
        return
    for name in pids:
        report(name, top_entries(out / f"{name}.txt", args.top))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", default="/tmp/cocoon-profile")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--strace", action="store_true", help="count the nodes' socket syscalls instead (strace -c)")
    p.add_argument("--summarize", metavar="DIR", help="only summarize the profiles already in DIR")
    args = p.parse_args()
    if args.summarize:
        for name in ("worker", "requester", "client"):
            report(name, top_entries(Path(args.summarize) / f"{name}.txt", args.top))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
