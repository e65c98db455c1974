"""TEE attestation: prove which code and model a worker runs, and check such proofs.

Producing a report: build :class:`Claims`, get evidence over ``claims.report_data()`` (a TDX quote
via :func:`get_tdx_quote`, SEV-SNP evidence via :func:`collect_snp_evidence`, or INSECURE dev evidence
via :class:`DevPlatform`), then :func:`sign_report`. Checking one: :func:`verify_report` (raises) or
:func:`check_report` (Verdict).
"""

from .dev import DevEvidence, DevPlatform, dev_image_hash, verify_dev_evidence
from .errors import AttestationError, QuoteFormatError
from .policy import (
    ANY,
    TCB_STATUSES,
    UPSTREAM_ANYWHERE,
    UPSTREAM_IN_TD,
    UPSTREAM_NONE,
    UPSTREAM_RULES,
    Policy,
    rtmr_set_digest,
    upstream_in_td,
    upstream_origin,
)
from .report import (
    MAX_ENVELOPE_BYTES,
    REPORT_VERSION,
    TEE_DEV,
    TEE_SNP,
    TEE_TDX,
    Claims,
    Report,
    decode_and_verify_envelope,
    libp2p_pubkey_protobuf,
    peer_id_from_pubkey,
    raw_from_libp2p_pubkey,
    sign_report,
)
from .snp import SnpPolicy, SnpReport, SnpVerification, TcbVersion, parse_snp_report, verify_snp_report
from .snp_evidence import collect_snp_evidence, decode_snp_evidence, encode_snp_evidence, snp_image_hash
from .tdx import (
    INTEL_SGX_ROOT_CA_PEM,
    TdReport,
    TdxQuote,
    TdxVerification,
    parse_tdx_quote,
    verify_tdx_quote,
)
from .tsm import ConfigfsTsm, TsmError, get_tdx_quote
from .verify import Verdict, check_report, verify_report
from .weights import model_hash

__all__ = [
    "ANY",
    "INTEL_SGX_ROOT_CA_PEM",
    "MAX_ENVELOPE_BYTES",
    "REPORT_VERSION",
    "TCB_STATUSES",
    "TEE_DEV",
    "TEE_SNP",
    "TEE_TDX",
    "UPSTREAM_ANYWHERE",
    "UPSTREAM_IN_TD",
    "UPSTREAM_NONE",
    "UPSTREAM_RULES",
    "AttestationError",
    "Claims",
    "ConfigfsTsm",
    "DevEvidence",
    "DevPlatform",
    "Policy",
    "QuoteFormatError",
    "Report",
    "SnpPolicy",
    "SnpReport",
    "SnpVerification",
    "TcbVersion",
    "TdReport",
    "TdxQuote",
    "TdxVerification",
    "TsmError",
    "Verdict",
    "check_report",
    "collect_snp_evidence",
    "decode_and_verify_envelope",
    "decode_snp_evidence",
    "dev_image_hash",
    "encode_snp_evidence",
    "get_tdx_quote",
    "libp2p_pubkey_protobuf",
    "model_hash",
    "parse_snp_report",
    "parse_tdx_quote",
    "peer_id_from_pubkey",
    "raw_from_libp2p_pubkey",
    "rtmr_set_digest",
    "sign_report",
    "snp_image_hash",
    "upstream_in_td",
    "upstream_origin",
    "verify_dev_evidence",
    "verify_report",
    "verify_snp_report",
    "verify_tdx_quote",
]
