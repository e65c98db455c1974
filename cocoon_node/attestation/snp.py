"""AMD SEV-SNP attestation reports: parse them and verify them to AMD's pinned root keys.

:func:`verify_snp_report` walks every link itself with ``cryptography`` and names the check that fails:

1. the report parses (``format``), is signed with ECDSA P-384/SHA-384 (``signature_algo``) by a chip
   key it names (``signing_key``: the VCEK, or a VLEK only where the policy allows it);
2. the VCEK chains to a pinned ARK: ARK self-signature, ASK <- ARK, VCEK <- ASK, each RSA-PSS SHA-384
   salt 48 (``ark_root``, ``cert_chain``), every certificate valid at ``now`` (``cert_validity``);
3. the report's bytes 0x000..0x29F are signed by the VCEK key (``report_signature``);
4. the VCEK is *this* chip's key at *this* TCB: its hwID equals the report's CHIP_ID (``vcek_chip_id``)
   and its SPL extensions equal REPORTED_TCB (``vcek_tcb``), so a genuine key of another chip, or of
   this chip at an older (perhaps vulnerable) TCB, is refused; v3+ CPUID fields must name the product
   whose ARK the chain ends at (``product``);
5. REPORT_DATA equals what the caller expects, e.g. SHA-512 of the canonical claims (``report_data``);
6. the :class:`SnpPolicy`: product, measurement allow-list, debug off, no migration agent, VMPL
   allow-list and minimum TCB (``product``, ``measurement``, ``debug``, ``migration_agent``, ``vmpl``,
   ``tcb_minimum``);
7. given AMD's CRL for the product: it is signed by the pinned ARK, current at ``now``, and does not
   revoke the ASK/ASVK the chain went through (``crl``, ``revoked``).

An SNP report carries no time: binding freshness (a nonce or an expiry in the claims) is the caller's
job, through ``expected_report_data``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ._allow import _Any
from ._snp_certtable import SnpCertTable, parse_snp_cert_table
from ._snp_chain import AMD_SNP_ROOTS, SnpRoot, SnpVcek, load_cert, verify_vcek_chain
from ._snp_crl import check_snp_crl
from ._snp_report import (
    GENOA,
    MILAN,
    PRODUCTS,
    REPORT_LEN,
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    TURIN,
    SnpReport,
    TcbVersion,
    parse_snp_report,
)
from ._snp_roots import (
    AMD_ARK_GENOA_PEM,
    AMD_ARK_MILAN_PEM,
    AMD_ARK_TURIN_PEM,
    AMD_ASK_GENOA_PEM,
    AMD_ASK_MILAN_PEM,
    AMD_ASK_TURIN_PEM,
)
from .errors import AttestationError

__all__ = [
    "AMD_ARK_GENOA_PEM",
    "AMD_ARK_MILAN_PEM",
    "AMD_ARK_TURIN_PEM",
    "AMD_ASK_GENOA_PEM",
    "AMD_ASK_MILAN_PEM",
    "AMD_ASK_TURIN_PEM",
    "AMD_SNP_ROOTS",
    "GENOA",
    "MILAN",
    "PRODUCTS",
    "REPORT_LEN",
    "TURIN",
    "SnpCertTable",
    "SnpPolicy",
    "SnpReport",
    "SnpVcek",
    "SnpVerification",
    "TcbVersion",
    "parse_snp_cert_table",
    "parse_snp_report",
    "verify_snp_report",
    "verify_vcek_chain",
]


@dataclass(frozen=True)
class SnpPolicy:
    """What an SNP verifier accepts. Like :class:`Policy`, an empty allow-list accepts nothing.

    ``min_tcb`` maps a product to the lowest REPORTED_TCB accepted, component by component; SPL numbers
    mean different things on each product, so a product without an entry has no minimum.
    """

    measurements: frozenset[bytes] | _Any = frozenset()
    products: frozenset[str] = frozenset(PRODUCTS)
    vmpls: frozenset[int] = frozenset({0})
    min_tcb: Mapping[str, TcbVersion] = field(default_factory=dict, hash=False)
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_vlek: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_tcb", MappingProxyType(dict(self.min_tcb)))  # frozen means frozen
        unknown = (set(self.products) | set(self.min_tcb)) - set(PRODUCTS)
        if unknown:
            raise ValueError(f"unknown SEV-SNP products {sorted(unknown)}; known: {PRODUCTS}")
        if not isinstance(self.measurements, _Any) and any(len(m) != 48 for m in self.measurements):
            raise ValueError("SEV-SNP measurements are 48 bytes")


@dataclass(frozen=True)
class SnpVerification:
    """Outcome of a successful :func:`verify_snp_report`."""

    report: SnpReport
    product: str  # whose pinned ARK the chain ends at
    signing_key: str  # "VCEK" or "VLEK"
    reported_tcb: TcbVersion
    vcek: SnpVcek

    @property
    def measurement(self) -> bytes:
        return self.report.measurement

    @property
    def chip_id(self) -> bytes:
        return self.report.chip_id


def _as_datetime(now: datetime | int | float) -> datetime:
    if isinstance(now, datetime):
        return now if now.tzinfo else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(now, UTC)


def verify_snp_report(
    report: bytes | SnpReport,
    vcek_der: bytes,
    *,
    expected_report_data: bytes,
    policy: SnpPolicy,
    now: datetime | int | float,
    ask_pem: bytes | None = None,
    crl: bytes | None = None,
) -> SnpVerification:
    """Verify an SEV-SNP report from a pinned AMD ARK down to REPORT_DATA and ``policy``; raise AttestationError.

    ``vcek_der`` is the chip's VCEK (DER or PEM; from the report's certificate table or AMD's KDS);
    ``ask_pem`` the intermediate (ASK or ASVK, PEM or DER) if the evidence carried one, else the pinned
    ASK is used. ``now`` (datetime or unix seconds) is the time for certificate and CRL validity; ``crl``
    is AMD's DER CRL for the product, checked when given.
    """
    return _verify(
        report,
        vcek_der,
        expected_report_data=expected_report_data,
        policy=policy,
        now=now,
        ask=ask_pem,
        roots=AMD_SNP_ROOTS,
        crl=crl,
    )


def _verify(
    report: bytes | SnpReport,
    vcek: bytes | x509.Certificate,
    *,
    expected_report_data: bytes,
    policy: SnpPolicy,
    now: datetime | int | float,
    ask: bytes | x509.Certificate | None,
    roots: Mapping[str, SnpRoot],
    crl: bytes | None = None,
) -> SnpVerification:
    """:func:`verify_snp_report` with the trust anchors as a parameter, so tests can build a whole fake AMD
    PKI; production code must go through :func:`verify_snp_report` (pinned roots)."""
    # Always from the raw bytes: fields of a caller-built SnpReport could disagree with what was signed.
    rep = parse_snp_report(report.raw if isinstance(report, SnpReport) else report)
    when = _as_datetime(now)
    if rep.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise AttestationError("signature_algo", f"signature algorithm {rep.signature_algo}, want 1 (ECDSA P-384)")
    if rep.mask_chip_key or rep.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        raise AttestationError("signing_key", f"report is not signed by a chip key (signing key {rep.signing_key})")
    if rep.signing_key == SIGNING_KEY_VLEK and not policy.allow_vlek:
        raise AttestationError("signing_key", "report is signed by a VLEK and the policy accepts only VCEKs")

    leaf = verify_vcek_chain(vcek, now=when, ask=ask, roots=roots)
    if crl is not None:
        inter = roots[leaf.product].ask if ask is None else load_cert(ask, "ask_format", "ASK certificate")
        check_snp_crl(crl, roots[leaf.product].ark, inter, when)
    want_kind = "VCEK" if rep.signing_key == SIGNING_KEY_VCEK else "VLEK"
    if leaf.kind != want_kind:
        raise AttestationError(
            "signing_key", f"report says it is signed by a {want_kind}, the certificate is a {leaf.kind}"
        )

    signature = encode_dss_signature(rep.signature_r, rep.signature_s)
    try:
        leaf.public_key.verify(signature, rep.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise AttestationError("report_signature", "report bytes 0x000..0x29F are not signed by the VCEK key") from exc

    cpuid_product = rep.cpuid_product
    if cpuid_product is not None and cpuid_product != leaf.product:
        raise AttestationError(
            "product", f"report CPUID names {cpuid_product}, the chain ends at the {leaf.product} ARK"
        )
    reported = rep.tcb("reported_tcb", leaf.product)
    if leaf.hw_id is not None:
        if not any(rep.chip_id):
            raise AttestationError("vcek_chip_id", "CHIP_ID is masked (all zero): the VCEK cannot be bound to the chip")
        n = len(leaf.hw_id)
        if rep.chip_id[:n] != leaf.hw_id or any(rep.chip_id[n:]):
            raise AttestationError(
                "vcek_chip_id", f"VCEK hwID {leaf.hw_id.hex()} is another chip than CHIP_ID {rep.chip_id.hex()}"
            )
    if leaf.tcb != reported:
        raise AttestationError("vcek_tcb", f"VCEK was issued for TCB {leaf.tcb}, the report claims {reported}")

    expected = bytes(expected_report_data)
    if len(expected) != 64 or rep.report_data != expected:
        raise AttestationError("report_data", f"REPORT_DATA {rep.report_data.hex()} != expected {expected.hex()}")

    _check_policy(rep, leaf.product, reported, policy)
    return SnpVerification(report=rep, product=leaf.product, signing_key=leaf.kind, reported_tcb=reported, vcek=leaf)


def _check_policy(rep: SnpReport, product: str, reported: TcbVersion, policy: SnpPolicy) -> None:
    if product not in policy.products:
        raise AttestationError("product", f"{product} is not an accepted product ({sorted(policy.products)})")
    if rep.measurement not in policy.measurements:
        raise AttestationError("measurement", f"MEASUREMENT {rep.measurement.hex()} is not in the allow-list")
    if rep.debug and not policy.allow_debug:
        raise AttestationError("debug", "guest policy allows debugging (bit 19): its memory is not confidential")
    if rep.migrate_ma and not policy.allow_migration_agent:
        raise AttestationError("migration_agent", "guest policy allows a migration agent (bit 18)")
    if rep.vmpl not in policy.vmpls:
        raise AttestationError("vmpl", f"report requested at VMPL {rep.vmpl}, accepted {sorted(policy.vmpls)}")
    floor = policy.min_tcb.get(product)
    if floor is not None and not reported.meets(floor):
        raise AttestationError("tcb_minimum", f"REPORTED_TCB {reported} is below the minimum {floor}")
