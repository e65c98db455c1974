"""TDX quote v4 (ECDSA-P256) layout: parse the bytes into typed parts, and reproduce them.

Layout references: Intel TDX DCAP Quoting Library API, "Quote Format" (v4), and the SGX ECDSA quote
certification-data description. All integers are little-endian. Nothing here checks a signature; that is
:mod:`.tdx`'s job.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography import x509

from .errors import QuoteFormatError

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
