"""Intel TDX quote v4 (ECDSA-P256) parsing and verification.

A quote is only worth something if every link from Intel's root key down to the TD report is
checked, so :func:`verify_tdx_quote` walks the whole chain itself with ``cryptography``:

1. the PCK certificate chain in the quote ends in a root whose public key equals the **pinned**
   Intel SGX Root CA key below (``pck_root``), each link is signed by its parent (``pck_chain``) and
   every certificate is valid at ``at`` (``cert_validity``);
2. the QE report is signed by the PCK leaf key (``qe_report_signature``) and comes from Intel's TD
   quoting enclave (``qe_identity``: pinned MRSIGNER, ISVPRODID 2, not a debug enclave);
3. QE REPORTDATA = SHA-256(attestation key || QE authentication data) || 32 zero bytes
   (``qe_report_data_binding``), which certifies the attestation key;
4. header || TD report body is signed by that attestation key (``quote_signature``);
5. TD REPORTDATA equals what the caller expects (``report_data``);
6. optionally, with collateral (TCB info, QE identity, CRLs), TCB status via ``dcap-qvl``.

Layout references: Intel TDX DCAP Quoting Library API, "Quote Format" (v4), and the SGX ECDSA quote
certification-data description. All integers are little-endian.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import AttestationError, QuoteFormatError

QUOTE_VERSION = 4
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
CERT_DATA_TYPE_PCK_CHAIN = 5
CERT_DATA_TYPE_QE_REPORT = 6

HEADER_LEN = 48
TD_REPORT_LEN = 584
SIGNED_LEN = HEADER_LEN + TD_REPORT_LEN  # the quote signature covers header || TD report body
QE_REPORT_LEN = 384
ECDSA_SIG_LEN = 64
ECDSA_KEY_LEN = 64

#: Intel's quoting-enclave vendor id (informational; the QE itself is pinned by MRSIGNER below).
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: MRSIGNER of Intel's production quoting enclaves, as published in Intel's QE identity collateral.
INTEL_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
#: ISVPRODID of the TD quoting enclave (the SGX QE uses 1).
INTEL_TD_QE_PRODID = 2

#: Intel SGX Root CA (self-signed, valid 2018-05-21 .. 2049-12-31), the trust anchor of every PCK
#: chain. Pinned here so that a root carried inside a quote is never trusted by itself.
#: SHA-256 fingerprint of the DER: 44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3.
INTEL_SGX_ROOT_CA_PEM = b"""-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----
"""
#: The pinned root's P-256 public key, uncompressed (04 || X || Y); compared against the chain's root.
INTEL_SGX_ROOT_CA_PUBKEY = bytes.fromhex(
    "040ba9c4c0c0c86193a3fe23d6b02cda10a8bbd4e88e48b4458561a36e705525f5"
    "67918e2edc88e40d860bd0cc4ee26aacc988e505a953558c453f6b0904ae7394"
)
INTEL_SGX_ROOT_CA = x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM)


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


# Fail at import rather than verify against a mistyped anchor.
_pinned_key = INTEL_SGX_ROOT_CA.public_key()
if not isinstance(_pinned_key, ec.EllipticCurvePublicKey) or _point(_pinned_key) != INTEL_SGX_ROOT_CA_PUBKEY:
    raise RuntimeError("pinned Intel SGX Root CA certificate and public key disagree")


class _Reader:
    """Bounds-checked little-endian cursor so truncation always becomes a QuoteFormatError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise QuoteFormatError(
                f"{self.what} truncated reading {field}: need {n} bytes at offset {self.pos}, "
                f"have {len(self.data) - self.pos}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        return int(struct.unpack("<H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header (v4). ``qe_svn``/``pce_svn`` are reserved in TDX but kept verbatim."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    @classmethod
    def parse(cls, data: bytes) -> QuoteHeader:
        r = _Reader(data, "quote header")
        return cls(
            version=r.u16("version"),
            att_key_type=r.u16("att_key_type"),
            tee_type=r.u32("tee_type"),
            qe_svn=r.u16("qe_svn"),
            pce_svn=r.u16("pce_svn"),
            qe_vendor_id=r.take(16, "qe_vendor_id"),
            user_data=r.take(20, "user_data"),
        )

    def to_bytes(self) -> bytes:
        return (
            struct.pack("<HHIHH", self.version, self.att_key_type, self.tee_type, self.qe_svn, self.pce_svn)
            + self.qe_vendor_id
            + self.user_data
        )


#: (field name, length) of the TD report body (TDREPORT 1.0, 584 bytes) in wire order.
TD_REPORT_FIELDS: tuple[tuple[str, int], ...] = (
    ("tee_tcb_svn", 16),
    ("mrseam", 48),
    ("mrsignerseam", 48),
    ("seam_attributes", 8),
    ("td_attributes", 8),
    ("xfam", 8),
    ("mrtd", 48),
    ("mrconfigid", 48),
    ("mrowner", 48),
    ("mrownerconfig", 48),
    ("rtmr0", 48),
    ("rtmr1", 48),
    ("rtmr2", 48),
    ("rtmr3", 48),
    ("report_data", 64),
)

#: Fields hashed, in this order, into :meth:`TdReport.image_hash`.
IMAGE_HASH_FIELDS: tuple[str, ...] = (
    "mrseam",
    "mrsignerseam",
    "seam_attributes",
    "td_attributes",
    "xfam",
    "mrtd",
    "mrconfigid",
    "mrowner",
    "mrownerconfig",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
)


@dataclass(frozen=True)
class TdReport:
    """TD report body: what the TDX module measured about the TD, plus 64 bytes of caller data."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes

    @classmethod
    def parse(cls, data: bytes) -> TdReport:
        r = _Reader(data, "TD report body")
        return cls(**{name: r.take(size, name) for name, size in TD_REPORT_FIELDS})

    def to_bytes(self) -> bytes:
        return b"".join(getattr(self, name) for name, _ in TD_REPORT_FIELDS)

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES bit 0: a debug TD's memory is readable by the host, so it is not confidential."""
        return bool(self.td_attributes[0] & 0x01)

    def image_hash(self) -> bytes:
        """SHA-256 over the raw bytes of MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES, TDATTRIBUTES, XFAM, MRTD,
        MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0, RTMR1, RTMR2, RTMR3, concatenated in that order.

        TEE_TCB_SVN (changes with TDX-module patching, judged by TCB status instead) and REPORTDATA
        (changes per report) are excluded, so one image running on one TDX module has one hash. All
        fields are fixed-size, so plain concatenation is unambiguous.
        """
        return hashlib.sha256(b"".join(getattr(self, name) for name in IMAGE_HASH_FIELDS)).digest()


@dataclass(frozen=True)
class QeReport:
    """The quoting enclave's 384-byte SGX report body, signed by the PCK key."""

    cpu_svn: bytes
    misc_select: int
    reserved1: bytes
    attributes: bytes
    mrenclave: bytes
    reserved2: bytes
    mrsigner: bytes
    reserved3: bytes
    isv_prod_id: int
    isv_svn: int
    reserved4: bytes
    report_data: bytes

    @classmethod
    def parse(cls, data: bytes) -> QeReport:
        r = _Reader(data, "QE report")
        return cls(
            cpu_svn=r.take(16, "cpu_svn"),
            misc_select=r.u32("misc_select"),
            reserved1=r.take(28, "reserved1"),
            attributes=r.take(16, "attributes"),
            mrenclave=r.take(32, "mrenclave"),
            reserved2=r.take(32, "reserved2"),
            mrsigner=r.take(32, "mrsigner"),
            reserved3=r.take(96, "reserved3"),
            isv_prod_id=r.u16("isv_prod_id"),
            isv_svn=r.u16("isv_svn"),
            reserved4=r.take(60, "reserved4"),
            report_data=r.take(64, "report_data"),
        )

    def to_bytes(self) -> bytes:
        return (
            self.cpu_svn
            + struct.pack("<I", self.misc_select)
            + self.reserved1
            + self.attributes
            + self.mrenclave
            + self.reserved2
            + self.mrsigner
            + self.reserved3
            + struct.pack("<HH", self.isv_prod_id, self.isv_svn)
            + self.reserved4
            + self.report_data
        )


@dataclass(frozen=True)
class TdxQuote:
    """A fully parsed TDX v4 quote; :meth:`to_bytes` reproduces the input (minus zero padding)."""

    header: QuoteHeader
    td_report: TdReport
    signature: bytes  # ECDSA-P256 r || s over header || TD report body
    attestation_key: bytes  # P-256 public key X || Y
    outer_cert_type: int  # 6
    qe_report_bytes: bytes
    qe_report_signature: bytes  # ECDSA-P256 r || s over the QE report, by the PCK leaf key
    qe_auth_data: bytes
    inner_cert_type: int  # 5
    pck_chain_pem: bytes  # PEM leaf, intermediate, root; may end in a NUL byte
    padding: int = 0  # trailing zero bytes after the signature data (seen in real quotes)

    @property
    def qe_report(self) -> QeReport:
        return QeReport.parse(self.qe_report_bytes)

    @property
    def signed_bytes(self) -> bytes:
        return self.header.to_bytes() + self.td_report.to_bytes()

    def certification_data(self) -> bytes:
        inner = struct.pack("<HI", self.inner_cert_type, len(self.pck_chain_pem)) + self.pck_chain_pem
        return (
            self.qe_report_bytes
            + self.qe_report_signature
            + struct.pack("<H", len(self.qe_auth_data))
            + self.qe_auth_data
            + inner
        )

    def to_bytes(self) -> bytes:
        cert = self.certification_data()
        sig_data = self.signature + self.attestation_key + struct.pack("<HI", self.outer_cert_type, len(cert)) + cert
        return self.signed_bytes + struct.pack("<I", len(sig_data)) + sig_data + bytes(self.padding)

    def pck_chain(self) -> list[x509.Certificate]:
        """The PEM chain as certificates (leaf first); raises QuoteFormatError if it does not parse."""
        try:
            certs = x509.load_pem_x509_certificates(self.pck_chain_pem.rstrip(b"\x00"))
        except ValueError as exc:
            raise QuoteFormatError(f"PCK certificate chain does not parse: {exc}") from exc
        if len(certs) != 3:
            raise QuoteFormatError(f"PCK chain must be leaf, intermediate, root; got {len(certs)} certs")
        return certs


def parse_tdx_quote(data: bytes) -> TdxQuote:
    """Parse a TDX v4 ECDSA-P256 quote whose certification data is type 6 wrapping type 5.

    Trailing bytes after the signature data are accepted only if all zero (quote buffers are often
    padded); anything else is a QuoteFormatError, since unsigned trailing bytes must not hide data.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise QuoteFormatError("quote must be bytes")
    data = bytes(data)
    r = _Reader(data, "quote")
    header = QuoteHeader.parse(r.take(HEADER_LEN, "header"))
    if header.version != QUOTE_VERSION:
        raise QuoteFormatError(f"unsupported quote version {header.version} (want {QUOTE_VERSION})")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteFormatError(f"unsupported attestation key type {header.att_key_type} (want ECDSA-P256=2)")
    if header.tee_type != TEE_TYPE_TDX:
        raise QuoteFormatError(f"not a TDX quote: tee type {header.tee_type:#x} (want 0x81)")
    td_report = TdReport.parse(r.take(TD_REPORT_LEN, "TD report body"))
    sig_len = r.u32("signature data length")
    sig = _Reader(r.take(sig_len, "signature data"), "signature data")
    padding = r.rest()
    if any(padding):
        raise QuoteFormatError(f"{len(padding)} non-zero trailing bytes after the signature data")
    signature = sig.take(ECDSA_SIG_LEN, "quote signature")
    att_key = sig.take(ECDSA_KEY_LEN, "attestation key")
    outer_type = sig.u16("certification data type")
    if outer_type != CERT_DATA_TYPE_QE_REPORT:
        raise QuoteFormatError(f"certification data type {outer_type}, want 6 (QE report certification data)")
    outer_len = sig.u32("certification data size")
    cert = _Reader(sig.take(outer_len, "certification data"), "QE report certification data")
    if sig.pos != len(sig.data):
        raise QuoteFormatError(f"{len(sig.data) - sig.pos} unexpected bytes after certification data")
    qe_report = cert.take(QE_REPORT_LEN, "QE report")
    qe_sig = cert.take(ECDSA_SIG_LEN, "QE report signature")
    auth_len = cert.u16("QE authentication data size")
    auth = cert.take(auth_len, "QE authentication data")
    inner_type = cert.u16("PCK certification data type")
    if inner_type != CERT_DATA_TYPE_PCK_CHAIN:
        raise QuoteFormatError(f"nested certification data type {inner_type}, want 5 (PCK cert chain)")
    inner_len = cert.u32("PCK certification data size")
    pem = cert.take(inner_len, "PCK certificate chain")
    if cert.pos != len(cert.data):
        raise QuoteFormatError(f"{len(cert.data) - cert.pos} unexpected bytes after the PCK chain")
    return TdxQuote(
        header=header,
        td_report=td_report,
        signature=signature,
        attestation_key=att_key,
        outer_cert_type=outer_type,
        qe_report_bytes=qe_report,
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        inner_cert_type=inner_type,
        pck_chain_pem=pem,
        padding=len(padding),
    )


@dataclass(frozen=True)
class TdxVerification:
    """Outcome of a successful :func:`verify_tdx_quote`."""

    quote: TdxQuote
    image_hash: bytes
    tcb_checked: bool
    tcb_status: str | None
    tcb_reason: str
    advisory_ids: tuple[str, ...] = ()

    @property
    def mrtd(self) -> bytes:
        return self.quote.td_report.mrtd


def _raw_sig_to_der(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes) -> bool:
    try:
        key.verify(_raw_sig_to_der(raw_sig), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _as_datetime(at: datetime | int | float | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if isinstance(at, datetime):
        return at if at.tzinfo else at.replace(tzinfo=UTC)
    return datetime.fromtimestamp(at, UTC)


def _check_chain(certs: Sequence[x509.Certificate], root: x509.Certificate, at: datetime) -> None:
    """Leaf -> intermediate -> root, root pinned by public key; raises AttestationError."""
    leaf, inter, chain_root = certs
    pinned = root.public_key()
    try:
        chain_root_key = chain_root.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError("pck_root", f"chain root public key does not parse: {exc}") from exc
    if (
        not isinstance(chain_root_key, ec.EllipticCurvePublicKey)
        or not isinstance(pinned, ec.EllipticCurvePublicKey)
        or _point(chain_root_key) != _point(pinned)
    ):
        raise AttestationError("pck_root", "PCK chain is not rooted in the pinned Intel SGX Root CA key")
    # Each link, the root's self-signature included, is checked against the pinned key, not the
    # key the quote carries (they are equal by now, but say what we mean).
    for child, parent, what in (
        (chain_root, root, "root self-signature"),
        (inter, chain_root, "intermediate CA <- root"),
        (leaf, inter, "PCK leaf <- intermediate CA"),
    ):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise AttestationError("pck_chain", f"{what}: {type(exc).__name__} {exc}".strip()) from exc
    for cert, is_ca, what in (
        (leaf, False, "PCK leaf"),
        (inter, True, "intermediate"),
        (chain_root, True, "root"),
    ):
        try:
            bc: x509.BasicConstraints | None = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        except ValueError as exc:  # malformed or duplicate extensions
            raise AttestationError("pck_chain", f"{what} certificate extensions: {exc}") from exc
        if is_ca and (bc is None or not bc.ca):
            raise AttestationError("pck_chain", f"{what} certificate is not a CA")
        if not is_ca and bc is not None and bc.ca:
            raise AttestationError("pck_chain", f"{what} certificate must not be a CA")
    for cert, what in ((leaf, "PCK leaf"), (inter, "intermediate CA"), (chain_root, "root CA")):
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise AttestationError(
                "cert_validity",
                f"{what} certificate valid {cert.not_valid_before_utc.isoformat()} .. "
                f"{cert.not_valid_after_utc.isoformat()}, not at {at.isoformat()}",
            )


def _p256_from_raw(raw: bytes, check: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError as exc:
        raise AttestationError(check, f"attestation key is not a P-256 point: {exc}") from exc


def verify_tdx_quote(
    quote: bytes | TdxQuote,
    expected_report_data: bytes,
    *,
    at: datetime | int | float | None = None,
    collateral: Any = None,
) -> TdxVerification:
    """Verify a TDX quote from the pinned Intel root down to REPORTDATA; raise AttestationError.

    ``at`` (datetime or unix seconds, default now) is the time for certificate validity and TCB
    checks. ``collateral`` is a ``dcap_qvl.QuoteCollateralV3`` (TCB info, QE identity, CRLs); without
    it the result says ``tcb_checked=False`` — the quote is genuine but its platform may be unpatched.
    """
    return _verify(quote, expected_report_data, at=at, collateral=collateral, root=INTEL_SGX_ROOT_CA)


def _verify(
    quote: bytes | TdxQuote,
    expected_report_data: bytes,
    *,
    at: datetime | int | float | None,
    collateral: Any,
    root: x509.Certificate,
) -> TdxVerification:
    """:func:`verify_tdx_quote` with the trust anchor as a parameter, so tests can build a whole fake
    Intel PKI; production code must go through :func:`verify_tdx_quote` (pinned root)."""
    q = quote if isinstance(quote, TdxQuote) else parse_tdx_quote(quote)
    when = _as_datetime(at)

    certs = q.pck_chain()
    _check_chain(certs, root, when)
    try:
        leaf_key = certs[0].public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError("pck_chain", f"PCK leaf key does not parse: {exc}") from exc
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or not isinstance(leaf_key.curve, ec.SECP256R1):
        raise AttestationError("pck_chain", "PCK leaf key is not ECDSA P-256")

    if not _ecdsa_ok(leaf_key, q.qe_report_signature, q.qe_report_bytes):
        raise AttestationError("qe_report_signature", "QE report is not signed by the PCK leaf key")

    qe = q.qe_report
    if qe.mrsigner != INTEL_QE_MRSIGNER or qe.isv_prod_id != INTEL_TD_QE_PRODID:
        raise AttestationError(
            "qe_identity",
            f"QE is not Intel's TD quoting enclave (mrsigner {qe.mrsigner.hex()}, prodid {qe.isv_prod_id})",
        )
    if qe.attributes[0] & 0x02:
        raise AttestationError("qe_identity", "quoting enclave runs in debug mode")

    binding = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
    if qe.report_data != binding + bytes(32):
        raise AttestationError(
            "qe_report_data_binding",
            "QE REPORTDATA != SHA-256(attestation key || QE auth data) || zeros",
        )

    att_key = _p256_from_raw(q.attestation_key, "qe_report_data_binding")
    if not _ecdsa_ok(att_key, q.signature, q.signed_bytes):
        raise AttestationError("quote_signature", "header || TD report body not signed by the attestation key")

    if len(expected_report_data) != 64 or q.td_report.report_data != bytes(expected_report_data):
        raise AttestationError(
            "report_data",
            f"REPORTDATA {q.td_report.report_data.hex()} != expected {bytes(expected_report_data).hex()}",
        )

    tcb_checked, status, reason = False, None, "no collateral supplied"
    advisories: tuple[str, ...] = ()
    if collateral is not None:
        status, advisories = _check_tcb(q.to_bytes(), collateral, root, when)
        tcb_checked, reason = True, "checked with dcap-qvl"
    return TdxVerification(
        quote=q,
        image_hash=q.td_report.image_hash(),
        tcb_checked=tcb_checked,
        tcb_status=status,
        tcb_reason=reason,
        advisory_ids=tuple(advisories),
    )


def _check_tcb(raw: bytes, collateral: Any, root: x509.Certificate, when: datetime) -> tuple[str, tuple[str, ...]]:
    """Run dcap-qvl over the quote with caller-supplied collateral, anchored at ``root``."""
    try:
        import dcap_qvl
    except ImportError as exc:  # pragma: no cover - dependency present in the venv
        raise AttestationError("tcb", "collateral supplied but dcap-qvl is not installed") from exc
    if not isinstance(collateral, dcap_qvl.QuoteCollateralV3):
        raise AttestationError("tcb", "collateral must be a dcap_qvl.QuoteCollateralV3")
    try:
        rep = dcap_qvl.verify_with_root_ca(
            raw, collateral, root.public_bytes(serialization.Encoding.DER), int(when.timestamp())
        )
    except ValueError as exc:
        raise AttestationError("tcb", f"dcap-qvl rejected the quote/collateral: {exc}") from exc
    return str(rep.status), tuple(str(a) for a in rep.advisory_ids)
