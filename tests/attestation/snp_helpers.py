"""Helpers for SEV-SNP tests: the real Milan evidence, and a test AMD PKI (ARK -> ASK -> VCEK, RSA-PSS).

The test PKI mirrors AMD's: same subject names as the real Milan chain (so name-based selection picks
the pinned Milan root when a forged chain is offered to the real verifier), RSA keys signing with
RSASSA-PSS SHA-384 salt 48, a P-384 VCEK carrying AMD's TCB and hwID extensions. Reports re-signed
by a test VCEK verify only under the test roots (``snp._verify(..., roots=pki.roots)``).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cocoon_node.attestation import TcbVersion
from cocoon_node.attestation import _snp_chain as chain

TESTDATA = Path(__file__).resolve().parents[1] / "data"
MILAN_DIR = TESTDATA / "sev-snp-milan"
TURIN_DIR = TESTDATA / "sev-snp-turin"

#: Inside the real Milan VCEK's validity (2023-04-03 .. 2030-04-03).
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


def real_report() -> bytes:
    return (MILAN_DIR / "report-milan.bin").read_bytes()


def real_vcek() -> bytes:
    return (MILAN_DIR / "vcek-milan.der").read_bytes()


def real_turin_vcek() -> bytes:
    return (TURIN_DIR / "vcek-turin.der").read_bytes()


def fixed_p384(label: str) -> ec.EllipticCurvePrivateKey:
    d = int.from_bytes(hashlib.sha384(label.encode()).digest(), "big") % (P384_ORDER - 1) + 1
    return ec.derive_private_key(d, ec.SECP384R1())


@cache
def _rsa(label: str) -> rsa.RSAPrivateKey:
    # 2048 bits keeps the suite quick; AMD's are 4096, the verifier does not depend on the size.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def amd_name(cn: str) -> x509.Name:
    """A subject shaped like AMD's (OU, C, L, ST, O, CN)."""
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca(
    subject: x509.Name, issuer: x509.Name, pub: rsa.RSAPublicKey, signer: rsa.RSAPrivateKey, ca: bool = True
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(0x10000)
        .not_valid_before(datetime(2020, 10, 22, tzinfo=UTC))
        .not_valid_after(datetime(2045, 10, 22, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA384(), rsa_padding=PSS)
    )


@dataclass(frozen=True)
class TestAmdPki:
    """A stand-in for one product's AMD PKI (ARK self-signed, ASK or ASVK signed by it)."""

    __test__ = False  # not a pytest class

    product: str
    ark: x509.Certificate
    ark_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    ask_key: rsa.RSAPrivateKey

    @property
    def roots(self) -> dict[str, chain.SnpRoot]:
        return {self.product: chain.SnpRoot(self.product, self.ark, self.ask)}

    def ask_pem(self) -> bytes:
        return self.ask.public_bytes(serialization.Encoding.PEM)


def make_pki(
    label: str = "test-amd",
    *,
    product: str = "Milan",
    ark_cn: str = "",
    ask_cn: str = "",
    ask_is_ca: bool = True,
    ark_signer: rsa.RSAPrivateKey | None = None,
) -> TestAmdPki:
    """``ark_signer`` signs the ARK instead of its own key (a root that is not self-signed)."""
    ark_key, ask_key = _rsa(label + "/ark"), _rsa(label + "/ask")
    ark_name = amd_name(ark_cn or f"ARK-{product}")
    ark = _ca(ark_name, ark_name, ark_key.public_key(), ark_signer or ark_key)
    ask = _ca(amd_name(ask_cn or f"SEV-{product}"), ark_name, ask_key.public_key(), ark_key, ca=ask_is_ca)
    return TestAmdPki(product, ark, ark_key, ask, ask_key)


def _der_int(v: int) -> bytes:
    body = v.to_bytes(1, "big") if v < 0x80 else b"\x00" + v.to_bytes(1, "big")
    return bytes([0x02, len(body)]) + body


def make_vcek(
    pki: TestAmdPki,
    key: ec.EllipticCurvePrivateKey,
    *,
    hw_id: bytes | None,
    tcb: TcbVersion,
    csp_id: str | None = None,
    not_before: datetime = datetime(2023, 4, 3, tzinfo=UTC),
    not_after: datetime = datetime(2030, 4, 3, tzinfo=UTC),
    raw_spl: dict[x509.ObjectIdentifier, bytes] | None = None,
    cn: str = "SEV-VCEK",
    issuer: x509.Name | None = None,
    is_ca: bool | None = None,
) -> bytes:
    """A leaf (VCEK, or VLEK when ``csp_id`` is given) with AMD's extensions, signed RSA-PSS by the ASK."""
    spls = {
        chain.OID_BL_SPL: _der_int(tcb.boot_loader),
        chain.OID_TEE_SPL: _der_int(tcb.tee),
        chain.OID_SNP_SPL: _der_int(tcb.snp),
        chain.OID_UCODE_SPL: _der_int(tcb.microcode),
    }
    if pki.product == "Turin":
        spls[chain.OID_FMC_SPL] = _der_int(tcb.fmc)
    spls.update(raw_spl or {})
    b = (
        x509.CertificateBuilder()
        .subject_name(amd_name(cn))
        .issuer_name(issuer or pki.ask.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.UnrecognizedExtension(chain.OID_STRUCT_VERSION, _der_int(0)), critical=False)
        .add_extension(x509.UnrecognizedExtension(chain.OID_PRODUCT_NAME, b"\x16\x08Milan-B0"), critical=False)
    )
    if is_ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    for oid, value in spls.items():
        b = b.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    if hw_id is not None:
        b = b.add_extension(x509.UnrecognizedExtension(chain.OID_HW_ID, hw_id), critical=False)
    if csp_id is not None:
        ia5 = bytes([0x16, len(csp_id)]) + csp_id.encode()
        b = b.add_extension(x509.UnrecognizedExtension(chain.OID_CSP_ID, ia5), critical=False)
    cert = b.sign(pki.ask_key, hashes.SHA384(), rsa_padding=PSS)
    return cert.public_bytes(serialization.Encoding.DER)


def patch(report: bytes, offset: int, value: bytes) -> bytes:
    b = bytearray(report)
    b[offset : offset + len(value)] = value
    return bytes(b)


def sign_report(report: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Replace the signature of ``report`` by ``key``'s over bytes 0x000..0x29F (R, S as 72-byte LE)."""
    r, s = decode_dss_signature(key.sign(report[:0x2A0], ec.ECDSA(hashes.SHA384())))
    sig = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    return report[:0x2A0] + sig + report[0x2A0 + len(sig) :]


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def make_crl(
    pki: TestAmdPki,
    *,
    revoked: tuple[int, ...] = (),
    last_update: datetime = datetime(2025, 12, 1, tzinfo=UTC),
    next_update: datetime = datetime(2026, 2, 1, tzinfo=UTC),
    signer: rsa.RSAPrivateKey | None = None,
) -> bytes:
    """A CRL shaped like AMD's KDS one (issued by the ARK, RSA-PSS SHA-384) under the TEST PKI: no real AMD CRL
    is recorded in this repository. ``revoked`` lists serials (the ASK's is ``pki.ask.serial_number``)."""
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ark.subject)
        .last_update(last_update)
        .next_update(next_update)
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(datetime(2025, 11, 1, tzinfo=UTC))
            .build()
        )
    return b.sign(signer or pki.ark_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)
