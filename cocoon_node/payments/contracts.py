"""The committed contracts (contracts/build/*.boc): where they lie, their code hashes, their exit codes.

Kept apart from :mod:`.voucher` (the channel's signed cells and message bodies) and :mod:`.registry` (the
registry contract) because both, and the chain adapters, read the same artefacts.
"""

from __future__ import annotations

import os
from pathlib import Path

from pytoniq_core import Cell

#: Contract exit codes -> names (documented in contracts/README.md).
EXIT_CODES: dict[int, str] = {
    101: "NOT_PAYER",
    102: "NOT_PAYEE",
    103: "NOT_PARTY",
    104: "WRONG_STATE",
    105: "BAD_SIGNATURE",
    106: "WRONG_CHANNEL",
    107: "WRONG_TAG",
    108: "STALE_SEQNO",  # retired: only the old channel code ef381609... threw it (seqnos ranked)
    109: "AMOUNT_BACKWARDS",
    110: "OVERDRAW",
    111: "TOO_EARLY",
    112: "TOO_LATE",
    113: "LOW_VALUE",
    114: "NOTHING_TO_CLAIM",
    115: "BAD_VOUCHER",
    116: "BAD_PERIOD",
    201: "NOT_OWNER",
    202: "ALREADY_SET",
    203: "NOT_FOUND",
    204: "BAD_PARAMS",
    205: "BAD_NAME",
    0xFFFF: "UNKNOWN_OP",
    -14: "OUT_OF_GAS",
    13: "OUT_OF_GAS",
    9: "CELL_UNDERFLOW",
}

#: Code hashes of the committed contracts/build/*.boc; a test keeps them in step with the build.
CODE_HASHES: dict[str, str] = {
    "payment_channel": "0282b9749a3b61bdb6371aab1d9764a2d812757ff937425346025550421b4037",
    "registry": "b6b206889574e380a423e563c9bbfb1095a2f242b9e79e8a93e6fbad05a918bc",
}


def contracts_dir() -> Path:
    """contracts/ of this checkout (override with COCOON_CONTRACTS_DIR for installed packages)."""
    env = os.environ.get("COCOON_CONTRACTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "contracts"


def contract_code(name: str) -> Cell:
    """Committed compiled code; refuses a BoC whose hash differs from :data:`CODE_HASHES`."""
    cell = Cell.one_from_boc((contracts_dir() / "build" / f"{name}.boc").read_bytes())
    if cell.hash.hex() != CODE_HASHES[name]:
        raise RuntimeError(f"contracts/build/{name}.boc hash {cell.hash.hex()} != expected {CODE_HASHES[name]}")
    return cell
