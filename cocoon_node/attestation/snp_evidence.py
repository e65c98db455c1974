"""SEV-SNP evidence in an attestation report: what a worker collects, what a requester verifies.

The evidence (``snp_evidence`` in ``protocols/attestation.toml``) is the raw SNP report, whose REPORT_DATA
is SHA-512 of the canonical claims (as for TDX), plus the DER VCEK of the chip that signed it. The VCEK
comes from the host's certificate table (configfs-tsm ``auxblob``) or, where the host supplies none, from a
file the operator fetched from AMD's KDS once (``worker.snp_vcek_file``). AMD's ARK/ASK are pinned in the
verifier and not carried. An SNP report carries no time: the claims' ``issued_at``/``expires_at``, bound
through REPORT_DATA, are its validity window, enforced by :func:`cocoon_node.attestation.verify_report`.
"""

from __future__ import annotations

import hashlib
import struct
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon_node.wire import CborError, SchemaError, decode_cbor, encode_cbor
from cocoon_node.wire.messages.attestation import SnpEvidenceRecord

from ._snp_report import SnpReport
from .errors import AttestationError
from .snp import SnpPolicy, SnpVerification, verify_snp_report
from .tsm import ConfigfsTsm, SnpEvidence, TsmError

__all__ = [
    "SNP_IMAGE_DOMAIN",
    "collect_snp_evidence",
    "decode_snp_evidence",
    "encode_snp_evidence",
    "snp_image_hash",
    "verify_snp_evidence",
]

SNP_IMAGE_DOMAIN = b"cocoon-snp-image/v1\0"


def _der(cert: bytes, what: str) -> bytes:
    """A certificate as DER whether it came as DER or PEM; refuses anything that is not one."""
    try:
        parsed = x509.load_pem_x509_certificate(cert) if cert.lstrip().startswith(b"-----") else \
            x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise TsmError(f"{what} is not an X.509 certificate: {exc}") from exc
    return parsed.public_bytes(Encoding.DER)


def encode_snp_evidence(report: bytes, vcek: bytes, ask: bytes = b"") -> bytes:
    """Canonical CBOR of the evidence record; raises ValueError for a report or VCEK out of bounds. ``ask`` is
    the ASVK of a VLEK-signed report (b"" for a VCEK: its ASK is pinned)."""
    return encode_cbor(SnpEvidenceRecord(kind="snp", report=bytes(report), vcek=bytes(vcek), ask=bytes(ask)))


def decode_snp_evidence(data: bytes) -> SnpEvidenceRecord:
    """Strictly decode SNP evidence; raises AttestationError("format")."""
    try:
        record = decode_cbor(bytes(data), SnpEvidenceRecord)
    except (CborError, SchemaError) as exc:
        raise AttestationError("format", f"snp evidence: {exc}") from exc
    if not record.vcek:
        raise AttestationError("format", "snp evidence: empty VCEK")
    return record


def snp_image_hash(report: SnpReport) -> bytes:
    """What ``Policy.image_hashes`` names for an SNP guest: SHA-256 over a domain, the guest POLICY (u64 LE),
    FAMILY_ID, IMAGE_ID, MEASUREMENT and HOST_DATA (fixed sizes, so concatenation is unambiguous).

    The launch MEASUREMENT covers firmware, kernel, initrd and command line (measured direct boot); the guest
    policy, the IDs and HOST_DATA are fixed at launch too. REPORT_DATA and the TCB (judged by the policy's
    minimum TCB) are left out, so one image has one hash.
    """
    return hashlib.sha256(
        SNP_IMAGE_DOMAIN + struct.pack("<Q", report.policy) + report.family_id + report.image_id
        + report.measurement + report.host_data
    ).digest()


def collect_snp_evidence(
    report_data: bytes, *, tsm: ConfigfsTsm | None = None, vcek_file: Path | str | None = None
) -> bytes:
    """Worker side: an SNP report over ``report_data`` through configfs-tsm, and the VCEK that signed it.

    Blocking (the PSP signs the report): from Trio, run it in ``trio.to_thread.run_sync``. Raises TsmError
    when configfs-tsm is absent, or when neither the host's certificate table nor ``vcek_file`` has a VCEK.
    """
    evidence = SnpEvidence(*(tsm or ConfigfsTsm()).get_snp_report(report_data))
    table = evidence.certificates()
    if table.vcek is None and table.vlek is not None:
        # A VLEK host (a cloud provider's key): VLEK <- ASVK <- ARK; the ASVK comes in the table's ASK slot.
        if table.ask is None:
            raise TsmError("the host supplied a VLEK but no ASVK in the SEV-SNP certificate table: put AMD's "
                           "ASVK (kdsintf.amd.com/vlek/v1/<product>/cert_chain) in the host's table")
        return encode_snp_evidence(evidence.report, _der(table.vlek, "the VLEK"), _der(table.ask, "the ASVK"))
    vcek = table.vcek
    if vcek is None:
        if vcek_file is None:
            raise TsmError(
                "the host supplied no VCEK in the SEV-SNP certificate table: fetch this chip's VCEK from AMD's KDS "
                "(kdsintf.amd.com/vcek/v1/<product>/<chip id>?<tcb>) and set worker.snp_vcek_file"
            )
        vcek = Path(vcek_file).read_bytes()
    return encode_snp_evidence(evidence.report, _der(vcek, "the VCEK"))


def verify_snp_evidence(
    evidence: bytes, expected_report_data: bytes, policy: SnpPolicy, *, now: datetime | int | float,
    crl: bytes | None = None,
) -> SnpVerification:
    """Requester side: decode the evidence and verify it to AMD's pinned roots, REPORT_DATA and ``policy``
    (and, given AMD's CRL for the product, that the ASK/ASVK is not revoked)."""
    record = decode_snp_evidence(evidence)
    return verify_snp_report(record.report, record.vcek, expected_report_data=expected_report_data, policy=policy,
                             now=now, ask_pem=record.ask or None, crl=crl)
