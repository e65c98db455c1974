"""The simulation run: start the cluster, converge, play workload + faults + churn + junk, observe, collect.

Time zero of the timeline (``t``) is the start of the workload; fault times in the scenario are relative to
it. Cluster set-up happens before, and its discovery convergence is measured on its own.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from cocoon_node.config import WorkerSection
from cocoon_node.mesh.announce import MAX_CLOCK_SKEW as ANNOUNCE_CLOCK_SKEW
from netsim.adversary import FakeUpstream, JunkFlooder
from netsim.links import LinkPlan, probe_netem, shaping_note
from netsim.natsim import NatPlan
from netsim.procs import SimCluster
from netsim.scenario import ALL_REQUESTERS, Fault, Links, NonPayer, Scenario, WorkerGroup
from netsim.workload import PlannedRequest, RequestResult, plan, run_request

log = logging.getLogger(__name__)


@dataclass
class SimNode:
    name: str
    role: str                      # "worker" or "requester"
    group: str | None
    adversarial: bool = False
    pooled: bool = False
    peer_id: str = ""
    state: str = "down"            # up | stopped | dead | left
    api_url: str | None = None
    # Which adversary (bad_model_hash, overclaim, stale_close, nonpayer), None for honest nodes.
    adversary: str | None = None


@dataclass
class Expectation:
    """After an event at ``t``, the peer should (dis)appear in every live requester's worker list."""

    t: float
    name: str
    peer_id: str
    present: bool
    cause: str
    resolved_at: float | None = None
    superseded: bool = False
    # Requesters that should see it; None: every live requester. A partition hides a worker only from the
    # requesters on the other side.
    observers: tuple[str, ...] | None = None


@dataclass
class SimData:
    scenario: Scenario
    seed: int
    setup_s: float = 0.0
    initial_convergence_s: float | None = None
    final_convergence_s: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    expectations: list[Expectation] = field(default_factory=list)
    results: list[RequestResult] = field(default_factory=list)
    polls: list[dict[str, Any]] = field(default_factory=list)
    final_status: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    last_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, SimNode] = field(default_factory=dict)
    flooder: dict[str, Any] | None = None
    fake_upstream_requests: int | None = None
    allowed_hashes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    workload_duration: float = 0.0
    requester_ready: dict[str, float] = field(default_factory=dict)
    # Seconds from a requester's ready line until it first listed every live worker.
    requester_converged: dict[str, float] = field(default_factory=dict)
    converged_after_setup_s: float | None = None
    # The shared EMULATED chain at the end of the run: total supply view and transaction count.
    chain_supply: dict[str, int] | None = None
    chain_transactions: int | None = None
    # Per process (host pool or single node): CPU use in the discovery and workload phases, RSS at the end.
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Which layer shaped the links and why (the report's ``shaping`` line).
    shaping: str = 'none (not requested: scenario shaping = "none")'
    # Requests played through the non-paying requesters (kept apart from the honest workload's results).
    nonpayer_results: list[RequestResult] = field(default_factory=list)
    # Stale closes by rogue workers: channel address -> what the chain says at the end (status, payouts).
    stale_settlements: dict[str, dict[str, Any]] = field(default_factory=dict)
    # [topology] runs: the namespace side (netsim/natsim.py), reported in the report's "nat" section.
    nat: NatPlan | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Simulation:
    def __init__(self, scenario: Scenario, *, seed: int, base_dir: Path) -> None:
        self.s = scenario
        self.data = SimData(scenario, seed)
        self.base_dir = base_dir
        self.clock_skewed: set[str] = set()  # workers restarted with a clock their peers must reject
        self.cluster = SimCluster(base_dir)
        self.rng = random.Random(seed)
        self.t0 = 0.0                       # trio.current_time() at workload start (trio's clock, not time's)
        self.fake: FakeUpstream | None = None
        self._churn_count = 0
        self.links: LinkPlan | None = None
        if scenario.shaping == "auto":
            self.links = LinkPlan(base_dir / "links.json", scenario.links or Links(), seed)
        self.nat = NatPlan(scenario) if scenario.topology is not None else None  # nodes in namespaces

    # ----- helpers ---------------------------------------------------------------------------------------
    def now(self) -> float:
        return round(trio.current_time() - self.t0, 3)

    def event(self, kind: str, target: str, **detail: Any) -> None:
        self.data.events.append({"t": self.now(), "kind": kind, "target": target, **detail})
        log.info("t=%.1f %s %s %s", self.now(), kind, target, detail or "")

    def live_workers(self) -> dict[str, str]:
        """name -> peer id of workers that are running, not frozen and not clock-skewed (those that should be
        listed)."""
        return {n.name: n.peer_id for n in self.data.nodes.values()
                if n.role == "worker" and n.state == "up" and n.name not in self.clock_skewed}

    def live_requesters(self) -> list[str]:
        return [n.name for n in self.data.nodes.values() if n.role == "requester" and n.state == "up"]

    def bootstrap_args(self, exclude: str = "") -> list[str]:
        ups = [n for n in self.data.nodes.values() if n.state == "up" and n.name != exclude and not n.adversarial]
        if self.nat is not None:  # behind a NAT a node's listen address is private: bootstrap from public ones
            ups = [n for n in ups if self.nat.is_public(n.name)]
        out: list[str] = []
        for n in ups[:3]:
            out += ["--bootstrap", self.cluster.nodes[n.name].addr]
        return out

    def shaping_args(self) -> list[str]:
        return ["--netsim-link-table", str(self.links.path)] if self.links is not None else []

    def register_link_ends(self, name: str) -> None:
        """Tell the link table where ``name`` listens now (after a start or a restart)."""
        if self.links is None:
            return
        proc, node = self.cluster.nodes[name], self.data.nodes[name]
        groups = {node.group} if node.group else set()
        if node.role == "requester":
            groups.add(ALL_REQUESTERS)
        self.links.register(name, proc.peer_id, [str(a) for a in proc.ready.get("addrs", [])], groups)
        self.links.write()

    def worker_args(self, g: WorkerGroup) -> list[str]:
        args = ["--worker", "--local-cluster", "--tee", g.tee, "--model", g.model,
                "--price-prompt", str(g.price_prompt), "--price-completion", str(g.price_completion),
                "--max-concurrent", str(g.max_concurrent), *self.shaping_args(), *g.extra_args]
        if g.adversary_kind == "bad_model_hash":
            assert self.fake is not None and self.fake.url is not None
            return [*args, "--backend", "openai-upstream", "--upstream-url", self.fake.url + "/v1"]
        args += ["--backend", g.backend]
        if g.backend == "synthetic":
            args += ["--synthetic-rate", str(g.synthetic_rate)]
        return args

    async def start_worker(self, name: str, g: WorkerGroup) -> None:
        kind = g.adversary_kind
        command = None
        if kind in ("overclaim", "stale_close"):  # NETSIM-ONLY rogue worker: real node code, one behaviour changed
            command = [sys.executable, "-m", "netsim.rogue", "--kind", kind,
                       "--overclaim-tokens", str(g.overclaim_tokens), "--stale-after", str(g.stale_after)]
        node = await self.cluster.start_node(name, [*self.worker_args(g), *self.bootstrap_args()],
                                             timeout=self.s.start_timeout, command=command)
        self.data.nodes[name] = SimNode(name, "worker", g.name, kind is not None, False, node.peer_id, "up",
                                        adversary=kind)
        self.register_link_ends(name)

    # ----- set-up ----------------------------------------------------------------------------------------
    async def setup(self, nursery: trio.Nursery) -> None:
        s = self.s
        started = time.monotonic()
        if self.nat is not None:
            await self.nat.start_relays(self)
        if any(g.adversary_kind == "bad_model_hash" for g in s.workers):
            self.fake = FakeUpstream(next(g.model for g in s.workers if g.adversary_kind == "bad_model_hash"))
            await nursery.start(self.fake.run)
        good = [g for g in s.workers if not g.adversary_kind and not g.pooled]
        pooled = [g for g in s.workers if g.pooled]
        bad = [g for g in s.workers if g.adversary_kind]
        # The first good worker seeds the mesh; everyone else bootstraps from whoever is up.
        seed_group = good[0] if good else None
        if seed_group is not None:
            await self.start_worker(f"{seed_group.name}1", seed_group)
        async with trio.open_nursery() as starters:
            for g in good:
                for i in range(1, g.count + 1):
                    if g is seed_group and i == 1:
                        continue
                    starters.start_soon(self.start_worker, f"{g.name}{i}", g)
            for g in pooled:
                for p, first in enumerate(range(1, g.count + 1, g.per_process)):
                    count = min(g.per_process, g.count - first + 1)
                    starters.start_soon(self._start_pool, g, p, first, count)
        async with trio.open_nursery() as starters:
            for g in bad:
                for i in range(1, g.count + 1):
                    starters.start_soon(self.start_worker, f"{g.name}{i}", g)
        # Requesters allow exactly the weight hashes the good workers report in their status.
        hashes: set[str] = set()
        good_names = [n.name for n in self.data.nodes.values() if n.role == "worker" and not n.adversarial]
        for name in good_names[:8] if not pooled else good_names[:2]:
            st = await self.cluster.try_status(name, timeout=10)
            if st and st.get("worker"):
                hashes.add(st["worker"]["model_hash"])
        if not hashes:
            raise RuntimeError("could not read any good worker's model hash from its status")
        self.data.allowed_hashes = sorted(hashes)
        async with trio.open_nursery() as starters:
            for i in range(1, s.requesters + 1):
                starters.start_soon(self.start_requester, f"requester{i}")
            for i in range(1, (s.nonpayer.count if s.nonpayer else 0) + 1):
                starters.start_soon(partial(self.start_requester, f"nonpayer{i}", nonpayer=True))
        self.data.setup_s = round(time.monotonic() - started, 2)

    async def _start_pool(self, g: WorkerGroup, p: int, first: int, count: int) -> None:
        args = [*self.worker_args(g), *self.bootstrap_args()]
        nodes = await self.cluster.start_pool(f"pool-{g.name}-{p}", g.name, count, first, args,
                                              timeout=self.s.start_timeout)
        for n in nodes:
            self.data.nodes[n.name] = SimNode(n.name, "worker", g.name, False, True, n.peer_id, "up")
            self.register_link_ends(n.name)

    async def start_requester(self, name: str, port: int | None = None, *, nonpayer: bool = False) -> None:
        port = port or _free_port()
        args = ["--requester", "--local-cluster", "--allow-dev-tee", "--api-port", str(port),
                *[x for h in self.data.allowed_hashes for x in ("--allowed-model-hash", h)],
                *self.s.requester_args, *self.shaping_args(), *self.bootstrap_args()]
        # NETSIM-ONLY rogue requester: pays prompts, withholds every completion voucher (netsim/rogue.py).
        command = [sys.executable, "-m", "netsim.rogue", "--kind", "nonpayer"] if nonpayer else None
        node = await self.cluster.start_node(name, args, timeout=self.s.start_timeout, command=command)
        self.data.nodes[name] = SimNode(name, "requester", None, adversarial=nonpayer, peer_id=node.peer_id,
                                        state="up", api_url=node.ready["api_url"],
                                        adversary="nonpayer" if nonpayer else None)
        self.register_link_ends(name)
        self.data.requester_ready[name] = trio.current_time()

    # ----- observation -----------------------------------------------------------------------------------
    async def poll_once(self) -> dict[str, set[str]]:
        listed: dict[str, set[str]] = {}
        t = self.now()

        async def one(name: str) -> None:
            st = await self.cluster.try_status(name)
            if st is None:
                return
            self.data.last_status[name] = st
            listed[name] = {w["peer_id"] for w in st.get("workers", [])}
            self.data.polls.append({"t": t, "node": name, "workers": len(listed[name]),
                                    "announcements": st.get("announcements"), "requester": st.get("requester")})

        async with trio.open_nursery() as nursery:
            for name in self.live_requesters():
                nursery.start_soon(one, name)
        self._resolve(t, listed)
        live = set(self.live_workers().values())
        for name, ids in listed.items():
            if name not in self.data.requester_converged and live <= ids and name in self.data.requester_ready:
                self.data.requester_converged[name] = round(trio.current_time() - self.data.requester_ready[name], 2)
        return listed

    def converged(self, listed: dict[str, set[str]]) -> bool:
        live = set(self.live_workers().values())
        reqs = self.live_requesters()
        return bool(reqs) and all(r in listed and live <= listed[r] for r in reqs)

    def _resolve(self, t: float, listed: dict[str, set[str]]) -> None:
        reqs = [r for r in self.live_requesters() if r in listed]
        if not reqs:
            return
        for e in self.data.expectations:
            if e.resolved_at is not None or e.superseded or t < e.t:
                continue
            seen_by = reqs if e.observers is None else [r for r in reqs if r in e.observers]
            if not seen_by:
                continue
            if e.present and all(e.peer_id in listed[r] for r in seen_by):
                e.resolved_at = t
            elif not e.present and all(e.peer_id not in listed[r] for r in seen_by):
                e.resolved_at = t

    def expect(self, name: str, present: bool, cause: str, observers: tuple[str, ...] | None = None) -> None:
        node = self.data.nodes[name]
        if node.role != "worker":
            return
        for e in self.data.expectations:
            if e.name == name and e.resolved_at is None and e.present != present:
                e.superseded = True
        self.data.expectations.append(Expectation(self.now(), name, node.peer_id, present, cause,
                                                  observers=observers))

    async def poller(self) -> None:
        while True:
            await self.poll_once()
            await trio.sleep(self.s.poll_interval)

    async def wait_converged(self, bound: float) -> float | None:
        started = trio.current_time()
        with trio.move_on_after(bound):
            while True:
                if self.converged(await self.poll_once()):
                    return round(trio.current_time() - started, 2)
                await trio.sleep(0.1)
        return None

    # ----- faults, churn ---------------------------------------------------------------------------------
    async def apply_fault(self, f: Fault) -> None:
        await trio.sleep_until(self.t0 + f.at)
        if self.nat is not None:  # namespaces: resolve relay:busiest etc.; partitions are nftables rules
            f = await self.nat.resolve(self, f)
            if f.action == "partition":
                await self.nat.partition(self, f)
                return
        if f.action in ("kill", "term"):
            sig = signal.SIGKILL if f.action == "kill" else signal.SIGTERM
            async with trio.open_nursery() as nursery:
                for name in f.targets:
                    nursery.start_soon(self._take_down, name, sig, "dead", f.action)
            if f.restart_after is not None:
                await trio.sleep(f.restart_after)
                async with trio.open_nursery() as nursery:
                    for name in f.targets:
                        nursery.start_soon(self.restart, name)
        elif f.action == "partition":
            await self.partition(f)
        elif f.action == "skew":
            await self.skew(f)
        else:
            for name in f.targets:
                if self.cluster.signal(name, signal.SIGSTOP):
                    self.data.nodes[name].state = "stopped"
                    self.expect(name, False, f.action)
                    self.event(f.action, name, signal="SIGSTOP", note="silent node, connections stay open")
            assert f.duration is not None
            await trio.sleep(f.duration)
            for name in f.targets:
                if self.cluster.signal(name, signal.SIGCONT):
                    self.data.nodes[name].state = "up"
                    self.expect(name, True, "resume")
                    self.event("resume", name, signal="SIGCONT")

    async def skew(self, f: Fault) -> None:
        """Restart the targets with a skewed wall clock; with a duration, restart them with a true one after it.

        Announcements carry issue and expiry times, and validators allow 30 s of clock skew: a worker more
        than 30 s ahead is rejected as "issued in the future", one behind by its TTL or more as "expired".
        Either way requesters must stop listing it (detected and contained); a smaller skew must change nothing.
        """
        assert f.seconds is not None
        ttl = WorkerSection().announce_ttl
        dropped = f.seconds > ANNOUNCE_CLOCK_SKEW or f.seconds <= -ttl
        for skewed in (True, False) if f.duration is not None else (True,):
            async with trio.open_nursery() as nursery:
                for name in f.targets:
                    nursery.start_soon(self._restart_with_clock, name, f.seconds if skewed else 0.0,
                                       dropped and skewed)
            if skewed and f.duration is not None:
                await trio.sleep(f.duration)

    async def _restart_with_clock(self, name: str, seconds: float, expect_dropped: bool) -> None:
        node = self.data.nodes[name]
        if node.pooled or node.role != "worker":
            self.data.errors.append(f"skew fault on {name} ignored (only separate worker processes)")
            return
        await self._take_down(name, signal.SIGKILL, "dead", "skew")  # a clock change is a restart; be quick
        proc = self.cluster.nodes[name]
        dropped_flags = ("--bootstrap", "--netsim-clock-skew")  # replaced below
        args = [a for a, prev in zip(proc.args, ["", *proc.args], strict=False)
                if a not in dropped_flags and prev not in dropped_flags]
        if seconds:
            args += ["--netsim-clock-skew", str(seconds)]
        try:
            await self.cluster.start_node(name, [*args, *self.bootstrap_args(exclude=name)],
                                          timeout=self.s.start_timeout)
        except Exception as exc:
            self.data.errors.append(f"restart of {name} with a skewed clock failed: {exc}")
            return
        node.state = "up"
        self.register_link_ends(name)
        self.event("clock", name, skew_s=seconds,
                   expected="dropped by requesters" if expect_dropped else "listed as usual")
        if expect_dropped:
            self.clock_skewed.add(name)
        else:
            self.clock_skewed.discard(name)
        self.expect(name, not expect_dropped, f"clock skew {seconds:+.0f}s" if seconds else "clock restored")

    async def partition(self, f: Fault) -> None:
        """Block every link between the targets and the rest (processes keep running), heal after ``duration``.

        Each side's requesters should stop listing the other side's workers (their announcements expire) and
        list them again after the heal; data on connections across the cut is held, not lost, as TCP would.
        """
        assert self.links is not None and f.duration is not None
        side = {t for t in f.targets if t in self.data.nodes}
        token = self.links.partition(side, f"partition at t={f.at}: {sorted(side)} | everyone else")
        self.links.write()
        inside = sorted(n for n in self.data.nodes if n in side)
        outside = sorted(n for n in self.data.nodes if n not in side)
        self.event("partition", ",".join(inside), side_a=inside, side_b=outside, duration=f.duration,
                   layer="shaped links blocked (link table), processes keep running")
        requesters = self.live_requesters()
        affected = []
        for name in sorted(self.live_workers()):
            across = tuple(r for r in requesters if (r in side) != (name in side))
            if not across or name in self.clock_skewed:  # a skewed worker is expected unlisted throughout
                continue
            affected.append(name)
            if f.duration > self.announce_ttl(name) + self.s.poll_interval:
                self.expect(name, False, "partition", observers=across)
            else:  # its last announcement outlives the cut: nobody should drop it
                self.event("partition_too_short", name, ttl_s=self.announce_ttl(name))
        await trio.sleep(f.duration)
        self.links.heal(token)
        self.links.write()
        self.event("heal", ",".join(inside))
        for name in affected:
            if self.data.nodes[name].state == "up":
                self.expect(name, True, "heal")

    def announce_ttl(self, name: str) -> float:
        """How long a worker's announcement stays listed (its group's --announce-ttl, else the default)."""
        from cocoon_node.config import WorkerSection

        group = next((g for g in self.s.workers if g.name == self.data.nodes[name].group), None)
        args = list(group.extra_args) if group is not None else []
        if "--announce-ttl" in args[:-1]:
            return float(args[args.index("--announce-ttl") + 1])
        return float(WorkerSection().announce_ttl)

    async def _take_down(self, name: str, sig: signal.Signals, state: str, why: str) -> None:
        node = self.data.nodes[name]
        if node.pooled:
            self.data.errors.append(f"fault on pooled node {name} ignored (it shares a process)")
            return
        self.event(why, name, signal=signal.Signals(sig).name)
        node.state = state
        self.expect(name, False, why)
        if name in self.cluster.stopped:
            self.cluster.signal(name, signal.SIGCONT)
        try:
            await self.cluster.kill(name, sig)
        except trio.TooSlowError:
            self.data.errors.append(f"{name} did not exit after {signal.Signals(sig).name}; killing")
            await self.cluster.kill(name, signal.SIGKILL)

    async def restart(self, name: str) -> None:
        node = self.data.nodes[name]
        proc = self.cluster.nodes[name]
        args = [a for a in proc.args]
        try:
            if node.role == "requester":
                port = int(str(node.api_url).rsplit(":", 1)[1])
                await self.start_requester(name, port)
            else:
                # Same data dir, so the same identity; fresh bootstrap peers since the old ones may be gone.
                base = [a for a, prev in zip(args, ["", *args], strict=False)
                        if a != "--bootstrap" and prev != "--bootstrap"]
                await self.cluster.start_node(name, [*base, *self.bootstrap_args(exclude=name)],
                                              timeout=self.s.start_timeout)
                node.state = "up"
                self.register_link_ends(name)
        except Exception as exc:
            self.data.errors.append(f"restart of {name} failed: {exc}")
            return
        self.event("restart", name)
        self.expect(name, True, "restart")

    async def churn(self) -> None:
        c = self.s.churn
        assert c is not None
        rng = random.Random(self.data.seed * 7919 + 1)
        plan_: list[tuple[float, str]] = []
        for kind, rate in (("join", c.join_rate), ("leave", c.leave_rate)):
            t = c.start
            while rate > 0:
                t += rng.expovariate(rate)
                if t >= c.end:
                    break
                plan_.append((t, kind))
        template = next(g for g in self.s.workers if g.name == c.template)
        sig = signal.SIGKILL if c.leave_signal.upper() == "KILL" else signal.SIGTERM

        async with trio.open_nursery() as nursery:
            for at, kind in sorted(plan_):
                await trio.sleep_until(self.t0 + at)
                if kind == "join":
                    self._churn_count += 1
                    name = f"churn{self._churn_count}"
                    nursery.start_soon(self._join, name, template)
                else:
                    pool = sorted(n.name for n in self.data.nodes.values()
                                  if n.role == "worker" and n.state == "up" and not n.adversarial
                                  and not n.pooled and (n.group == c.template or n.name.startswith("churn")))
                    if len(pool) <= c.min_workers:
                        self.event("leave_skipped", "-", reason=f"only {len(pool)} workers left")
                        continue
                    nursery.start_soon(self._take_down, rng.choice(pool), sig, "left", "leave")

    async def _join(self, name: str, g: WorkerGroup) -> None:
        try:
            await self.start_worker(name, g)
        except Exception as exc:
            self.data.errors.append(f"churn join {name} failed: {exc}")
            return
        self.data.nodes[name].group = g.name
        self.event("join", name)
        self.expect(name, True, "join")

    async def flood(self) -> None:
        f = self.s.flooder
        assert f is not None
        await trio.sleep_until(self.t0 + f.start)
        victims = [peer_id_bytes(n.peer_id) for n in self.data.nodes.values() if n.role == "worker"]
        flooder = JunkFlooder(self.bootstrap_args()[1::2], victims, random.Random(self.data.seed * 31 + 7), f.kinds)
        self.event("flood_start", "flooder", rate=f.rate)
        try:
            self.data.flooder = await flooder.run(f.duration, f.rate)
        except Exception as exc:
            self.data.errors.append(f"flooder failed: {exc!r}")
            self.data.flooder = {"sent": dict(flooder.sent), "error": repr(exc)}
        self.event("flood_end", "flooder", sent=sum(flooder.sent.values()))

    # ----- rogue payers and payees ------------------------------------------------------------------------
    async def nonpayer_workload(self, np: NonPayer) -> None:
        """Each non-paying requester asks for long answers through its own API; the workers' credit windows
        should end every one of them with a payment error."""
        w = self.s.workload
        names = [n.name for n in self.data.nodes.values() if n.adversary == "nonpayer"]
        rng = random.Random(self.data.seed * 131 + 3)
        async with httpx.AsyncClient(timeout=httpx.Timeout(np.timeout, connect=5.0)) as client:

            async def one(name: str, k: int) -> None:
                api = self.data.nodes[name].api_url
                assert api is not None
                prompt = " ".join(rng.choice(("unpaid", "tokens", "credit", "window")) for _ in range(np.prompt_words))
                req = PlannedRequest(10_000 + k, np.start + k * np.every, 0, prompt, np.max_tokens, np.stream)
                res = await run_request(client, api, name, req, w.model, self.t0, np.timeout)
                self.data.nonpayer_results.append(res)

            async with trio.open_nursery() as nursery:
                for k in range(np.requests):
                    await trio.sleep_until(self.t0 + np.start + k * np.every)
                    for name in names:
                        nursery.start_soon(one, name, k)

    def stale_closers(self) -> list[str]:
        return [n.name for n in self.data.nodes.values() if n.adversary == "stale_close"]

    async def _stale_closes(self) -> list[dict[str, Any]]:
        closes: list[dict[str, Any]] = []
        for name in self.stale_closers():
            st = await self.cluster.try_status(name, timeout=5)
            if st is not None:
                self.data.last_status[name] = st
            st = st or self.data.last_status.get(name) or {}
            closes += [{**c, "worker": name} for c in (st.get("adversary") or {}).get("closes") or []]
        return closes

    def _payer_noticed(self, address: str) -> str | None:
        for name, st in self.data.last_status.items():
            node = self.data.nodes.get(name)
            if node is None or node.role != "requester":
                continue
            watch = ((st.get("payments") or {}).get("payer_watch") or {}).get("closes") or []
            if any(c["address"] == address for c in watch):
                return name
        return None

    async def _advance_chain(self, observer: Any, deadline: int, why: str) -> None:
        now = await observer.now()
        if now < deadline:
            await observer.advance_time(deadline - now + 1)
            self.event("chain_clock_advanced", "chain", seconds=deadline - now + 1, why=why,
                       note="EMULATED chain: its clock only moves when asked")

    async def settle_stale_closes(self) -> None:
        """Watch rogue workers' stale closes; once the payer's watcher reported one (or ``settle_after`` passed),
        move the EMULATED chain's clock past its challenge period so it can finish within the run."""
        from cocoon_node.payments.chain.local import LocalChain

        assert self.cluster.chain_url is not None
        groups = {g.name: g for g in self.s.workers}
        seen: dict[str, float] = {}
        noticed: set[str] = set()
        settled: set[str] = set()
        async with LocalChain.connect(self.cluster.chain_url, "netsim-clock") as observer:
            while True:
                for c in await self._stale_closes():
                    address = c["address"]
                    if not c["success"] or address in settled:
                        continue
                    if address not in seen:
                        seen[address] = trio.current_time()
                        self.event("stale_close", c["worker"], channel=address, payer=c["payer"],
                                   stale_voucher=[c["stale_seqno"], c["stale_cumulative"]],
                                   newest_voucher=[c["newest_seqno"], c["newest_cumulative"]],
                                   attempts=[(a["what"], a["error_name"]) for a in c["attempts"]])
                    payer = self._payer_noticed(address)
                    if payer is not None and address not in noticed:
                        noticed.add(address)
                        self.event("stale_close_noticed", payer, channel=address)
                    g = groups.get(self.data.nodes[c["worker"]].group or "")
                    wait = g.settle_after if g is not None else 8.0
                    if payer is not None or trio.current_time() - seen[address] >= wait:
                        await self._advance_chain(observer, c["deadline"], f"settle the stale close of {address}")
                        settled.add(address)
                await trio.sleep(1.0)

    async def wait_stale_settled(self, bound: float = 30.0) -> None:
        """Wait until every stale close is finished on chain (the clock is moved again if still needed)."""
        from cocoon_node.payments.chain.base import ChannelStatus
        from cocoon_node.payments.chain.local import LocalChain

        assert self.cluster.chain_url is not None
        async with LocalChain.connect(self.cluster.chain_url, "netsim-clock") as observer:
            with trio.move_on_after(bound):
                while True:
                    closes = [c for c in await self._stale_closes() if c["success"]]
                    open_ = []
                    for c in closes:
                        st = await observer.get_channel_state(c["address"])
                        if st.status is not ChannelStatus.CLOSED:
                            open_.append(c)
                            await self._advance_chain(observer, st.close_deadline, "final settlement check")
                    if not open_:
                        break
                    await trio.sleep(1.0)
            for c in await self._stale_closes():
                self.data.stale_settlements[c["address"]] = await _settlement(observer, c["address"])

    # ----- workload --------------------------------------------------------------------------------------
    async def workload(self, planned: list[PlannedRequest]) -> None:
        w = self.s.workload
        limiter = trio.CapacityLimiter(w.max_in_flight)
        limits = httpx.Limits(max_connections=w.max_in_flight * 2, max_keepalive_connections=w.max_in_flight)
        requesters = [f"requester{i}" for i in range(1, self.s.requesters + 1)]
        async with httpx.AsyncClient(timeout=httpx.Timeout(w.timeout, connect=5.0), limits=limits) as client:

            async def one(req: PlannedRequest) -> None:
                name = requesters[req.requester]
                api = self.data.nodes[name].api_url
                assert api is not None
                async with limiter:
                    res = await run_request(client, api, name, req, w.model, self.t0, w.timeout)
                self.data.results.append(res)

            async with trio.open_nursery() as nursery:
                for req in planned:
                    await trio.sleep_until(self.t0 + req.at)
                    nursery.start_soon(one, req)

    # ----- the run ---------------------------------------------------------------------------------------
    async def run(self) -> SimData:
        s = self.s
        planned = plan(s.workload, s.duration, s.requesters, self.rng)
        if self.links is not None:
            self.data.shaping = shaping_note(await probe_netem())
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self.links.write()  # before any node starts: each node reads it at start
        self.data.nat = self.nat
        async with self.nat.running(self) if self.nat else nullcontext(), self.cluster.running(), \
                trio.open_nursery() as nursery:
            try:
                await self.setup(nursery)
                self.t0 = trio.current_time()
                usage = [(time.monotonic(), self.cluster.usage())]
                self.event("cluster_up", "-", nodes=len(self.data.nodes), setup_s=self.data.setup_s)
                self.data.converged_after_setup_s = await self.wait_converged(s.invariants.convergence_bound)
                if self.nat is not None:  # listed is not enough behind NATs: wait for relay circuits too
                    await self.nat.wait_reachable(self, s.invariants.convergence_bound)
                if self.data.converged_after_setup_s is not None:
                    self.data.initial_convergence_s = max(self.data.requester_converged.values(), default=None)
                self.event("converged" if self.data.initial_convergence_s is not None else "not_converged", "-",
                           after_s=self.data.initial_convergence_s)
                self.t0 = trio.current_time()
                usage.append((time.monotonic(), self.cluster.usage()))
                nursery.start_soon(self.poller)
                if self.nat is not None:
                    nursery.start_soon(self.nat.watch, self)
                async with trio.open_nursery() as timeline:
                    timeline.start_soon(self.workload, planned)
                    for f in s.faults:
                        timeline.start_soon(self.apply_fault, f)
                    if s.churn is not None:
                        timeline.start_soon(self.churn)
                    if s.flooder is not None:
                        timeline.start_soon(self.flood)
                    if s.nonpayer is not None:
                        timeline.start_soon(self.nonpayer_workload, s.nonpayer)
                    if self.stale_closers():
                        nursery.start_soon(self.settle_stale_closes)
                self.data.workload_duration = self.now()
                usage.append((time.monotonic(), self.cluster.usage()))
                self.data.resources = resource_use(usage)
                self.event("workload_done", "-")
                if self.stale_closers():
                    await self.wait_stale_settled()
                self.data.final_convergence_s = await self.wait_converged(s.invariants.convergence_bound)
                self.event("final_check", "-", converged_after_s=self.data.final_convergence_s)
                await self.collect_final()
            finally:
                with trio.CancelScope(shield=True):
                    await self.cluster.thaw_all()
                nursery.cancel_scope.cancel()
        return self.data

    async def collect_final(self) -> None:
        async def one(name: str) -> None:
            self.data.final_status[name] = await self.cluster.try_status(name, timeout=10)

        async with trio.open_nursery() as nursery:
            for name, n in self.data.nodes.items():
                if n.state == "up" and (not n.pooled or n.role == "requester"):
                    nursery.start_soon(one, name)
        if self.fake is not None:
            self.data.fake_upstream_requests = self.fake.requests
        if self.cluster.chain_url:
            from cocoon_node.payments.chain.local import LocalChain

            try:
                with trio.fail_after(20):
                    async with LocalChain.connect(self.cluster.chain_url, "netsim-observer") as observer:
                        self.data.chain_supply = {k: int(v) for k, v in (await observer.total_supply()).items()}
                        self.data.chain_transactions = len(await observer.transactions(None, limit=100_000))
            except Exception as exc:  # report it as a harness error, do not crash the report
                self.data.errors.append(f"reading the local chain failed: {exc!r}")


CLAIM_PAYOUT, CLOSE_PAYOUT, REFUND = 0x5C0C0010, 0x5C0C0011, 0x5C0C0012


async def _settlement(observer: Any, address: str) -> dict[str, Any]:
    """What the chain shows for one channel: status and every payout it sent (claims, close payout, refund)."""
    st = await observer.get_channel_state(address)
    payouts = {"payee": 0, "payer_refund": 0}
    for t in await observer.transactions(address, limit=2000):
        for m in t["outMessages"]:
            if m["op"] in (CLAIM_PAYOUT, CLOSE_PAYOUT):
                payouts["payee"] += int(m["value"])
            elif m["op"] == REFUND:
                payouts["payer_refund"] += int(m["value"])
    return {"status": st.status.value, **payouts}


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


def peer_id_bytes(peer_id: str) -> bytes:
    from libp2p.peer.id import ID

    return ID.from_base58(peer_id).to_bytes()


def dump_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))
