"""NETSIM-ONLY: scenarios on network namespaces (``[topology]``): relays, NATs, real partitions, what it all did.

With a ``[topology]`` every node of the run gets its own namespace and address (netsim/topology.py), public or
behind a NAT gateway; the cluster runs through :class:`netsim.nscluster.NamespacedCluster`. Nodes run without
``--local-cluster``: each has its own IP, so GossipSub's IP-colocation scoring and eclipse protection stay on.
``[cluster] relays = N`` starts N public ``--relay`` nodes first; they are everyone's bootstrap peers.
Partitions become nftables drops between the two sides (hosts, relays or whole NATs); ``relay:busiest`` (kill)
and ``relay:of:NODE`` (a partition's other side) pick their relay when the fault fires.

:class:`NatPlan` also watches the NAT'd workers (reachability, relay reservations, what requesters list) and
after the run says per request how it went (direct, hole-punched, relayed), whether each worker was attested
over its path, and how long workers took to be reachable again after a relay was killed or cut off.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import trio

from netsim.netns import NetnsRun, unavailable_reason
from netsim.nscluster import NamespacedCluster
from netsim.nsforward import Forwarder
from netsim.topology import PUBLIC, Network, Topology

if TYPE_CHECKING:
    from netsim.context import SimContext
    from netsim.lifecycle import Lifecycle
    from netsim.scenario import Fault, Scenario
    from netsim.simdata import SimData


def node_names(s: Scenario) -> list[str]:
    return ([f"relay{i}" for i in range(1, s.relays + 1)] + [f"requester{i}" for i in range(1, s.requesters + 1)]
            + [f"{g.name}{i}" for g in s.workers for i in range(1, g.count + 1)])


def placement(s: Scenario, name: str) -> str:
    topo: Topology = s.topology
    group = re.sub(r"\d+$", "", name)
    return topo.place.get(name) or topo.place.get(group) or PUBLIC


def topology_problems(s: Scenario) -> list[str]:
    out = []
    if s.shaping != "none":
        out.append('topology: latency shaping is not combined with namespaces (no sch_netem here, and the shaped '
                   'transport cannot hole-punch); use shaping = "none" and topology.loss for real loss')
    if any(x is not None for x in (s.churn, s.flooder, s.nonpayer, s.lowball, s.voucherless)):
        out.append("topology: churn, flooder, nonpayer, lowball and voucherless are not run on namespaces yet")
    if any(g.pooled or g.adversary_kind for g in s.workers):
        out.append("topology: pooled and adversarial workers are not run on namespaces yet")
    names = set(node_names(s))
    nats = {n.name for n in s.topology.nats}
    groups = {g.name for g in s.workers}
    for key in s.topology.place:
        if key not in names and key not in groups:
            out.append(f"topology.place.{key}: no node or worker group of that name")
    for key in s.topology.loss:
        if key not in names and key not in nats:
            out.append(f"topology.loss.{key}: no node or NAT of that name")
    if not any(placement(s, n) == PUBLIC for n in names):
        out.append("topology: at least one node must be public (someone has to be dialable)")
    for f in s.faults:
        for t in (*f.targets, *f.against):
            if t.startswith("relay:"):
                ok = t == "relay:busiest" or (t.startswith("relay:of:") and t.removeprefix("relay:of:") in names)
                if not ok:
                    out.append(f"faults at {f.at}: {t!r}: use relay:busiest or relay:of:NODE")
            elif t not in names and t not in nats:
                out.append(f"faults at {f.at}: no node or NAT named {t!r}")
    return out


def skipped_report(s: Scenario, seed: int) -> dict[str, Any] | None:
    """The report of a [topology] scenario that cannot run here (None when it can)."""
    reason = unavailable_reason()
    if reason is None:
        return None
    why = f"scenario {s.name} needs network namespaces: {reason}"
    return {"scenario": s.name, "seed": seed, "skipped": why, "plots": None,
            "invariants": [{"name": "namespaces_available", "verdict": "SKIP", "detail": why}]}


@dataclass
class Cut:
    at: float
    healed: float | None
    side_a: list[str]
    side_b: list[str]


@dataclass
class NatPlan:
    """The namespace side of one run (see the module docstring)."""

    scenario: Scenario
    network: Network | None = None
    polls: list[dict[str, Any]] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    kills: list[tuple[float, str]] = field(default_factory=list)
    cuts: list[Cut] = field(default_factory=list)
    reachable_after_s: float | None = None   # after discovery converged: every worker has a way in

    @asynccontextmanager
    async def running(self, ctx: SimContext) -> AsyncIterator[None]:
        """Namespaces, NAT gateways and forwarders for the whole run, torn down after it (crash included: the
        run id names all of it, and the next run sweeps what a dead one left). Swaps in the cluster that starts
        every node inside its namespace."""
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"scenario {self.scenario.name} needs network namespaces: {reason}")
        async with NetnsRun() as run, Forwarder().running() as forwarder:
            self.network = Network(run, self.scenario.topology)
            await self.network.build([(n, placement(self.scenario, n)) for n in node_names(self.scenario)])
            ctx.cluster = NamespacedCluster(ctx.base_dir, self.network, forwarder)
            ctx.event("namespaces", "-", run_id=run.run_id, swept_dead_runs=run.swept,
                      hosts={n: {"ip": h.ip, "nat": h.nat, "seen_as": h.visible_ip}
                             for n, h in self.network.hosts.items()})
            yield

    def is_public(self, name: str) -> bool:
        return self.network is None or self.network.hosts[name].nat is None

    async def start_relays(self, ctx: SimContext, lifecycle: Lifecycle) -> None:
        """The public ``--relay`` nodes, first: everyone else bootstraps from them."""
        from netsim.simdata import SimNode

        for i in range(1, self.scenario.relays + 1):
            name = f"relay{i}"
            node = await ctx.cluster.start_node(name, ["--relay", *lifecycle.bootstrap_args()],
                                                timeout=self.scenario.start_timeout, command=lifecycle.command())
            ctx.data.nodes[name] = SimNode(name, "relay", None, peer_id=node.peer_id, state="up")

    # ----- faults ------------------------------------------------------------------------------------------
    async def _resolve(self, ctx: SimContext, target: str) -> str:
        relays = [n for n in ctx.data.nodes.values() if n.role == "relay" and n.state == "up"]
        if not target.startswith("relay:") or not relays:
            return target
        holders: Counter[str] = Counter()
        owner = target.removeprefix("relay:of:") if target.startswith("relay:of:") else None
        by_peer = {n.peer_id: n.name for n in relays}
        workers = [name for name, node in ctx.data.nodes.items()
                   if node.role == "worker" and node.state == "up" and (owner is None or name == owner)]
        statuses: dict[str, dict[str, Any]] = {}
        with trio.move_on_after(3):  # the fault is due now: ask everyone at once, briefly
            async with trio.open_nursery() as nursery:
                for name in workers:
                    nursery.start_soon(self._poll_one, ctx, name, statuses)
        for st in statuses.values():
            client = (st.get("connectivity") or {}).get("relay_client") or {}
            for r in client.get("reservations", []):
                if r["relay"] in by_peer:
                    holders[by_peer[r["relay"]]] += 1
        return holders.most_common(1)[0][0] if holders else relays[0].name

    async def resolve(self, ctx: SimContext, f: Fault) -> Fault:
        targets = tuple([await self._resolve(ctx, t) for t in f.targets])
        against = tuple([await self._resolve(ctx, t) for t in f.against])
        if f.action == "kill":
            for t in targets:
                if t.startswith("relay"):
                    self.kills.append((ctx.now(), t))
        return replace(f, targets=targets, against=against)

    async def partition(self, ctx: SimContext, f: Fault) -> None:
        assert self.network is not None and f.duration is not None
        members = set(self.network.hosts) | set(self.network.gateways)
        side_a = list(f.targets)
        side_b = list(f.against) or sorted(members - set(side_a))
        tag = await self.network.partition(side_a, side_b)
        cut = Cut(ctx.now(), None, side_a, side_b)
        self.cuts.append(cut)
        ctx.event("partition", ",".join(side_a), side_a=side_a, side_b=side_b, duration=f.duration,
                  layer="nftables drops in the namespaces (real packets lost, connections time out)")
        await trio.sleep(f.duration)
        await self.network.heal(tag)
        cut.healed = ctx.now()
        ctx.event("heal", ",".join(side_a))

    async def wait_reachable(self, ctx: SimContext, bound: float) -> None:
        """Before the workload: every requester lists every worker with a way in (an address or a path)."""
        started = trio.current_time()
        workers = {n.peer_id for n in ctx.data.nodes.values() if n.role == "worker" and n.state == "up"}
        with trio.move_on_after(bound):
            while True:
                statuses: dict[str, dict[str, Any]] = {}
                async with trio.open_nursery() as nursery:
                    for name in ctx.live_requesters():
                        nursery.start_soon(self._poll_one, ctx, name, statuses)
                ready = {name: {w["peer_id"] for w in st.get("workers", []) if w.get("addrs") or w.get("path")}
                         for name, st in statuses.items()}
                if len(ready) == len(ctx.live_requesters()) and all(workers <= r for r in ready.values()):
                    self.reachable_after_s = round(trio.current_time() - started, 2)
                    ctx.event("reachable", "-", after_s=self.reachable_after_s,
                              note="every requester lists every worker with an address or a path")
                    return
                await trio.sleep(0.25)
        ctx.event("not_reachable", "-", bound_s=bound)

    # ----- watching -------------------------------------------------------------------------------------------
    @staticmethod
    async def _poll_one(ctx: SimContext, name: str, into: dict[str, dict[str, Any]]) -> None:
        st = await ctx.cluster.try_status(name, timeout=3)
        if st is not None:
            into[name] = st

    async def watch(self, ctx: SimContext, interval: float = 0.5) -> None:
        """Poll NAT'd workers (reservations, reachability) and requesters (what they list) all run long."""
        assert self.network is not None
        private = {n: h.ip for n, h in self.network.hosts.items() if h.nat is not None}
        while True:
            t = ctx.now()
            names = [n.name for n in ctx.data.nodes.values() if n.state == "up" and n.role in ("worker", "requester")]
            statuses: dict[str, dict[str, Any]] = {}

            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(self._poll_one, ctx, name, statuses)
            by_peer = {n.peer_id: n.name for n in ctx.data.nodes.values()}
            for name, st in statuses.items():
                conn = st.get("connectivity") or {}
                if ctx.data.nodes[name].role == "worker":
                    client = conn.get("relay_client") or {}
                    self.polls.append({
                        "t": t, "worker": name, "status": (conn.get("reachability") or {}).get("status"),
                        "relays": sorted(by_peer.get(r["relay"], r["relay"]) for r in client.get("reservations", [])),
                        "advertised": conn.get("advertised", [])})
                else:
                    for w in st.get("workers", []):
                        wname = by_peer.get(w["peer_id"], w["peer_id"])
                        ip = private.get(wname)
                        if ip and any(f"/{ip}/" in a for a in w.get("addrs", [])):
                            self.leaks.append(f"t={t}: {name} lists {wname} at its private address {ip}")
                        self.polls.append({"t": t, "requester": name, "lists": wname, "path": w.get("path"),
                                           "addrs": w.get("addrs", [])})
            await trio.sleep(interval)


def report(plan: NatPlan, data: SimData) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The report's ``nat`` section and its invariants."""
    assert plan.network is not None
    net, s = plan.network, data.scenario
    kind = {h: (net.gateways[x.nat].nat.kind if x.nat else "public") for h, x in net.hosts.items()}
    names = {n.peer_id: n.name for n in data.nodes.values()}
    per_request = []
    paths: Counter[str] = Counter()
    pairs: Counter[tuple[str, str, str]] = Counter()
    for r in sorted(data.results, key=lambda r: r.index):
        path = r.extra.get("path") or ("-" if not r.ok else "unknown")
        worker = names.get(r.worker or "", r.worker or "-")
        per_request.append({"index": r.index, "t": round(r.started, 2), "requester": r.requester, "worker": worker,
                            "path": path, "ok": r.ok, "cause": r.cause})
        if r.ok:
            paths[path] += 1
            pairs[(r.requester, worker, path)] += 1
    out: list[dict[str, str]] = []

    def add(name: str, verdict: str, detail: str) -> None:
        out.append({"name": name, "verdict": verdict, "detail": detail})

    # A relayed answer already streaming when its relay is SIGKILLed dies with it: a requester never replays an
    # answer that has started (the client has its first tokens). Those are reported, not hidden; every other
    # request must be served.
    kill_times = [t for t, _ in plan.kills]
    cut_mid_stream = [r for r in data.results if not r.ok and r.extra.get("path") == "relayed"
                      and r.ttft_s is not None and any(r.started <= t <= r.ended for t in kill_times)]
    failed = [r for r in data.results if not r.ok and r not in cut_mid_stream]
    add("nat_every_request_served", "FAIL" if failed or not data.results else "PASS",
        f"{len(data.results) - len(failed) - len(cut_mid_stream)}/{len(data.results)} served; paths {dict(paths)}"
        + (f"; {len(cut_mid_stream)} cut mid-stream by the relay kill (streaming over it at that moment): "
           f"{[(r.index, r.cause) for r in cut_mid_stream]}" if cut_mid_stream else "")
        + (f"; failed: {[(r.index, r.cause) for r in failed[:10]]}" if failed else ""))
    add("nat_no_private_address_announced", "FAIL" if plan.leaks else "PASS",
        "; ".join(plan.leaks[:5]) or f"no requester ever listed a NAT'd worker at its private address "
        f"({sum(1 for p in plan.polls if 'requester' in p)} listings checked)")

    attested: dict[str, Any] = {}
    problems = []
    for (req, worker, path), count in sorted(pairs.items()):
        st = data.final_status.get(req) or data.last_status.get(req) or {}
        peer = next((p for p, n in names.items() if n == worker), "")
        verdict = (st.get("attestation") or {}).get(peer) or {}
        attested[f"{req}->{worker}"] = {"path": path, "requests": count, "verified": bool(verdict.get("ok"))}
        if not verdict.get("ok"):
            problems.append(f"{req} served by {worker} over {path} without a passing verdict")
    add("nat_workers_attested_over_their_paths", "FAIL" if problems or not attested else "PASS",
        "; ".join(problems) or f"{len(attested)} requester->worker pairs, each verified before its first request")

    recovery = _relay_recovery(plan, data)
    bound = s.invariants.relay_recovery_bound
    slow = [f"{w}: {v}" for w, v in recovery.items() if v.get("reachable_again_s") is None
            or v["reachable_again_s"] > bound]
    if plan.kills:
        add("nat_reachable_after_relay_kill", "FAIL" if slow or not recovery else "PASS",
            (f"not within {bound}s: {slow}" if slow else
             f"{len(recovery)} worker(s) re-reserved and listed through a live relay within "
             f"{max(v['reachable_again_s'] for v in recovery.values()):.1f}s (bound {bound}s)") if recovery
            else "no worker held a reservation on the killed relay")
    cuts = _cuts(plan)
    for cut in cuts:
        for worker, v in cut["workers"].items():
            dropped, back = v["reservation_dropped_after_s"], v["reserved_again_after_heal_s"]
            ok = dropped is not None and back is not None and back <= bound
            add("nat_partition_from_relay", "PASS" if ok else "FAIL",
                f"{worker} (NAT {cut['side_a']} cut from {cut['side_b']} for "
                f"{(cut['healed'] or 0) - cut['at']:.1f}s): reservation dropped after {dropped}s, "
                f"reserved again {back}s after the heal (bound {bound}s)")
    section = {
        "reachable_after_convergence_s": plan.reachable_after_s,
        "cut_by_relay_kill": [r.index for r in cut_mid_stream],
        "hosts": {h: {"ip": x.ip, "nat": x.nat, "nat_kind": kind[h], "seen_as": x.visible_ip}
                  for h, x in net.hosts.items()},
        "paths": dict(paths),
        "paths_by_pair": [{"requester": r, "worker": w, "path": p, "requests": c} for (r, w, p), c in pairs.items()],
        "attested": attested,
        "relay_kills": [{"t": t, "relay": r} for t, r in plan.kills],
        "recovery_after_relay_kill": recovery,
        "partitions": cuts,
        "final_reachability": {n: ((data.final_status.get(n) or {}).get("connectivity") or {}).get("reachability")
                               for n in net.hosts if data.nodes.get(n) and data.nodes[n].role == "worker"},
        "per_request": per_request,
    }
    return section, out


def _relay_recovery(plan: NatPlan, data: SimData) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    worker_polls = [p for p in plan.polls if "worker" in p]
    for t_kill, relay in plan.kills:
        before = {}
        for p in worker_polls:
            if p["t"] < t_kill:
                before[p["worker"]] = p
        for worker, p in before.items():
            if relay not in p["relays"]:
                continue
            after = [q for q in worker_polls if q["worker"] == worker and q["t"] >= t_kill]
            reserved = next((q["t"] for q in after if q["relays"] and relay not in q["relays"]), None)
            listings = [q for q in plan.polls if q.get("lists") == worker and q["t"] >= t_kill]
            live = {n.name for n in data.nodes.values() if n.role == "requester" and n.state == "up"}
            relisted = None
            for t in sorted({q["t"] for q in listings}):
                at_t = {q["requester"]: q for q in listings if q["t"] == t}
                if live <= set(at_t) and all(any(relay_peer(data, relay) not in a for a in q["addrs"] if
                                                 "/p2p-circuit" in a) or q["path"] in ("direct", "hole-punched")
                                             for q in at_t.values()):
                    relisted = t
                    break
            served = next((r.started for r in sorted(data.results, key=lambda r: r.started)
                           if r.ok and r.started >= t_kill and data.nodes.get(worker)
                           and r.worker == data.nodes[worker].peer_id), None)
            again = max(x for x in (reserved, relisted) if x is not None) if reserved and relisted else None
            out[worker] = {"relay_killed": relay, "killed_at": t_kill,
                           "re_reserved_s": round(reserved - t_kill, 2) if reserved else None,
                           "listed_via_live_path_s": round(relisted - t_kill, 2) if relisted else None,
                           "reachable_again_s": round(again - t_kill, 2) if again else None,
                           "first_request_served_s": round(served - t_kill, 2) if served is not None else None}
    return out


def relay_peer(data: SimData, relay: str) -> str:
    node = data.nodes.get(relay)
    return node.peer_id if node else relay


def _cuts(plan: NatPlan) -> list[dict[str, Any]]:
    out = []
    assert plan.network is not None
    for cut in plan.cuts:
        workers = [h for h in plan.network.hosts if plan.network.hosts[h].nat in cut.side_a or h in cut.side_a]
        detail: dict[str, Any] = {}
        for w in workers:
            polls = [p for p in plan.polls if p.get("worker") == w]
            held: list[str] = next((p["relays"] for p in reversed(polls) if p["t"] < cut.at), [])
            lost = next((p["t"] for p in polls if p["t"] >= cut.at and not set(held) & set(p["relays"])), None)
            back = next((p["t"] for p in polls if cut.healed is not None and p["t"] >= cut.healed
                         and p["relays"]), None)
            detail[w] = {"relays_before": held,
                         "reservation_dropped_after_s": round(lost - cut.at, 2) if lost is not None else None,
                         "reserved_again_after_heal_s": round(back - cut.healed, 2)
                         if back is not None and cut.healed is not None else None}
        out.append({"at": cut.at, "healed": cut.healed, "side_a": cut.side_a, "side_b": cut.side_b,
                    "workers": detail})
    return out
