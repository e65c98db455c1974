"""Metric naming and label bounds, on a rendered snapshot (no processes)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cocoon_node.observe.metrics import MAX_MODEL_LABELS, ModelLabels, NodeMetrics, endpoint_label

SNAPSHOT = {
    "version": "0.1.0", "network": "local", "peer_id": "12D3KooWtest", "uptime_s": 5.0, "connected_peers": 2,
    "topic_peers": 1, "announcements": {"accepted": 7, "rejected": {"bad_signature": 2, "expired": 1}},
    "attestation_verdicts": {"ok": 3, "missing": 1}, "dht": {"lookups": 4, "local_hits": 1, "network_hits": 2,
                                                             "misses": 1, "rpcs": 9, "rpc_failures": 1},
    "workers": [{"peer_id": "a", "model": "m", "announced_tee_kind": "dev-INSECURE", "gate": {"verified": True}}],
    "worker": {"served": 5, "rejected": 1, "cancelled": 0, "failed": 0, "load": 1, "max_concurrent": 4},
    "requester": {"completed": 4, "failed": 1},
    "payments": {"enabled": True, "spent": 100, "earned": 0, "wallet_balance": 10**9,
                 "channels": [{"role": "payer", "status": "open", "deposit": 500, "voucher_seqno": 6}],
                 "onchain_ops": {"open": 1}, "settlement": {"claims": 2, "failed_rounds": 9}},
}


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_rendered_snapshot_follows_the_conventions() -> None:
    metrics = NodeMetrics(offered_models=lambda: {"m"})
    metrics.request_done("/v1/chat/completions", "m", 200)
    text = metrics.render(SNAPSHOT).decode()
    fams = families(text)
    for name, fam in fams.items():
        assert name.startswith(("cocoon_", "process_", "python_")), name
        if fam.type == "counter":  # type: ignore[attr-defined]
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), name  # type: ignore[attr-defined]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}  # type: ignore[attr-defined]
    assert samples[("cocoon_gossip_messages_rejected_total", (("reason", "bad_signature"),))] == 2
    assert samples[("cocoon_attestation_verdicts_total", (("reason", "missing"), ("result", "rejected")))] == 1
    assert samples[("cocoon_payment_vouchers_signed_total", ())] == 6
    assert samples[("cocoon_payment_onchain_operations_total", (("operation", "worker_claims"),))] == 2
    assert ("cocoon_payment_onchain_operations_total", (("operation", "worker_failed_rounds"),)) not in samples
    assert samples[("cocoon_workers_dev_insecure", ())] == 1
    assert samples[("cocoon_worker_requests_total", (("outcome", "served"),))] == 5
    # the snapshot is for one scrape only
    assert "cocoon_workers " not in metrics.render({}).decode()


def test_model_label_is_bounded() -> None:
    offered = {f"model-{i}" for i in range(MAX_MODEL_LABELS + 5)}
    labels = ModelLabels(lambda: offered)
    assert labels("not-offered") == "unknown"
    assert labels("") == "none"
    got = [labels(m) for m in sorted(offered)]
    assert len(set(got) - {"other"}) == MAX_MODEL_LABELS and got.count("other") == 5
    assert labels(sorted(offered)[0]) == sorted(offered)[0]  # a model already labelled keeps its label


def test_endpoint_label_is_bounded() -> None:
    assert endpoint_label("/v1/chat/completions") == "/v1/chat/completions"
    assert endpoint_label("/dashboard/static/dashboard.js") == "/dashboard"
    assert endpoint_label("/wp-admin/../etc/passwd") == "other"


def test_recent_errors_are_bounded_and_clipped() -> None:
    metrics = NodeMetrics()
    for i in range(500):
        metrics.request_done("/v1/chat/completions", "x" * 1000, 503, "e" * 10_000 + str(i))
    assert len(metrics.recent_errors) == 50
    last = metrics.recent_errors[-1]
    assert len(last["message"]) <= 300 and len(last["model"]) <= 80
