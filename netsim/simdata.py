"""What a simulation run records: its nodes, events, expectations, requests, polls and final state.

:class:`SimData` is all the report (:mod:`netsim.report`) reads; the run's modules only ever add to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netsim.scenario import Scenario
from netsim.workload import RequestResult

if TYPE_CHECKING:
    from netsim.natsim import NatPlan


@dataclass
class SimNode:
    name: str
    role: str                      # "worker", "requester" or "relay" ([topology] runs)
    group: str | None
    adversarial: bool = False
    pooled: bool = False
    peer_id: str = ""
    state: str = "down"            # up | stopped | dead | left
    api_url: str | None = None
    # Which adversary (bad_model_hash, overclaim, stale_close, nonpayer, lowball_close), None for honest nodes.
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
    allowed_models: list[str] = field(default_factory=list)   # NAME=HASH pairs requesters also allow
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
    # netsim/paycheats.py: its requests' results and what it saw on chain.
    paycheats: dict[str, Any] = field(default_factory=dict)
    # Lowball payers (netsim/lowball.py): their own requests, and per attacked channel what the chain paid.
    lowball_results: list[RequestResult] = field(default_factory=list)
    lowball_settlements: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Channels over restarts (netsim/channel_life.py): requester kills, end-of-run closes, voucher books, chain ops.
    channel_life: dict[str, Any] = field(default_factory=dict)
    # [topology] runs: the namespace side (netsim/natsim.py), reported in the report's "nat" section.
    nat: NatPlan | None = None
