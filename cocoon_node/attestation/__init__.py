"""TEE attestation: prove which code and model a worker runs, and check such proofs.

Producing a report: build :class:`Claims`, get evidence over ``claims.report_data()`` (a TDX quote
via :func:`get_tdx_quote`, SEV-SNP evidence via :func:`collect_snp_evidence`, or INSECURE dev evidence
via :class:`DevPlatform`), then
:func:`sign_report`. Checking one: :func:`verify_report` (raises) or :func:`check_report` (Verdict).

- :mod:`.report`: the report record, its claims and signed envelope (typed in
  :mod:`cocoon_node.wire.messages.attestation`, encoded by the wire package);
- :mod:`.verify` (a report against a :class:`Policy`), :mod:`.policy` (what a verifier accepts),
  :mod:`.allowlists` (allow-lists as operators write them; config and the node parse with it);
- evidence: :mod:`.tdx` (quote parsing and verification, over the private :mod:`._tdx_quote` layout and
  :mod:`._tdx_pck` chain), :mod:`.tsm` (getting a quote through configfs-tsm), :mod:`.measure` (a TDX
  image's allow-list values from its quote), :mod:`.snp` (SEV-SNP, over ``_snp_*``; its evidence record
  and collection in :mod:`.snp_evidence`), :mod:`.fresh` (evidence over a client's nonce), :mod:`.dev`
  (INSECURE dev evidence);
- collateral: :mod:`.collateral` (Intel's / AMD's signed TCB data a report ships, ``sign_report(...,
  collateral=)``), fetched and cached by workers through :mod:`.pcs` (Intel PCS / a PCCS) and :mod:`.kds`
  (AMD's CRL);
- :mod:`.weights` (the model weight hash), :mod:`.errors`.
"""

from . import allowlists
from .dev import DevEvidence, DevPlatform, dev_image_hash, verify_dev_evidence
from .errors import AttestationError, QuoteFormatError
from .measure import measurements_of_report
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
    "allowlists",
    "check_report",
    "collect_snp_evidence",
    "decode_and_verify_envelope",
    "decode_snp_evidence",
    "dev_image_hash",
    "encode_snp_evidence",
    "get_tdx_quote",
    "libp2p_pubkey_protobuf",
    "measurements_of_report",
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
