"""Prometheus metrics of one node: what happened (requests, latencies, tokens) and what the node holds now.

Two sources, one registry per node (never prometheus_client's global one: tests run several nodes in a process):

* **events** the node does not count elsewhere — HTTP requests by endpoint, model and status, time to first
  token, inter-token latency, tokens in and out, DHT lookup latency — are recorded here as they happen;
* **everything the node already counts** (worker table, gossip verdicts, attestation verdicts, DHT lookups,
  worker and requester outcomes, payment channels, vouchers, on-chain operations) is read at scrape time from
  the same status snapshot ``cocoon-node status`` prints (:class:`_SnapshotCollector`): no second bookkeeping.

Names carry their unit (``_seconds``, ``_nanotons``, ``_tokens``); label values come from small fixed sets, and
the ``model`` label only names models the worker table offers (at most :data:`MAX_MODEL_LABELS`, else ``other``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cocoon_node.attestation.report import TEE_DEV

MAX_MODEL_LABELS = 16
MAX_RECENT_ERRORS = 50
# Seconds; first tokens include selection, attestation checks and prefill, so the range is wide.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DHT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The only endpoint labels; anything else is "other" (a scanner's paths must not grow the label set).
ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/v1/cocoon/channels", "/metrics", "/status", "/dashboard")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def endpoint_label(path: str) -> str:
    if path.startswith("/dashboard"):
        return "/dashboard"
    return path if path in ENDPOINTS else "other"


class ModelLabels:
    """Bounded ``model`` label values: a model the worker table offers, at most ``limit`` distinct ones."""

    def __init__(self, offered: Callable[[], Iterable[str]], limit: int = MAX_MODEL_LABELS) -> None:
        self._offered = offered
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, model: str) -> str:
        if not model:
            return "none"
        if model in self._seen:
            return model
        if model not in set(self._offered()):
            return "unknown"
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(model)
        return model


class NodeMetrics:
    """The node's registry; ``render(snapshot)`` is the ``/metrics`` body."""

    def __init__(self, offered_models: Callable[[], Iterable[str]] = tuple) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_label = ModelLabels(offered_models)
        r = self.registry
        self.http_requests = Counter("cocoon_http_requests", "HTTP requests answered, by endpoint, model and status",
                                     ["endpoint", "model", "status"], registry=r)
        self.ttft = Histogram("cocoon_time_to_first_token_seconds",
                              "From the request reaching the requester to its first token (selection, attestation "
                              "check, stream open and prefill included)", ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.inter_token = Histogram("cocoon_inter_token_latency_seconds",
                                     "Gap between streamed chunks divided by the tokens the later chunk carried",
                                     ["model"], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("cocoon_prompt_tokens", "Prompt tokens of answered requests (tokens in)",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("cocoon_completion_tokens",
                                         "Completion tokens of answered requests (tokens out)", ["model"], registry=r)
        self.dht_lookup_seconds = Histogram("cocoon_dht_lookup_duration_seconds",
                                            "Validated DHT record lookups, local and cached answers included",
                                            buckets=DHT_BUCKETS, registry=r)
        self._snapshot: dict[str, Any] = {}
        r.register(_SnapshotCollector(lambda: self._snapshot))
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=MAX_RECENT_ERRORS)

    # ----- events ------------------------------------------------------------------------------------------
    def request_done(self, endpoint: str, model: str, status: int, error: str = "") -> None:
        self.http_requests.labels(endpoint_label(endpoint), self.model_label(model), str(status)).inc()
        if status >= 400:
            self.recent_errors.append({"time": time.time(), "endpoint": endpoint_label(endpoint), "model": model[:80],
                                       "status": status, "message": error[:300]})

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(self.model_label(model)).observe(seconds)

    def chunk_gap(self, model: str, seconds: float, tokens: int) -> None:
        self.inter_token.labels(self.model_label(model)).observe(seconds / max(1, tokens))

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        label = self.model_label(model)
        self.prompt_tokens.labels(label).inc(prompt)
        self.completion_tokens.labels(label).inc(completion)

    def dht_lookup(self, seconds: float) -> None:
        self.dht_lookup_seconds.observe(seconds)

    # ----- reading -----------------------------------------------------------------------------------------
    def render(self, snapshot: dict[str, Any]) -> bytes:
        """The exposition text, with the snapshot's facts as of this scrape."""
        self._snapshot = snapshot  # no await between here and the read below: scrapes cannot interleave
        try:
            return generate_latest(self.registry)
        finally:
            self._snapshot = {}

    def totals(self) -> dict[str, float]:
        """Running totals for the dashboard's charts, read from the same metric objects ``/metrics`` shows."""
        def total(metric: Any, suffix: str) -> float:
            return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith(suffix))

        return {
            "requests": self._api_requests(),
            "errors": sum(s.value for m in self.http_requests.collect() for s in m.samples
                          if s.name.endswith("_total") and int(s.labels["status"]) >= 400),
            "prompt_tokens": total(self.prompt_tokens, "_total"),
            "completion_tokens": total(self.completion_tokens, "_total"),
            "ttft_sum": total(self.ttft, "_sum"), "ttft_count": total(self.ttft, "_count"),
        }

    def _api_requests(self) -> float:
        """Requests to the API (``/v1/...``) only: the dashboard's and scrapers' own polls, a browser's
        ``/favicon.ico`` and other stray paths stay out of the requests chart."""
        return sum(s.value for m in self.http_requests.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels["endpoint"].startswith("/v1/"))


class _SnapshotCollector(Collector):
    """Facts the node already keeps, as Prometheus families, from the status snapshot of this scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # families vary with the roles; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        if not s:
            return
        yield from _node_families(s)
        yield from _mesh_families(s)
        yield from _role_families(s)
        yield from _payment_families(s.get("payments") or {})


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(family: GaugeMetricFamily | CounterMetricFamily, items: Iterable[tuple[tuple[str, ...], float]]
              ) -> GaugeMetricFamily | CounterMetricFamily:
    for labels, value in items:
        family.add_metric(list(labels), value)
    return family


def _node_families(s: dict[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("cocoon_node_info", "This node (value 1)", labels=["version", "network", "peer_id"])
    info.add_metric([str(s.get("version", "")), str(s.get("network", "")), str(s.get("peer_id", ""))], 1)
    yield info
    yield _gauge("cocoon_uptime_seconds", "Seconds since the node started", s.get("uptime_s", 0))
    yield _gauge("cocoon_connected_peers", "libp2p connections open now", s.get("connected_peers", 0))
    yield _gauge("cocoon_gossip_topic_peers", "Peers on the workers topic", s.get("topic_peers", 0))


def _mesh_families(s: dict[str, Any]) -> Iterator[Metric]:
    workers = s.get("workers") or []
    yield _gauge("cocoon_workers", "Live workers in this node's worker table", len(workers))
    yield _gauge("cocoon_workers_verified", "Live workers whose attestation the gate accepts now",
                 sum(1 for w in workers if (w.get("gate") or {}).get("verified")))
    yield _gauge("cocoon_workers_dev_insecure", "Live workers announcing the dev-INSECURE TEE",
                 sum(1 for w in workers if w.get("announced_tee_kind") == TEE_DEV))
    ann = s.get("announcements") or {}
    yield CounterMetricFamily("cocoon_gossip_messages_accepted", "Worker announcements the validator accepted",
                              value=ann.get("accepted", 0))
    yield _labelled(CounterMetricFamily("cocoon_gossip_messages_rejected",
                                        "Worker announcements the validator rejected, by reason", labels=["reason"]),
                    (((reason,), n) for reason, n in sorted((ann.get("rejected") or {}).items())))
    verdicts = s.get("attestation_verdicts") or {}
    yield _labelled(CounterMetricFamily("cocoon_attestation_verdicts",
                                        "Attestation reports fetched and checked, by result and failed check",
                                        labels=["result", "reason"]),
                    ((("verified" if check == "ok" else "rejected", check), n)
                     for check, n in sorted(verdicts.items())))
    dht = s.get("dht") or {}
    if dht:
        answered = {"local": dht.get("local_hits", 0), "cache": dht.get("cache_hits", 0),
                    "network": dht.get("network_hits", 0), "miss": dht.get("misses", 0)}
        yield CounterMetricFamily("cocoon_dht_lookups", "DHT record lookups started", value=dht.get("lookups", 0))
        yield _labelled(CounterMetricFamily("cocoon_dht_lookup_results", "DHT record lookups by where they were "
                                            "answered (miss: nowhere)", labels=["answered_by"]),
                        (((k,), v) for k, v in answered.items()))
        yield CounterMetricFamily("cocoon_dht_rpcs", "GET_VALUE RPCs sent", value=dht.get("rpcs", 0))
        yield CounterMetricFamily("cocoon_dht_rpc_failures", "GET_VALUE RPCs that failed",
                                  value=dht.get("rpc_failures", 0))
        yield CounterMetricFamily("cocoon_dht_records_rejected", "DHT records the namespace validator rejected",
                                  value=dht.get("rejected_records", 0))


def _role_families(s: dict[str, Any]) -> Iterator[Metric]:
    w = s.get("worker")
    if w:
        yield _labelled(CounterMetricFamily("cocoon_worker_requests", "Inference requests this worker ended, by "
                                            "outcome (rejected: full or invalid)", labels=["outcome"]),
                        (((k,), w.get(k, 0)) for k in ("served", "rejected", "cancelled", "failed")))
        yield _gauge("cocoon_worker_in_flight", "Requests this worker is serving now (a full worker rejects; "
                     "requests wait in the requester's queue)", w.get("load", 0))
        yield _gauge("cocoon_worker_capacity", "Requests this worker admits at once", w.get("max_concurrent", 0))
    r = s.get("requester")
    if r:
        yield _labelled(CounterMetricFamily("cocoon_requester_requests", "Requests this requester bought, by outcome",
                                            labels=["outcome"]),
                        ((("completed",), r.get("completed", 0)), (("failed",), r.get("failed", 0))))
        q = r.get("queue")
        if q:  # the admission queue (issue 13)
            yield _gauge("cocoon_requester_queue_length", "Requests waiting for a free worker slot now", q["queued"])
            yield _gauge("cocoon_requester_queue_capacity", "Requests that may wait at once (beyond: 429)",
                         q["max_queue"])
            yield _gauge("cocoon_requester_queue_oldest_wait_seconds", "How long the oldest waiting request has waited",
                         q["oldest_wait_ms"] / 1000)
            yield _labelled(CounterMetricFamily("cocoon_requester_admissions", "Requests through the admission queue, "
                                                "by outcome", labels=["outcome"]),
                            ((("immediate",), q["admitted"] - q["admitted_after_wait"]),
                             (("after_wait",), q["admitted_after_wait"]), (("rejected_full",), q["rejected_full"]),
                             (("expired",), q["expired"]), (("left",), q["left"])))
            waits = q.get("wait_ms") or {}
            yield _labelled(GaugeMetricFamily("cocoon_requester_queue_wait_seconds", "Waits for a slot of the "
                                              "recent admissions (p50, p95) and the longest since start",
                                              labels=["stat"]),
                            (((k,), v / 1000) for k, v in waits.items() if v is not None))


def _payment_families(p: dict[str, Any]) -> Iterator[Metric]:
    if not p.get("enabled"):
        return
    channels = p.get("channels") or []
    by_state: dict[tuple[str, str], int] = {}
    deposit: dict[str, int] = {}
    for ch in channels:
        key = (str(ch.get("role")), str(ch.get("status")))
        by_state[key] = by_state.get(key, 0) + 1
        deposit[key[0]] = deposit.get(key[0], 0) + int(ch.get("deposit") or 0)
    yield _labelled(GaugeMetricFamily("cocoon_payment_channels", "Payment channels in the store, by role and status",
                                      labels=["role", "status"]), ((k, v) for k, v in sorted(by_state.items())))
    yield _labelled(GaugeMetricFamily("cocoon_payment_deposit_nanotons", "Deposits of this node's channels",
                                      labels=["role"]), (((k,), v) for k, v in sorted(deposit.items())))
    yield _gauge("cocoon_payment_spent_nanotons", "Vouchered to workers, all channels (cumulative)",
                 p.get("spent", 0))
    yield _gauge("cocoon_payment_earned_nanotons", "Vouchered by requesters, all channels (cumulative)",
                 p.get("earned", 0))
    if p.get("wallet_balance") is not None:
        yield _gauge("cocoon_payment_wallet_balance_nanotons", "This node's wallet balance", p["wallet_balance"])
    # A payer's voucher seqno counts the vouchers it signed on that channel.
    yield CounterMetricFamily("cocoon_payment_vouchers_signed", "Vouchers this node signed as payer",
                              value=sum(int(c.get("voucher_seqno") or 0) for c in channels if c.get("role") == "payer"))
    meter = p.get("worker_meter")
    if meter:
        yield _labelled(CounterMetricFamily("cocoon_payment_vouchers_verified", "Vouchers this worker checked, by "
                                            "result", labels=["result"]),
                        ((("accepted",), meter.get("vouchers", 0)), (("stale",), meter.get("stale_vouchers", 0)),
                         (("rejected",), meter.get("rejected_vouchers", 0))))
    ops = {f"payer_{k}": v for k, v in (p.get("onchain_ops") or {}).items()}
    ops |= {f"worker_{k}": v for k, v in (p.get("settlement") or {}).items() if k != "failed_rounds"}
    yield _labelled(CounterMetricFamily("cocoon_payment_onchain_operations", "On-chain operations this node sent",
                                        labels=["operation"]), (((k,), v) for k, v in sorted(ops.items())))
