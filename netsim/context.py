"""The state every part of a simulation run shares: the scenario, the cluster, the clock and the record.

The run's parts (:mod:`netsim.lifecycle`, :mod:`netsim.faults`, :mod:`netsim.observation`,
:mod:`netsim.settlement`, the workload in :mod:`netsim.workload`) each hold one :class:`SimContext` and
talk to each other only through it and the :class:`~netsim.simdata.SimData` it fills.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from netsim.links import LinkPlan
from netsim.procs import SimCluster
from netsim.scenario import Links, Scenario
from netsim.simdata import Expectation, SimData

if TYPE_CHECKING:
    from netsim.adversary import FakeUpstream
    from netsim.lowball import LowballWatch
    from netsim.natsim import NatPlan

log = logging.getLogger("netsim.runner")


class SimContext:
    def __init__(self, scenario: Scenario, *, seed: int, base_dir: Path) -> None:
        self.s = scenario
        self.data = SimData(scenario, seed)
        self.base_dir = base_dir
        self.clock_skewed: set[str] = set()  # workers restarted with a clock their peers must reject
        self.cluster = SimCluster(base_dir)
        self.rng = random.Random(seed)
        self.t0 = 0.0                       # trio.current_time() at workload start (trio's clock, not time's)
        self.fake: FakeUpstream | None = None
        self.links: LinkPlan | None = None
        if scenario.shaping == "auto":
            self.links = LinkPlan(base_dir / "links.json", scenario.links or Links(), seed)
        self.lowball: LowballWatch | None = None  # set by the Simulation when the scenario has [lowball]
        # [topology]: nodes in network namespaces (netsim/natsim.py); it swaps in the namespaced cluster.
        self.nat: NatPlan | None = None
        if scenario.topology is not None:
            from netsim.natsim import NatPlan

            self.nat = self.data.nat = NatPlan(scenario)

    def now(self) -> float:
        return round(trio.current_time() - self.t0, 3)

    def event(self, kind: str, target: str, **detail: Any) -> None:
        self.data.events.append({"t": self.now(), "kind": kind, "target": target, **detail})
        log.info("t=%.1f/%.0fs %s %s %s", self.now(), self.s.duration, kind, target, detail or "")

    def live_workers(self) -> dict[str, str]:
        """name -> peer id of workers that are running, not frozen and not clock-skewed (those that should be
        listed)."""
        return {n.name: n.peer_id for n in self.data.nodes.values()
                if n.role == "worker" and n.state == "up" and n.name not in self.clock_skewed}

    def live_requesters(self) -> list[str]:
        return [n.name for n in self.data.nodes.values() if n.role == "requester" and n.state == "up"]

    def expect(self, name: str, present: bool, cause: str, observers: tuple[str, ...] | None = None) -> None:
        """Record that, from now on, worker ``name`` should (dis)appear in the requesters' lists
        (:class:`~netsim.observation.Observer` resolves it); an opposite open expectation is superseded."""
        node = self.data.nodes[name]
        if node.role != "worker":
            return
        for e in self.data.expectations:
            if e.name == name and e.resolved_at is None and e.present != present:
                e.superseded = True
        self.data.expectations.append(Expectation(self.now(), name, node.peer_id, present, cause,
                                                  observers=observers))
