"""SEV-SNP verification throughput on the real Milan report (tests/data/sev-snp-milan).

Usage: ``.venv/bin/python bench/bench_snp.py [--seconds 2]``. Prints one JSON line, then one human-readable
line. Single-threaded; each verification re-parses the report and the VCEK and checks the whole chain
(ARK self-signature, ASK, VCEK: three RSA-4096 PSS verifications) and the report's ECDSA P-384 signature.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cocoon_node.attestation import SnpPolicy, parse_snp_report, verify_snp_report

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "sev-snp-milan"


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

    report = (DATA / "report-milan.bin").read_bytes()
    vcek = (DATA / "vcek-milan.der").read_bytes()
    rep = parse_snp_report(report)
    policy = SnpPolicy(measurements=frozenset({rep.measurement}))
    now = datetime(2026, 1, 1, tzinfo=UTC)  # inside the VCEK's validity (2023-04-03 .. 2030-04-03)

    def verify() -> object:
        return verify_snp_report(report, vcek, expected_report_data=rep.report_data, policy=policy, now=now)

    assert verify_snp_report(report, vcek, expected_report_data=rep.report_data, policy=policy, now=now)
    verify_rate, verify_n = rate(verify, args.seconds)
    parse_rate, _ = rate(lambda: parse_snp_report(report), args.seconds / 2)

    out = {
        "bench": "snp",
        "snp_report_verify_per_s": round(verify_rate, 1),
        "snp_report_verify_ms": round(1000 / verify_rate, 3),
        "snp_report_parse_per_s": round(parse_rate, 1),
        "iterations": verify_n,
        "report_bytes": len(report),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(out))
    print(
        f"SEV-SNP report (pinned Milan ARK -> ASK -> VCEK, report signature, policy): {verify_rate:.0f}/s "
        f"({1000 / verify_rate:.2f} ms); parse only {parse_rate:.0f}/s; one core"
    )


if __name__ == "__main__":
    main()
