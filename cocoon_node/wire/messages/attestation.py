"""``protocols/attestation.toml``: the attestation report (canonical CBOR), SEV-SNP and dev-INSECURE evidence.

The claims are the record without ``evidence``; the TEE evidence commits to SHA-512 of their canonical
CBOR, so :class:`AttestationReport` extends :class:`AttestationClaims` rather than repeating its fields.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal

from msgspec import Meta

from cocoon_node.wire.typed import Message, Uint, utf8_max

#: The record version this code speaks; v2 added ``backend`` and ``upstream`` (where prompts go).
REPORT_VERSION: Final = 2
TeeKind = Literal["tdx", "snp", "dev-INSECURE"]
#: An SEV-SNP attestation report is 0x4A0 bytes in every version (2 and later).
SNP_REPORT_BYTES: Final = 0x4A0
MAX_SNP_VCEK_BYTES: Final = 4096
MAX_EVIDENCE_BYTES: Final = 12288
#: Intel's / AMD's signed collateral a worker ships with its report (``collateral``); optional, so a record
#: without it encodes exactly as before.
MAX_COLLATERAL_BYTES: Final = 32768
MAX_ENVELOPE_BYTES: Final = 16384 + MAX_COLLATERAL_BYTES


class AttestationEnvelope(Message, frozen=True):
    """``{payload, signature}``: signature = Ed25519(node key, domain prefix || payload), see wire.envelope."""

    MAX_BYTES: ClassVar[int] = MAX_ENVELOPE_BYTES

    payload: Annotated[bytes, Meta(max_length=MAX_ENVELOPE_BYTES)]
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


class AttestationClaims(Message, frozen=True):
    """What a node asserts about itself; only ever hashed (into the evidence's report data), never sent alone."""

    MAX_BYTES: ClassVar[int] = 4096

    version: Literal[2]
    peer_id: Annotated[bytes, Meta(max_length=64)]
    public_key: Annotated[bytes, Meta(max_length=128)]
    model_name: Annotated[str, utf8_max(256)]
    model_hash: Annotated[bytes, Meta(min_length=32, max_length=32)]
    node_version: Annotated[str, utf8_max(64)]
    issued_at: Uint
    expires_at: Uint
    tee_kind: TeeKind
    backend: Annotated[str, utf8_max(32)]
    upstream: Annotated[str, utf8_max(256)]


class AttestationReport(AttestationClaims, frozen=True):
    """The signed record: the claims plus the TEE evidence (a raw TDX quote, SNP evidence or dev evidence)."""

    MAX_BYTES: ClassVar[int] = MAX_ENVELOPE_BYTES

    evidence: Annotated[bytes, Meta(max_length=MAX_EVIDENCE_BYTES)]
    # Not a claim: the TEE vendor's signed TCB data for the evidence (canonical CBOR of tdx_collateral or
    # snp_collateral), refreshed without a new quote; b"" (omitted on the wire) = none shipped.
    collateral: Annotated[bytes, Meta(max_length=MAX_COLLATERAL_BYTES)] = b""


class TdxCollateralRecord(Message, frozen=True):
    """Intel's DCAP collateral for one TDX quote, as fetched from a PCCS or Intel's PCS (Intel-signed; the
    worker only relays it). Field for field dcap-qvl's ``QuoteCollateralV3``."""

    MAX_BYTES: ClassVar[int] = MAX_COLLATERAL_BYTES

    kind: Literal["tdx"]
    pck_crl_issuer_chain: Annotated[str, utf8_max(8192)]
    root_ca_crl: Annotated[bytes, Meta(max_length=4096)]
    pck_crl: Annotated[bytes, Meta(max_length=16384)]
    tcb_info_issuer_chain: Annotated[str, utf8_max(8192)]
    tcb_info: Annotated[str, utf8_max(16384)]
    tcb_info_signature: Annotated[bytes, Meta(min_length=64, max_length=64)]
    qe_identity_issuer_chain: Annotated[str, utf8_max(8192)]
    qe_identity: Annotated[str, utf8_max(4096)]
    qe_identity_signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


class SnpCollateralRecord(Message, frozen=True):
    """AMD's CRL for the evidence's product (KDS ``/vcek/v1/<product>/crl`` or ``/vlek/v1/...``), ARK-signed."""

    MAX_BYTES: ClassVar[int] = 8448

    kind: Literal["snp"]
    crl: Annotated[bytes, Meta(max_length=8192)]


class DevEvidenceRecord(Message, frozen=True):
    """Evidence of the INSECURE software dev TEE: it proves nothing about hardware."""

    MAX_BYTES: ClassVar[int] = 1024

    kind: Literal["dev-INSECURE"]
    report_data: Annotated[bytes, Meta(min_length=64, max_length=64)]
    image_hash: Annotated[bytes, Meta(min_length=32, max_length=32)]
    platform_key: Annotated[bytes, Meta(min_length=32, max_length=32)]
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


class SnpEvidenceRecord(Message, frozen=True):
    """An SEV-SNP guest's evidence: the raw attestation report and the VCEK of the chip that signed it.

    The ASK and ARK are not carried: the verifier pins AMD's, so shipping them would only add bytes.
    """

    MAX_BYTES: ClassVar[int] = 10240

    kind: Literal["snp"]
    report: Annotated[bytes, Meta(min_length=SNP_REPORT_BYTES, max_length=SNP_REPORT_BYTES)]
    vcek: Annotated[bytes, Meta(max_length=MAX_SNP_VCEK_BYTES)]
    # The intermediate that signed ``vcek`` when it is not a pinned ASK: the ASVK of a VLEK (DER). It must
    # itself be signed by a pinned ARK. b"" (omitted) for a VCEK.
    ask: Annotated[bytes, Meta(max_length=MAX_SNP_VCEK_BYTES)] = b""


PROTOCOL = "attestation"
MESSAGES: dict[str, type[Message]] = {
    "attestation_envelope": AttestationEnvelope,
    "attestation_report": AttestationReport,
    "attestation_claims": AttestationClaims,
    "dev_evidence": DevEvidenceRecord,
    "snp_evidence": SnpEvidenceRecord,
    "tdx_collateral": TdxCollateralRecord,
    "snp_collateral": SnpCollateralRecord,
}
