"""The allow-list values of a TDX worker image, read from a quote it produced.

An operator approving an image for a network needs its image hash, MRTD and RTMR set exactly as requesters
will compute them. This reads them from a TDX quote (a raw v4 quote, e.g. from configfs-tsm) or from a
cocoon attestation report (whose evidence is that quote) and prints them as ``[policy]`` settings and as
the registry's values. It does not check the quote's signature: run it on evidence you produced yourself,
on a TDX host you trust, with the same VM configuration (firmware, vCPUs, memory, kernel, command line,
initrd) as the workers it will approve.

Usage: ``python -m cocoon_node.attestation.measure FILE`` (quote or report envelope).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import AttestationError
from .policy import rtmr_set_digest
from .report import TEE_SNP, TEE_TDX, decode_and_verify_envelope
from .snp import parse_snp_report
from .snp_evidence import decode_snp_evidence, snp_image_hash
from .tdx import parse_tdx_quote


def measurements(quote: bytes) -> dict[str, Any]:
    """Image hash, MRTD, RTMR0..3 and the RTMR set digest of a TDX quote, hex."""
    td = parse_tdx_quote(quote).td_report
    return {
        "image_hash": td.image_hash().hex(),
        "mrtd": td.mrtd.hex(),
        "rtmrs": [r.hex() for r in td.rtmrs],
        "rtmr_set_digest": rtmr_set_digest(td.rtmrs).hex(),
        "debug_td": td.debug,
    }


def snp_measurements(evidence: bytes) -> dict[str, Any]:
    """Image hash and launch MEASUREMENT of SEV-SNP evidence (``snp_evidence``), hex."""
    rep = parse_snp_report(decode_snp_evidence(evidence).report)
    return {"image_hash": snp_image_hash(rep).hex(), "snp_measurement": rep.measurement.hex(), "debug_td": rep.debug,
            "vmpl": rep.vmpl}


def measurements_of_report(envelope: bytes) -> dict[str, Any] | None:
    """The measurements inside a cocoon TDX or SEV-SNP attestation report; None for a dev-INSECURE report."""
    report = decode_and_verify_envelope(envelope)
    model = {"model": f"{report.claims.model_name}={report.claims.model_hash.hex()}"}
    if report.claims.tee_kind == TEE_SNP:
        return {**snp_measurements(report.evidence), **model}
    if report.claims.tee_kind != TEE_TDX:
        return None
    return {**measurements(report.evidence), **model}


def policy_lines(m: dict[str, Any]) -> list[str]:
    """The ``[policy]`` settings that approve exactly this image (and model, for a report)."""
    if "snp_measurement" in m:
        lines = [f'allowed_image_hashes = ["{m["image_hash"]}"]', "allow_snp = true",
                 f'allowed_snp_measurements = ["{m["snp_measurement"]}"]']
    else:
        lines = [f'allowed_image_hashes = ["{m["image_hash"]}"]', f'allowed_mrtds = ["{m["mrtd"]}"]',
                 f'allowed_rtmrs = ["{":".join(m["rtmrs"])}"]  # or its digest "{m["rtmr_set_digest"]}"']
    if "model" in m:
        lines.append(f'allowed_models = ["{m["model"]}"]')
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cocoon_node.attestation.measure",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="raw TDX v4 quote, or a cocoon attestation report envelope")
    parser.add_argument("--json", action="store_true", help="print JSON instead of [policy] lines")
    args = parser.parse_args(argv)
    data = args.file.read_bytes()
    try:
        m = measurements(data)
    except AttestationError:
        try:
            from_report = measurements_of_report(data)
        except AttestationError as exc:
            print(f"{args.file}: neither a TDX quote nor a cocoon attestation report ({exc})", file=sys.stderr)
            return 2
        if from_report is None:
            print(f"{args.file}: a dev-INSECURE report has no measurements", file=sys.stderr)
            return 2
        m = from_report
    if m["debug_td"]:
        print("WARNING: this is a DEBUG TD (the host can read its memory); requesters refuse it", file=sys.stderr)
    print(json.dumps(m, indent=2) if args.json else "\n".join(["[policy]", *policy_lines(m)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
