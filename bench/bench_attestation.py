"""Attestation verification throughput: real TDX quote chain, and a full dev report.

Usage: ``.venv/bin/python bench/bench_attestation.py [--seconds 2]``. Prints one JSON line, then one
human-readable line. Single-threaded; each iteration re-parses everything (no caching).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon_node.attestation import (
    ANY,
    TEE_DEV,
    Claims,
    DevPlatform,
    Policy,
    dev_image_hash,
    parse_tdx_quote,
    sign_report,
    verify_report,
    verify_tdx_quote,
)

QUOTE = Path(__file__).resolve().parents[1] / "tests" / "data" / "tdx-quote-v4.dat"


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    fn()  # warm up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the dev path warns on every accept; not what we measure

    raw = QUOTE.read_bytes()
    rd = parse_tdx_quote(raw).td_report.report_data
    at = datetime(2026, 1, 1, tzinfo=UTC)
    tdx_rate, tdx_n = rate(lambda: verify_tdx_quote(raw, rd, at=at), args.seconds)
    parse_rate, _ = rate(lambda: parse_tdx_quote(raw), args.seconds / 2)

    node = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench-node").digest())
    dev = DevPlatform(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench-dev").digest()))
    now = int(time.time())
    claims = Claims.for_key(
        node.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        model_name="bench-model",
        model_hash=bytes(32),
        node_version="0.1.0",
        issued_at=now,
        expires_at=now + 3600,
        tee_kind=TEE_DEV,
    )
    env = sign_report(claims, dev.evidence(claims.report_data(), dev_image_hash("0.1.0")), node)
    policy = Policy(tee_kinds=frozenset({TEE_DEV}), image_hashes=ANY, model_hashes=ANY)
    dev_rate, dev_n = rate(lambda: verify_report(env, claims.peer_id, policy, now), args.seconds)

    out = {
        "bench": "attestation",
        "tdx_quote_verify_per_s": round(tdx_rate, 1),
        "tdx_quote_verify_ms": round(1000 / tdx_rate, 3),
        "tdx_quote_parse_per_s": round(parse_rate, 1),
        "dev_report_verify_per_s": round(dev_rate, 1),
        "dev_report_verify_ms": round(1000 / dev_rate, 3),
        "iterations": {"tdx": tdx_n, "dev": dev_n},
        "quote_bytes": len(raw),
        "dev_envelope_bytes": len(env),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(out))
    print(
        f"TDX quote (full chain, no collateral): {tdx_rate:.0f}/s ({1000 / tdx_rate:.2f} ms); "
        f"dev report (envelope + evidence + policy): {dev_rate:.0f}/s ({1000 / dev_rate:.3f} ms); one core"
    )


if __name__ == "__main__":
    main()
