"""Which TEE vendor collateral a worker ships with its report, and where it comes from.

TDX: Intel's TCB info, QE identity and CRLs from ``worker.pccs_url`` (Intel's PCS when empty); SEV-SNP: AMD's
CRL from AMD's KDS. Both are cached under ``<data dir>/collateral`` (0700, files 0600) for as long as they are
valid. The dev TEE ships none. ``worker.fetch_collateral = false`` turns fetching off (a testnet/mainnet
requester then refuses the reports unless its policy says ``allow_missing_collateral``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from cocoon_node.attestation import TEE_SNP, TEE_TDX
from cocoon_node.attestation.kds import SnpCrlCache
from cocoon_node.attestation.pcs import INTEL_PCS_URL, TdxCollateralCache
from cocoon_node.config import WorkerSection


def collateral_source(tee_kind: str, worker: WorkerSection,
                      data_dir: Path | str) -> Callable[[bytes], Awaitable[bytes]] | None:
    """evidence -> the collateral bytes to ship with it, or None when this worker ships none."""
    if not worker.fetch_collateral:
        return None
    directory = Path(data_dir) / "collateral"
    if tee_kind == TEE_TDX:
        return TdxCollateralCache(directory, worker.pccs_url or INTEL_PCS_URL).for_quote
    if tee_kind == TEE_SNP:
        return SnpCrlCache(directory).for_evidence
    return None
