"""Faults in a simulation run, on the scenario's timeline: kill/term (and restart), stop/resume, partitions and
heals of shaped links (nftables drops between namespaces with a ``[topology]``, netsim/natsim.py), clock skew,
churn, and the junk-gossip flooder.

Each fault records an event and what the requesters should now see (:meth:`netsim.context.SimContext.expect`);
whether they did is observed by :mod:`netsim.observation`. A fault that changes the network itself (a
partition here; a NAT or namespace change later) writes it where the nodes read it, then expects.
"""

from __future__ import annotations

import random
import signal

import trio

from cocoon_node.config import WorkerSection
from cocoon_node.mesh.announce import MAX_CLOCK_SKEW as ANNOUNCE_CLOCK_SKEW
from netsim import channel_life
from netsim.adversary import JunkFlooder
from netsim.context import SimContext
from netsim.lifecycle import Lifecycle, without_flags
from netsim.scenario import Fault, WorkerGroup


class Faults:
    def __init__(self, ctx: SimContext, lifecycle: Lifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle
        self._churn_count = 0

    async def apply(self, f: Fault) -> None:
        """Wait for the fault's time, then apply it (and undo it after its duration, where it has one)."""
        ctx = self.ctx
        await trio.sleep_until(ctx.t0 + f.at)
        if ctx.nat is not None:  # namespaces: resolve relay:busiest etc.; partitions are nftables rules
            f = await ctx.nat.resolve(ctx, f)
            if f.action == "partition":
                await ctx.nat.partition(ctx, f)
                return
        if f.action in ("kill", "term"):
            sig = signal.SIGKILL if f.action == "kill" else signal.SIGTERM
            async with trio.open_nursery() as nursery:
                for name in f.targets:
                    nursery.start_soon(self.lifecycle.take_down, name, sig, "dead", f.action)
            if f.restart_after is not None:
                await trio.sleep(f.restart_after)
                async with trio.open_nursery() as nursery:
                    for name in f.targets:
                        nursery.start_soon(self.lifecycle.restart, name)
        elif f.action == "partition":
            await self.partition(f)
        elif f.action == "skew":
            await self.skew(f)
        elif f.action == "kill_mid_stream":  # a requester, while it streams (netsim/channel_life.py)
            await channel_life.kill_mid_stream(ctx, self.lifecycle, f)
        else:
            for name in f.targets:
                if ctx.cluster.signal(name, signal.SIGSTOP):
                    ctx.data.nodes[name].state = "stopped"
                    ctx.expect(name, False, f.action)
                    ctx.event(f.action, name, signal="SIGSTOP", note="silent node, connections stay open")
            assert f.duration is not None
            await trio.sleep(f.duration)
            for name in f.targets:
                if ctx.cluster.signal(name, signal.SIGCONT):
                    ctx.data.nodes[name].state = "up"
                    ctx.expect(name, True, "resume")
                    ctx.event("resume", name, signal="SIGCONT")

    # ----- clock skew ------------------------------------------------------------------------------------
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
        ctx = self.ctx
        node = ctx.data.nodes[name]
        if node.pooled or node.role != "worker":
            ctx.data.errors.append(f"skew fault on {name} ignored (only separate worker processes)")
            return
        await self.lifecycle.take_down(name, signal.SIGKILL, "dead", "skew")  # a clock change is a restart
        args = without_flags(ctx.cluster.nodes[name].args, ("--bootstrap",))  # replaced
        try:  # the skew is netsim.node's own --clock-skew (in the command), never a cocoon-node flag
            await self.lifecycle.restart_worker(name, args, clock_skew=seconds)
        except Exception as exc:
            ctx.data.errors.append(f"restart of {name} with a skewed clock failed: {exc}")
            return
        node.state = "up"
        ctx.event("clock", name, skew_s=seconds,
                  expected="dropped by requesters" if expect_dropped else "listed as usual")
        if expect_dropped:
            ctx.clock_skewed.add(name)
        else:
            ctx.clock_skewed.discard(name)
        ctx.expect(name, not expect_dropped, f"clock skew {seconds:+.0f}s" if seconds else "clock restored")

    # ----- partitions ------------------------------------------------------------------------------------
    async def partition(self, f: Fault) -> None:
        """Block every link between the targets and the rest (processes keep running), heal after ``duration``.

        Each side's requesters should stop listing the other side's workers (their announcements expire) and
        list them again after the heal; data on connections across the cut is held, not lost, as TCP would.
        """
        ctx = self.ctx
        assert ctx.links is not None and f.duration is not None
        side = {t for t in f.targets if t in ctx.data.nodes}
        token = ctx.links.partition(side, f"partition at t={f.at}: {sorted(side)} | everyone else")
        ctx.links.write()
        inside = sorted(n for n in ctx.data.nodes if n in side)
        outside = sorted(n for n in ctx.data.nodes if n not in side)
        ctx.event("partition", ",".join(inside), side_a=inside, side_b=outside, duration=f.duration,
                  layer="shaped links blocked (link table), processes keep running")
        requesters = ctx.live_requesters()
        affected = []
        for name in sorted(ctx.live_workers()):
            across = tuple(r for r in requesters if (r in side) != (name in side))
            if not across or name in ctx.clock_skewed:  # a skewed worker is expected unlisted throughout
                continue
            affected.append(name)
            if f.duration > self.announce_ttl(name) + ctx.s.poll_interval:
                ctx.expect(name, False, "partition", observers=across)
            else:  # its last announcement outlives the cut: nobody should drop it
                ctx.event("partition_too_short", name, ttl_s=self.announce_ttl(name))
        await trio.sleep(f.duration)
        ctx.links.heal(token)
        ctx.links.write()
        ctx.event("heal", ",".join(inside))
        for name in affected:
            if ctx.data.nodes[name].state == "up":
                ctx.expect(name, True, "heal")

    def announce_ttl(self, name: str) -> float:
        """How long a worker's announcement stays listed (its group's --announce-ttl, else the default)."""
        ctx = self.ctx
        group = next((g for g in ctx.s.workers if g.name == ctx.data.nodes[name].group), None)
        args = list(group.extra_args) if group is not None else []
        if "--announce-ttl" in args[:-1]:
            return float(args[args.index("--announce-ttl") + 1])
        return float(WorkerSection().announce_ttl)

    # ----- churn and flooding ----------------------------------------------------------------------------
    async def churn(self) -> None:
        ctx = self.ctx
        c = ctx.s.churn
        assert c is not None
        rng = random.Random(ctx.data.seed * 7919 + 1)
        plan_: list[tuple[float, str]] = []
        for kind, rate in (("join", c.join_rate), ("leave", c.leave_rate)):
            t = c.start
            while rate > 0:
                t += rng.expovariate(rate)
                if t >= c.end:
                    break
                plan_.append((t, kind))
        template = next(g for g in ctx.s.workers if g.name == c.template)
        sig = signal.SIGKILL if c.leave_signal.upper() == "KILL" else signal.SIGTERM

        async with trio.open_nursery() as nursery:
            for at, kind in sorted(plan_):
                await trio.sleep_until(ctx.t0 + at)
                if kind == "join":
                    self._churn_count += 1
                    name = f"churn{self._churn_count}"
                    nursery.start_soon(self._join, name, template)
                else:
                    pool = sorted(n.name for n in ctx.data.nodes.values()
                                  if n.role == "worker" and n.state == "up" and not n.adversarial
                                  and not n.pooled and (n.group == c.template or n.name.startswith("churn")))
                    if len(pool) <= c.min_workers:
                        ctx.event("leave_skipped", "-", reason=f"only {len(pool)} workers left")
                        continue
                    nursery.start_soon(self.lifecycle.take_down, rng.choice(pool), sig, "left", "leave")

    async def _join(self, name: str, g: WorkerGroup) -> None:
        ctx = self.ctx
        try:
            await self.lifecycle.start_worker(name, g)
        except Exception as exc:
            ctx.data.errors.append(f"churn join {name} failed: {exc}")
            return
        ctx.data.nodes[name].group = g.name
        ctx.event("join", name)
        ctx.expect(name, True, "join")

    async def flood(self) -> None:
        ctx = self.ctx
        f = ctx.s.flooder
        assert f is not None
        await trio.sleep_until(ctx.t0 + f.start)
        victims = [peer_id_bytes(n.peer_id) for n in ctx.data.nodes.values() if n.role == "worker"]
        flooder = JunkFlooder(self.lifecycle.bootstrap_args()[1::2], victims, random.Random(ctx.data.seed * 31 + 7),
                              f.kinds)
        ctx.event("flood_start", "flooder", rate=f.rate)
        try:
            ctx.data.flooder = await flooder.run(f.duration, f.rate)
        except Exception as exc:
            ctx.data.errors.append(f"flooder failed: {exc!r}")
            ctx.data.flooder = {"sent": dict(flooder.sent), "error": repr(exc)}
        ctx.event("flood_end", "flooder", sent=sum(flooder.sent.values()))


def peer_id_bytes(peer_id: str) -> bytes:
    from libp2p.peer.id import ID

    return ID.from_base58(peer_id).to_bytes()
