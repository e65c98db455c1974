"""Scenario files: a TOML description of the cluster, the workload, the faults and the invariants' bounds.

Parsing is strict (unknown keys are errors) so a typo in a scenario fails loudly instead of silently running
a different experiment than the one the author meant.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

FAULT_ACTIONS = ("kill", "term", "stop", "partition", "skew", "kill_mid_stream")
ARRIVALS = ("poisson", "bursts")
# "auto": shape links (netsim picks the layer: today always the transport layer, see netsim/links.py).
SHAPING = ("none", "auto")
# Worker adversaries (``adversary`` in a worker group; ``adversarial = true`` is short for "bad_model_hash"):
# "bad_model_hash": the good model name served from weights outside the requesters' policy; "overclaim" and
# "stale_close": NETSIM-ONLY rogue workers (netsim/rogue.py) that cheat on payment; "misnamed": a NETSIM-ONLY
# worker (netsim/misnamed.py) announcing the group's model while its attestation report names another;
# "inflate", "bad_close_sig": NETSIM-ONLY payment cheats (netsim/paycheats.py).
WORKER_ADVERSARIES = ("bad_model_hash", "overclaim", "stale_close", "misnamed", "inflate", "bad_close_sig",
                      "receipt_liar")  # the last: NETSIM-ONLY, netsim/receiptcheats.py
# How a NETSIM-ONLY lowball payer (netsim/lowball.py) closes a channel: start_close with a voucher of a higher seqno
# and a lower amount, or start_close without one and then challenge with (2^64-1, 0).
LOWBALL_MODES = ("lower_voucher", "max_seqno")
# Selectors in [[links.pairs]] besides node names and worker group names.
ALL_NODES, ALL_REQUESTERS = "*", "requesters"


class ScenarioError(ValueError):
    """The scenario file is unreadable or describes something netsim cannot run."""


@dataclass(frozen=True)
class WorkerGroup:
    """``count`` identical workers named ``{name}1..{name}N``."""

    name: str = "worker"
    count: int = 1
    backend: str = "synthetic"
    model: str = "synthetic-echo"
    price_prompt: int = 1000
    price_completion: int = 2000
    synthetic_rate: float = 200.0
    max_concurrent: int = 4
    tee: str = "dev"
    # Serves the same model name from weights outside the requesters' policy (an openai-upstream backend
    # pointed at a fake upstream netsim runs, so its weight hash differs from the good workers').
    adversarial: bool = False
    # One of WORKER_ADVERSARIES ("" = honest, or bad_model_hash when adversarial is true).
    adversary: str = ""
    overclaim_tokens: int = 5            # overclaim: completion tokens each final frame claims beyond the stream
    stale_after: int = 3                 # stale_close: vouchers a channel must hold before the worker closes it
    # stale_close: seconds after the close at which netsim moves the EMULATED chain clock past the challenge
    # period (sooner once the payer's watcher has reported the close), so the close settles within the run.
    settle_after: float = 8.0
    # Run these workers as in-process nodes inside host-pool processes (for scale scenarios).
    pooled: bool = False
    per_process: int = 25
    extra_args: tuple[str, ...] = ()

    @property
    def adversary_kind(self) -> str | None:
        """Which adversary this group is, or None for honest workers."""
        return self.adversary or ("bad_model_hash" if self.adversarial else None)


@dataclass(frozen=True)
class NonPayer:
    """``[nonpayer]``: NETSIM-ONLY requesters ``nonpayer1..N`` that pay prompts and never completion tokens.

    Each gets its own requests (not part of ``[workload]``): ``requests`` of them, one every ``every`` seconds
    from ``start``, asking for ``max_tokens`` so that the workers' credit window, not the answer, ends them.
    """

    count: int = 1
    start: float = 2.0
    requests: int = 6
    every: float = 3.0
    prompt_words: int = 8
    max_tokens: int = 200
    stream: bool = True
    timeout: float = 60.0


@dataclass(frozen=True)
class LowballPayer:
    """``[lowball]``: NETSIM-ONLY requesters ``lowball1..N`` (netsim/lowball.py) that pay like honest ones, then
    close their channels to workers with honest settlement for less than they signed (issue 19).

    Each plays ``bursts`` bursts of ``burst_size`` concurrent requests (concurrency spreads them over several
    workers), one burst every ``every`` s from ``start``. After the last one netsim pulls the trigger; the payer
    closes every such channel, cycling through ``modes``; each worker gets up to ``settle_after`` s to challenge
    before netsim moves the EMULATED chain clock past the challenge period.
    """

    count: int = 1
    start: float = 3.0
    bursts: int = 2
    burst_size: int = 8
    every: float = 5.0
    prompt_words: int = 8
    max_tokens: int = 60
    stream: bool = True
    timeout: float = 60.0
    modes: tuple[str, ...] = LOWBALL_MODES
    settle_after: float = 20.0


@dataclass(frozen=True)
class Workload:
    arrival: str = "poisson"
    rate: float = 1.0                  # poisson: requests per second
    burst_size: int = 5                # bursts: requests per burst
    burst_every: float = 5.0           # bursts: seconds between bursts
    prompt_words: tuple[int, int] = (4, 16)
    max_tokens: tuple[int, int] = (8, 32)
    stream_fraction: float = 0.5
    model: str = "synthetic-echo"
    timeout: float = 90.0
    max_in_flight: int = 64


@dataclass(frozen=True)
class Fault:
    at: float
    action: str
    targets: tuple[str, ...]
    restart_after: float | None = None   # kill/term: start the node again (same identity) after this delay
    # stop: SIGCONT after this delay; partition: heal after it. A partition blocks every link between the
    # targets and everyone else (shaped links, so the processes keep running); stop freezes the targets.
    duration: float | None = None
    # skew: restart the targets with their wall clock this many seconds off (NETSIM-ONLY, ``netsim.node --clock-skew``);
    # with a duration, restart them again with a true clock after it.
    seconds: float | None = None
    # partition with a [topology]: the other side (node, relay or NAT names; default: everyone else). A target
    # "relay:busiest" (kill) or "relay:of:NODE" (partition's other side) is resolved when the fault fires.
    against: tuple[str, ...] = ()


@dataclass(frozen=True)
class Churn:
    start: float = 0.0
    end: float = 0.0
    join_rate: float = 0.0               # new workers per second (Poisson)
    leave_rate: float = 0.0              # departures per second (Poisson)
    leave_signal: str = "TERM"           # TERM (graceful) or KILL
    template: str = "worker"             # worker group whose settings joiners copy
    min_workers: int = 1


@dataclass(frozen=True)
class Flooder:
    start: float = 0.0
    duration: float = 0.0
    rate: float = 10.0                   # junk messages per second
    kinds: tuple[str, ...] = ("garbage", "forged", "expired", "replay", "wrong_signer")


@dataclass(frozen=True)
class LinkPair:
    """Overrides for the links between every node selected by ``a`` and every node selected by ``b``.

    A selector is a node name (``worker3``, ``requester1``), a worker group name (all its members, churn
    joiners of that template included), ``requesters`` or ``*``. Only the keys given override the default;
    later pairs win over earlier ones.
    """

    a: tuple[str, ...] = ()
    b: tuple[str, ...] = ()
    latency_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None
    bandwidth_kbps: float | None = None


@dataclass(frozen=True)
class Links:
    """``[links]``: the default link between any two nodes (one way: latency is half the round trip)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0                    # probability per chunk of one retransmission timeout (200 ms) extra
    bandwidth_kbps: float = 0.0          # kilobits per second each way; 0: unlimited
    pairs: tuple[LinkPair, ...] = ()


@dataclass(frozen=True)
class Invariants:
    convergence_bound: float = 30.0      # seconds for every requester to list every live worker
    min_completed: int = 1
    min_answered_fraction: float = 0.0   # issue 15: of all requests sent, at least this share answered
    all_workers_verified: bool = False   # issue 15: every requester verified every good worker's attestation
    relay_recovery_bound: float = 30.0   # [topology]: seconds after a relay dies until its workers are reachable
    # issue 16: end with `channels close` on every requester, then count on-chain ops per channel lifetime
    close_channels_at_end: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    duration: float
    seed: int = 1
    requesters: int = 1
    requester_args: tuple[str, ...] = ()   # [cluster] requester_args: extra cocoon-node run flags for requesters
    workers: tuple[WorkerGroup, ...] = ()
    workload: Workload = field(default_factory=Workload)
    faults: tuple[Fault, ...] = ()
    churn: Churn | None = None
    flooder: Flooder | None = None
    nonpayer: NonPayer | None = None
    lowball: LowballPayer | None = None
    voucherless: NonPayer | None = None   # [voucherless]: like [nonpayer], but they sign no voucher at all
    invariants: Invariants = field(default_factory=Invariants)
    shaping: str = "none"
    links: Links | None = None
    poll_interval: float = 1.0
    start_timeout: float = 180.0
    path: Path | None = None
    relays: int = 0                        # [cluster] relays: public `--relay` nodes relay1..N, started first
    topology: Any = None                   # netsim.topology.Topology: nodes in network namespaces (root only)

    @property
    def initial_workers(self) -> int:
        return sum(g.count for g in self.workers)


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    values = {}
    for key, value in data.items():
        default = getattr(cls, key, None) if not callable(getattr(cls, key, None)) else None
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse_scenario(raw, path=path)


def parse_scenario(raw: dict[str, Any], *, path: Path | None = None) -> Scenario:
    raw = dict(raw)
    cluster = dict(raw.pop("cluster", {}))
    groups = tuple(_build(WorkerGroup, g, f"cluster.workers[{i}]") for i, g in enumerate(cluster.pop("workers", [])))
    requesters = int(cluster.pop("requesters", 1))
    relays = int(cluster.pop("relays", 0))
    requester_args = cluster.pop("requester_args", [])
    if not isinstance(requester_args, list) or not all(isinstance(a, str) for a in requester_args):
        raise ScenarioError("cluster.requester_args: expected a list of strings")
    if cluster:
        raise ScenarioError(f"cluster: unknown keys {sorted(cluster)}")
    faults = []
    for i, f in enumerate(raw.pop("faults", [])):
        f = dict(f)
        targets = f.pop("targets", None) or ([f.pop("target")] if "target" in f else [])
        faults.append(_build(Fault, {**f, "targets": targets}, f"faults[{i}]"))
    scenario = _build(Scenario, {
        **raw,
        "requesters": requesters,
        "relays": relays,
        "topology": _topology(raw.pop("topology")) if "topology" in raw else None,
        "requester_args": tuple(requester_args),
        "workers": groups,
        "workload": _build(Workload, raw.pop("workload", {}), "workload"),
        "faults": tuple(faults),
        "churn": _build(Churn, raw.pop("churn"), "churn") if "churn" in raw else None,
        "flooder": _build(Flooder, raw.pop("flooder"), "flooder") if "flooder" in raw else None,
        "nonpayer": _build(NonPayer, raw.pop("nonpayer"), "nonpayer") if "nonpayer" in raw else None,
        "lowball": _build(LowballPayer, raw.pop("lowball"), "lowball") if "lowball" in raw else None,
        "voucherless": _build(NonPayer, raw.pop("voucherless"), "voucherless") if "voucherless" in raw else None,
        "invariants": _build(Invariants, raw.pop("invariants", {}), "invariants"),
        "links": _links(raw.pop("links")) if "links" in raw else None,
        "path": path,
    }, "scenario")
    _check(scenario)
    return scenario


def _topology(raw: Any) -> Any:
    from netsim.topology import parse_topology

    try:
        topology = parse_topology(raw)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(str(exc)) from None
    problems = topology.problems()
    if problems:
        raise ScenarioError("; ".join(problems))
    return topology


def _links(raw: Any) -> Links:
    if not isinstance(raw, dict):
        raise ScenarioError("links: expected a table")
    raw = dict(raw)
    pairs = raw.pop("pairs", [])
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise ScenarioError("links.pairs: expected [[links.pairs]] tables")
    built = tuple(_build(LinkPair, p, f"links.pairs[{i}]") for i, p in enumerate(pairs))
    links: Links = _build(Links, {**raw, "pairs": built}, "links")
    return links


def _link_problems(s: Scenario) -> list[str]:
    links = s.links
    if links is None:
        return []
    problems = []
    selectors = {ALL_NODES, ALL_REQUESTERS, *(g.name for g in s.workers),
                 *(f"{g.name}{i}" for g in s.workers for i in range(1, g.count + 1)),
                 *(f"requester{i}" for i in range(1, s.requesters + 1))}
    specs: list[tuple[str, Any]] = [("links", links)] + [(f"links.pairs[{i}]", p) for i, p in enumerate(links.pairs)]
    for where, spec in specs:
        for key in ("latency_ms", "jitter_ms", "loss", "bandwidth_kbps"):
            value = getattr(spec, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append(f"{where}.{key}: must be a non-negative number (got {value!r})")
            elif key == "loss" and value >= 1:
                problems.append(f"{where}.loss: must be below 1 (a blocked link is a partition fault)")
    for i, pair in enumerate(links.pairs):
        for side in ("a", "b"):
            names = getattr(pair, side)
            if not names or not all(isinstance(n, str) for n in names):
                problems.append(f"links.pairs[{i}].{side}: a non-empty list of node or group names is required")
                continue
            unknown = sorted(set(names) - selectors)
            if unknown:
                problems.append(f"links.pairs[{i}].{side}: no node or group named {unknown} (use node names, worker "
                                f"group names, {ALL_REQUESTERS!r} or {ALL_NODES!r})")
        if all(getattr(pair, k) is None for k in ("latency_ms", "jitter_ms", "loss", "bandwidth_kbps")):
            problems.append(f"links.pairs[{i}]: sets nothing (give latency_ms, jitter_ms, loss or bandwidth_kbps)")
    return problems


def _check(s: Scenario) -> None:
    problems = []
    if not s.workers:
        problems.append("cluster.workers: at least one worker group is required")
    if s.requesters < 1:
        problems.append("cluster.requesters: at least one requester is required")
    names = [g.name for g in s.workers]
    if len(set(names)) != len(names):
        problems.append("cluster.workers: group names must be unique")
    for g in s.workers:
        if g.backend not in ("synthetic", "torch"):
            problems.append(f"cluster.workers.{g.name}: backend must be synthetic or torch")
        if g.pooled and (g.backend != "synthetic" or g.adversary_kind):
            problems.append(f"cluster.workers.{g.name}: only plain synthetic workers can be pooled")
        if g.adversary and g.adversary not in WORKER_ADVERSARIES:
            problems.append(f"cluster.workers.{g.name}: adversary must be one of {WORKER_ADVERSARIES}")
        if g.adversarial and g.adversary not in ("", "bad_model_hash"):
            problems.append(f"cluster.workers.{g.name}: adversarial = true means bad_model_hash; drop it "
                            f"for adversary = {g.adversary!r}")
        if g.adversary_kind in ("overclaim", "stale_close", "misnamed", "inflate", "bad_close_sig", "receipt_liar") \
                and g.backend != "synthetic":
            problems.append(f"cluster.workers.{g.name}: rogue workers run the synthetic backend")
        if g.overclaim_tokens < 1 or g.stale_after < 2 or g.settle_after < 0:
            problems.append(f"cluster.workers.{g.name}: overclaim_tokens >= 1, stale_after >= 2 (a stale voucher "
                            "needs a newer one), settle_after >= 0")
    if s.nonpayer is not None and (s.nonpayer.count < 1 or s.nonpayer.requests < 1 or s.nonpayer.every <= 0):
        problems.append("nonpayer: count and requests must be at least 1, every positive")
    lb = s.lowball
    if lb is not None and (lb.count < 1 or lb.bursts < 1 or lb.burst_size < 1 or lb.every <= 0 or lb.settle_after < 0
                           or not lb.modes or not set(lb.modes) <= set(LOWBALL_MODES)):
        problems.append(f"lowball: count, bursts and burst_size at least 1, every positive, settle_after >= 0, "
                        f"modes a non-empty list of {LOWBALL_MODES}")
    if not any(not g.adversary_kind and not g.pooled for g in s.workers) and not any(g.pooled for g in s.workers):
        problems.append("cluster.workers: at least one non-adversarial worker is required")
    if s.workload.arrival not in ARRIVALS:
        problems.append(f"workload.arrival: one of {ARRIVALS}")
    for f in s.faults:
        if f.action not in FAULT_ACTIONS:
            problems.append(f"faults: action {f.action!r} not one of {FAULT_ACTIONS}")
        if not f.targets:
            problems.append(f"faults at {f.at}: no target")
        if f.action in ("stop", "partition") and f.duration is None:
            problems.append(f"faults at {f.at}: {f.action} needs a duration")
        if (f.action == "skew") != (f.seconds is not None):
            problems.append(f"faults at {f.at}: 'seconds' goes with (and only with) action skew")
    if s.churn is not None and s.churn.template not in names:
        problems.append(f"churn.template: no worker group named {s.churn.template!r}")
    if s.shaping not in SHAPING:
        problems.append(f"shaping: one of {SHAPING}")
    elif s.shaping == "none":
        if s.links is not None:
            problems.append('links: shaped links need shaping = "auto"')
        if any(f.action == "partition" for f in s.faults) and s.topology is None:
            problems.append('faults: a partition blocks shaped links and needs shaping = "auto" '
                            '(action "stop" freezes nodes without shaping)')
    problems.extend(_link_problems(s))
    if s.topology is not None:  # network namespaces (netsim/natsim.py)
        from netsim.natsim import topology_problems

        problems.extend(topology_problems(s))
    if problems:
        raise ScenarioError("; ".join(problems))
