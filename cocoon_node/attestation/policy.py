"""What a verifier accepts. Every allow-list is either a set or the explicit :data:`ANY`.

An empty set accepts nothing: forgetting to fill in a list must fail closed, so "anything goes" has
to be written as ``ANY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .report import TEE_DEV, TEE_KINDS, TEE_TDX


class _Any:
    """Type of :data:`ANY`, the explicit wildcard for an allow-list."""

    _instance: _Any | None = None

    def __new__(cls) -> _Any:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"

    def __contains__(self, item: object) -> bool:
        return True


ANY: Final = _Any()

Rtmrs = tuple[bytes, bytes, bytes, bytes]


@dataclass(frozen=True)
class Policy:
    """Acceptance rules for attestation reports.

    ``mrtds`` and ``rtmrs`` apply to TDX only (a dev report has no measurements); ``image_hashes``
    and ``model_hashes`` apply to every TEE kind. ``dev_platform_keys`` (raw Ed25519 keys) lets a
    test cluster accept only its own dev machines. Without collateral the TCB is unchecked; set
    ``require_tcb_check`` to refuse such reports.
    """

    tee_kinds: frozenset[str] = frozenset({TEE_TDX})
    image_hashes: frozenset[bytes] | _Any = frozenset()
    mrtds: frozenset[bytes] | _Any = frozenset()
    rtmrs: frozenset[Rtmrs] | _Any = ANY
    model_hashes: frozenset[bytes] | _Any = frozenset()
    dev_platform_keys: frozenset[bytes] | _Any = ANY
    max_report_age_s: int = 24 * 3600
    clock_skew_s: int = 120
    require_tcb_check: bool = False
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allow_debug_td: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.tee_kinds) - set(TEE_KINDS)
        if unknown:
            raise ValueError(f"unknown tee kinds {sorted(unknown)}; known: {TEE_KINDS}")
        if self.max_report_age_s < 0 or self.clock_skew_s < 0:
            raise ValueError("max_report_age_s and clock_skew_s must be >= 0")

    @property
    def allows_dev(self) -> bool:
        return TEE_DEV in self.tee_kinds
