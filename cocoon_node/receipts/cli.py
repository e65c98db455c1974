"""``cocoon-node verify-receipt FILE``: check a saved receipt with no node running, and print a clear verdict.

FILE is JSON ``{"receipt": HEX, "attestation_report": HEX}`` (as ``GET /v1/cocoon/receipts/{id}`` returns a
receipt, with the report it names). The report's evidence is verified to the pinned Intel/AMD roots; which
images, measurements and weights to trust is the reader's own call, so they are printed, not judged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cocoon_node.attestation import ANY, TEE_DEV, TEE_SNP, TEE_TDX, Policy, SnpPolicy

from .receipt import ReceiptError, verify_receipt


def verify_receipt_file(path: Path, *, allow_dev_tee: bool = False) -> int:
    try:
        data = json.loads(path.read_text())
        receipt, report = bytes.fromhex(data["receipt"]), bytes.fromhex(data["attestation_report"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{path}: not a receipt file ({{\"receipt\": HEX, \"attestation_report\": HEX}}): {exc}",
              file=sys.stderr)
        return 2
    kinds = {TEE_TDX, TEE_SNP} | ({TEE_DEV} if allow_dev_tee else set())
    policy = Policy(tee_kinds=frozenset(kinds), image_hashes=ANY, mrtds=ANY, model_hashes=ANY,
                    snp=SnpPolicy(measurements=ANY), max_report_age_s=10 * 365 * 86_400)
    try:
        check = verify_receipt(receipt, report, policy)
    except ReceiptError as exc:
        print(f"RECEIPT DOES NOT VERIFY ({exc.check}): {exc}")
        return 1
    r, v = check.receipt, check.report
    print("RECEIPT VERIFIES: signed by the worker key its attestation report binds")
    print(f"  request {r.request_id}: {r.prompt_tokens} prompt + {r.completion_tokens} completion tokens at "
          f"{r.price_prompt}/{r.price_completion} nanotons; channel {r.channel or '(unpaid)'} voucher "
          f"#{r.voucher_seqno} cumulative {r.voucher_cumulative}")
    print(f"  request digest {r.request_digest.hex()}  output digest {r.output_digest.hex()}")
    print(f"  model {r.model_name} weights {r.model_hash.hex()}; issued at {r.issued_at}")
    print(f"  attestation: {v.tee_kind}, image {v.image_hash}" + (f", MRTD {v.mrtd}" if v.mrtd else "")
          + (f", measurement {v.measurement}" if v.measurement else "") + f"; tcb checked: {v.tcb_checked}")
    if v.tee_kind == TEE_DEV:
        print("  WARNING: dev-INSECURE attestation: it proves NOTHING about hardware")
    print("  compare the image and weights against the allow-list you trust")
    return 0
