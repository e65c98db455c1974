"""What a verifier accepts. Every allow-list is either a set or the explicit :data:`ANY`.

An empty set accepts nothing: forgetting to fill in a list must fail closed, so "anything goes" has
to be written as ``ANY``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ._allow import ANY, _Any
from .report import TEE_DEV, TEE_KINDS, TEE_TDX
from .snp import SnpPolicy

Rtmrs = tuple[bytes, bytes, bytes, bytes]

#: Where a worker may send prompts (``Policy.upstream``): ``in-td`` only to an upstream on the TD's own
#: loopback (a model server the attested image starts inside the TD), ``none`` to no upstream at all,
#: ``anywhere`` to any host (prompts then LEAVE the TEE; only for an upstream the requester trusts itself).
UPSTREAM_IN_TD = "in-td"
UPSTREAM_NONE = "none"
UPSTREAM_ANYWHERE = "anywhere"
UPSTREAM_RULES = (UPSTREAM_IN_TD, UPSTREAM_NONE, UPSTREAM_ANYWHERE)

#: Intel's TCB statuses a policy may accept (``Revoked`` never is). The order is the registry's bit order.
TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                "OutOfDate", "OutOfDateConfigurationNeeded")


def rtmr_set_digest(rtmrs: Rtmrs) -> bytes:
    """SHA-256(RTMR0 || RTMR1 || RTMR2 || RTMR3): how policies and the registry name one RTMR set."""
    if len(rtmrs) != 4 or any(len(r) != 48 for r in rtmrs):
        raise ValueError("an RTMR set is four 48-byte registers")
    return hashlib.sha256(b"".join(rtmrs)).digest()


def upstream_origin(url: str) -> str:
    """``scheme://host:port`` of an upstream URL: what a report binds (no credentials, path or query)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"upstream URL {url!r} must be http(s)://host[:port]/...")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host.lower()}:{port}"


def upstream_in_td(origin: str) -> bool:
    """True for an upstream on loopback: inside the TD that runs the worker (nothing leaves the VM)."""
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Policy:
    """Acceptance rules for attestation reports.

    ``mrtds`` and ``rtmrs`` apply to TDX only (a dev report has no measurements); ``rtmrs`` holds
    :func:`rtmr_set_digest` values (4-tuples of raw registers are converted). ``image_hashes`` apply to
    every TEE kind. A model is allowed when its ``(model_name, model_hash)`` pair is in ``models`` or its
    hash is in ``model_hashes``, which allows the weights under *any* name (local/dev convenience; a
    requester still binds the report's name to the model it asks for). ``dev_platform_keys`` (raw Ed25519
    keys) lets a test cluster accept only its own dev machines. Without collateral the TCB is unchecked;
    set ``require_tcb_check`` to refuse such reports. ``require_collateral`` (what testnet/mainnet set unless
    their config says ``allow_missing_collateral``) refuses TDX and SNP reports that ship no vendor
    collateral (:mod:`.collateral`): Intel's TCB info/QE identity/CRLs, AMD's CRL. Collateral that is
    shipped but fails (bad signature, another platform, expired, revoked) is refused always. ``upstream``
    says where a worker may send prompts.
    ``snp`` is what an AMD SEV-SNP report must meet (measurements, debug off, minimum TCB, VMPL); its empty
    default accepts no SNP measurement, and ``tee_kinds`` must name ``snp`` for SNP reports to count at all.
    """

    tee_kinds: frozenset[str] = frozenset({TEE_TDX})
    image_hashes: frozenset[bytes] | _Any = frozenset()
    mrtds: frozenset[bytes] | _Any = frozenset()
    rtmrs: frozenset[bytes] | _Any = ANY
    model_hashes: frozenset[bytes] | _Any = frozenset()
    models: frozenset[tuple[str, bytes]] = frozenset()
    dev_platform_keys: frozenset[bytes] | _Any = ANY
    max_report_age_s: int = 24 * 3600
    clock_skew_s: int = 120
    require_tcb_check: bool = False
    require_collateral: bool = False
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allow_debug_td: bool = False
    upstream: str = UPSTREAM_IN_TD
    snp: SnpPolicy = field(default_factory=SnpPolicy)

    def __post_init__(self) -> None:
        unknown = set(self.tee_kinds) - set(TEE_KINDS)
        if unknown:
            raise ValueError(f"unknown tee kinds {sorted(unknown)}; known: {TEE_KINDS}")
        if self.max_report_age_s < 0 or self.clock_skew_s < 0:
            raise ValueError("max_report_age_s and clock_skew_s must be >= 0")
        if self.upstream not in UPSTREAM_RULES:
            raise ValueError(f"upstream must be one of {UPSTREAM_RULES}")
        if not isinstance(self.rtmrs, _Any):
            digests = frozenset(r if isinstance(r, bytes) else rtmr_set_digest(r) for r in self.rtmrs)
            object.__setattr__(self, "rtmrs", digests)

    @property
    def allows_dev(self) -> bool:
        return TEE_DEV in self.tee_kinds

    def allows_model(self, name: str, weights: bytes) -> bool:
        """The weights are allowed under this model name."""
        return weights in self.model_hashes or (name, weights) in self.models
