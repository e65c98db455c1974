"""The simulation run: start the cluster, converge, play workload + faults + churn + junk, observe, collect.

Time zero of the timeline (``t``) is the start of the workload; fault times in the scenario are relative to
it. Cluster set-up happens before, and its discovery convergence is measured on its own.

:class:`Simulation` only orchestrates; each step lives in its own module, all sharing one
:class:`~netsim.context.SimContext`:

* :mod:`netsim.lifecycle` -- starting the cluster (workers, host pools, requesters), taking nodes down, restarts;
* :mod:`netsim.faults` -- kill/term/stop, partitions, clock skew, churn, the junk flooder;
* :mod:`netsim.observation` -- status polls, expectations, convergence, resource use, the final state;
* :mod:`netsim.settlement` -- the EMULATED chain's clock, stale closes and what the chain paid;
* :mod:`netsim.workload` -- the honest request schedule and the non-payers' requests;
* :mod:`netsim.simdata` -- :class:`SimData`, everything the report reads.
* :mod:`netsim.natsim` -- with a ``[topology]``: network namespaces and NATs (set up in :meth:`prepare_network`),
  relays, nftables partitions, the watch of reservations and paths, the report's ``nat`` section.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from netsim import channel_life, paycheats
from netsim.context import SimContext
from netsim.faults import Faults
from netsim.lifecycle import Lifecycle
from netsim.links import probe_netem, shaping_note
from netsim.lowball import LowballWatch
from netsim.observation import Observer
from netsim.scenario import Scenario
from netsim.settlement import StaleCloseWatch, record_chain_totals
from netsim.simdata import Expectation, SimData, SimNode
from netsim.workload import PlannedRequest, plan, play, play_nonpayers

__all__ = ["Expectation", "SimData", "SimNode", "Simulation"]


class Simulation:
    def __init__(self, scenario: Scenario, *, seed: int, base_dir: Path) -> None:
        self.s = scenario
        self.ctx = SimContext(scenario, seed=seed, base_dir=base_dir)
        if scenario.lowball is not None:
            self.ctx.lowball = LowballWatch(self.ctx, scenario.lowball)
        self.lifecycle = Lifecycle(self.ctx)
        self.observer = Observer(self.ctx)
        self.faults = Faults(self.ctx, self.lifecycle)
        self.stale_closes = StaleCloseWatch(self.ctx)

    @property
    def data(self) -> SimData:
        return self.ctx.data

    async def run(self) -> SimData:
        ctx, s = self.ctx, self.s
        planned = plan(s.workload, s.duration, s.requesters, ctx.rng)
        # prepare_network may swap in the namespaced cluster: ctx.cluster is read only once it is entered.
        async with self.prepare_network(), ctx.cluster.running(), trio.open_nursery() as nursery:
            try:
                await self.lifecycle.start_cluster(nursery)
                await self.converge()
                ctx.t0 = trio.current_time()
                self.observer.sample_usage()
                nursery.start_soon(self.observer.poller)
                async with trio.open_nursery() as timeline:
                    self.start_timeline(timeline, nursery, planned)
                ctx.data.workload_duration = ctx.now()
                self.observer.sample_usage()
                ctx.data.resources = self.observer.resources()
                ctx.event("workload_done", "-")
                await self.wind_down()
                await self.observer.collect_final()
                await record_chain_totals(ctx)
                await channel_life.record_books(ctx)
            finally:
                with trio.CancelScope(shield=True):
                    await ctx.cluster.thaw_all()
                nursery.cancel_scope.cancel()
        return ctx.data

    @asynccontextmanager
    async def prepare_network(self) -> AsyncIterator[None]:
        """The network for the whole run, before any node starts: the link table, when shaped; with a
        ``[topology]``, the network namespaces and NAT gateways (netsim/natsim.py), torn down after the run."""
        ctx = self.ctx
        if ctx.links is not None:
            ctx.data.shaping = shaping_note(await probe_netem())
            ctx.base_dir.mkdir(parents=True, exist_ok=True)
            ctx.links.write()  # before any node starts: each node reads it at start
        if ctx.nat is None:
            yield
            return
        async with ctx.nat.running(ctx):
            yield

    async def converge(self) -> None:
        """Discovery after set-up: how long until every live requester lists every live worker."""
        ctx, data = self.ctx, self.ctx.data
        ctx.t0 = trio.current_time()
        self.observer.sample_usage()
        ctx.event("cluster_up", "-", nodes=len(data.nodes), setup_s=data.setup_s)
        data.converged_after_setup_s = await self.observer.wait_converged(self.s.invariants.convergence_bound)
        if ctx.nat is not None:  # listed is not enough behind NATs: wait for relay circuits too
            await ctx.nat.wait_reachable(ctx, self.s.invariants.convergence_bound)
        if data.converged_after_setup_s is not None:
            data.initial_convergence_s = max(data.requester_converged.values(), default=None)
        ctx.event("converged" if data.initial_convergence_s is not None else "not_converged", "-",
                  after_s=data.initial_convergence_s)

    def start_timeline(self, timeline: trio.Nursery, background: trio.Nursery, planned: list[PlannedRequest]) -> None:
        """Everything on the scenario's timeline; the run waits for ``timeline``, watchers run in ``background``
        until the end. A new adversary or fault kind starts its tasks here."""
        s = self.s
        timeline.start_soon(play, self.ctx, planned)
        for f in s.faults:
            timeline.start_soon(self.faults.apply, f)
        if s.churn is not None:
            timeline.start_soon(self.faults.churn)
        if s.flooder is not None:
            timeline.start_soon(self.faults.flood)
        if s.nonpayer is not None:
            timeline.start_soon(play_nonpayers, self.ctx, s.nonpayer)
        if self.stale_closes.closers():
            background.start_soon(self.stale_closes.watch)
        if self.ctx.lowball is not None:
            timeline.start_soon(self.ctx.lowball.workload)
            background.start_soon(self.ctx.lowball.settle)
        timeline.start_soon(paycheats.timeline, paycheats.Simulation(self.ctx, self.lifecycle))
        if self.ctx.nat is not None:  # reservations, reachability and listings of the NAT'd nodes
            background.start_soon(self.ctx.nat.watch, self.ctx)

    async def wind_down(self) -> None:
        """After the workload: let open settlements finish on chain, then measure convergence once more."""
        ctx = self.ctx
        if self.stale_closes.closers():
            await self.stale_closes.wait_settled()
        if ctx.lowball is not None:
            await ctx.lowball.wait_settled()
        ctx.data.final_convergence_s = await self.observer.wait_converged(self.s.invariants.convergence_bound)
        ctx.event("final_check", "-", converged_after_s=ctx.data.final_convergence_s)
        if self.s.invariants.close_channels_at_end and ctx.cluster.chain_url:
            await channel_life.close_at_end(ctx)
