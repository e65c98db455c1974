"""Observation in a simulation run: poll every live requester's worker list, resolve expectations, measure
convergence, sample each process's CPU and memory, and collect the final state.

What the run *expects* is recorded by :meth:`netsim.context.SimContext.expect` when an event happens; an
expectation resolves here, at the first poll where every requester that should see it agrees.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from netsim.context import SimContext


class Observer:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        # (time.monotonic(), SimCluster.usage()) at cluster up, at workload start and at workload end.
        self.usage: list[tuple[float, dict[str, dict[str, Any]]]] = []

    # ----- polling ---------------------------------------------------------------------------------------
    async def poll_once(self) -> dict[str, set[str]]:
        """One round of status polls of every live requester: which workers each lists now."""
        ctx, data = self.ctx, self.ctx.data
        listed: dict[str, set[str]] = {}
        t = ctx.now()

        async def one(name: str) -> None:
            st = await ctx.cluster.try_status(name)
            if st is None:
                return
            data.last_status[name] = st
            listed[name] = {w["peer_id"] for w in st.get("workers", [])}
            data.polls.append({"t": t, "node": name, "workers": len(listed[name]),
                               "announcements": st.get("announcements"), "requester": st.get("requester")})

        async with trio.open_nursery() as nursery:
            for name in ctx.live_requesters():
                nursery.start_soon(one, name)
        self._resolve(t, listed)
        live = set(ctx.live_workers().values())
        for name, ids in listed.items():
            if name not in data.requester_converged and live <= ids and name in data.requester_ready:
                data.requester_converged[name] = round(trio.current_time() - data.requester_ready[name], 2)
        return listed

    def converged(self, listed: dict[str, set[str]]) -> bool:
        live = set(self.ctx.live_workers().values())
        reqs = self.ctx.live_requesters()
        return bool(reqs) and all(r in listed and live <= listed[r] for r in reqs)

    def _resolve(self, t: float, listed: dict[str, set[str]]) -> None:
        reqs = [r for r in self.ctx.live_requesters() if r in listed]
        if not reqs:
            return
        for e in self.ctx.data.expectations:
            if e.resolved_at is not None or e.superseded or t < e.t:
                continue
            seen_by = reqs if e.observers is None else [r for r in reqs if r in e.observers]
            if not seen_by:
                continue
            if e.present and all(e.peer_id in listed[r] for r in seen_by):
                e.resolved_at = t
            elif not e.present and all(e.peer_id not in listed[r] for r in seen_by):
                e.resolved_at = t

    async def poller(self) -> None:
        while True:
            await self.poll_once()
            await trio.sleep(self.ctx.s.poll_interval)

    async def wait_converged(self, bound: float) -> float | None:
        started = trio.current_time()
        with trio.move_on_after(bound):
            while True:
                if self.converged(await self.poll_once()):
                    return round(trio.current_time() - started, 2)
                await trio.sleep(0.1)
        return None

    # ----- resources and the final state ----------------------------------------------------------------------
    def sample_usage(self) -> None:
        self.usage.append((time.monotonic(), self.ctx.cluster.usage()))

    def resources(self) -> dict[str, dict[str, Any]]:
        return resource_use(self.usage)

    async def collect_final(self) -> None:
        """Every live node's status (host-pool workers excepted), and what the fake upstream was asked."""
        ctx = self.ctx

        async def one(name: str) -> None:
            ctx.data.final_status[name] = await ctx.cluster.try_status(name, timeout=10)

        async with trio.open_nursery() as nursery:
            for name, n in ctx.data.nodes.items():
                if n.state == "up" and (not n.pooled or n.role == "requester"):
                    nursery.start_soon(one, name)
        if ctx.fake is not None:
            ctx.data.fake_upstream_requests = ctx.fake.requests


def resource_use(samples: list[tuple[float, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """CPU (% of one core) per process over the discovery phase (cluster up -> converged) and the workload
    phase, from three usage snapshots; RSS from the last one, also per node for host pools."""
    (t0, u0), (t1, u1), (t2, u2) = samples
    out: dict[str, dict[str, Any]] = {}
    def pct(name: str, a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], dt: float) -> float | None:
        if name not in a or name not in b or a[name]["pid"] != b[name]["pid"] or dt <= 0:
            return None  # not running in both snapshots (or restarted in between)
        return round(100 * (b[name]["cpu_s"] - a[name]["cpu_s"]) / dt, 1)

    for name, last in u2.items():
        rss_mb = last["rss_bytes"] / 2**20
        out[name] = {"nodes": last["nodes"], "cpu_pct_discovery": pct(name, u0, u1, t1 - t0),
                     "cpu_pct_workload": pct(name, u1, u2, t2 - t1), "rss_mb": round(rss_mb, 1),
                     "rss_mb_per_node": round(rss_mb / last["nodes"], 1)}
    return out

