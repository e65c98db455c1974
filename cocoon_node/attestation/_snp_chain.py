"""AMD's SEV-SNP certificate chain: pinned ARK (self-signed) -> ASK (or ASVK) -> VCEK (or VLEK).

Every link is RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt (AMD "Versioned Chip Endorsement
Key (VCEK) Certificate and KDS Interface Specification", pub. 57230). The signature is checked with
exactly those parameters, so a certificate declaring anything else fails. The leaf carries AMD's
extensions under 1.3.6.1.4.1.3704.1: the TCB it was derived for (SPLs, DER INTEGERs) and, for a VCEK,
the chip's hwID (raw bytes: 64 on Milan and Genoa, 8 on Turin); a VLEK carries a cspID instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import SignatureAlgorithmOID

from . import _snp_roots
from ._snp_report import GENOA, MILAN, TURIN, TcbVersion
from .errors import AttestationError

# AMD issues VCEKs with serial number 0, which cryptography (>= 42) warns about on every load and says a
# future release will refuse. Silence that warning only where this module loads certificates (a filter
# installed at import; an import inside a catch_warnings block loses it, and the warning shows again);
# a refusal becomes a clear "vcek_format" error in load_cert.
warnings.filterwarnings(
    "ignore",
    message="Parsed a serial number which wasn't positive",
    module=__name__.replace(".", r"\."),
)

_AMD = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{_AMD}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{_AMD}.2")
OID_BL_SPL = x509.ObjectIdentifier(f"{_AMD}.3.1")
OID_TEE_SPL = x509.ObjectIdentifier(f"{_AMD}.3.2")
OID_SNP_SPL = x509.ObjectIdentifier(f"{_AMD}.3.3")
OID_UCODE_SPL = x509.ObjectIdentifier(f"{_AMD}.3.8")
OID_FMC_SPL = x509.ObjectIdentifier(f"{_AMD}.3.9")  # Turin and later
OID_HW_ID = x509.ObjectIdentifier(f"{_AMD}.4")
OID_CSP_ID = x509.ObjectIdentifier(f"{_AMD}.5")  # VLEK only

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
#: hwID length per product: Turin's VCEK names the chip by 8 bytes, the report pads them to 64 with zeros.
HW_ID_LEN = {MILAN: 64, GENOA: 64, TURIN: 8}


@dataclass(frozen=True)
class SnpRoot:
    """One product's pinned trust anchor and AMD's signing key for it."""

    product: str
    ark: x509.Certificate
    ask: x509.Certificate


def _root(product: str, ark_pem: bytes, ask_pem: bytes) -> SnpRoot:
    return SnpRoot(product, x509.load_pem_x509_certificate(ark_pem), x509.load_pem_x509_certificate(ask_pem))


#: The pinned roots: a chain is accepted only if it ends at one of these ARKs.
AMD_SNP_ROOTS: Mapping[str, SnpRoot] = {
    MILAN: _root(MILAN, _snp_roots.AMD_ARK_MILAN_PEM, _snp_roots.AMD_ASK_MILAN_PEM),
    GENOA: _root(GENOA, _snp_roots.AMD_ARK_GENOA_PEM, _snp_roots.AMD_ASK_GENOA_PEM),
    TURIN: _root(TURIN, _snp_roots.AMD_ARK_TURIN_PEM, _snp_roots.AMD_ASK_TURIN_PEM),
}


@dataclass(frozen=True)
class SnpVcek:
    """A leaf certificate that chained to a pinned ARK, with AMD's extensions decoded."""

    product: str  # whose ARK the chain ends at
    kind: str  # "VCEK" or "VLEK"
    tcb: TcbVersion
    hw_id: bytes | None  # VCEK: the chip id it was issued for
    csp_id: str | None  # VLEK: the cloud provider it was issued to
    product_name: str | None  # e.g. "Milan-B0", informational
    certificate: x509.Certificate
    public_key: ec.EllipticCurvePublicKey


def load_cert(data: bytes | x509.Certificate, check: str, what: str) -> x509.Certificate:
    """DER or PEM to a certificate; anything that does not parse is an AttestationError(``check``)."""
    if isinstance(data, x509.Certificate):
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AttestationError(check, f"{what} must be bytes")
    raw = bytes(data)
    try:
        try:
            return _parse_cert(raw)
        except CryptographyDeprecationWarning:
            # The application turned warnings into errors (python -W error): load once more with the
            # serial-number warning ignored. Rare, so the non-thread-safe catch_warnings is acceptable.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                return _parse_cert(raw)
    except ValueError as exc:
        hint = ""
        if "serial" in str(exc).lower():
            hint = " (AMD issues VCEKs with serial number 0; this cryptography version refuses them)"
        raise AttestationError(check, f"{what} does not parse: {exc}{hint}") from exc


def _parse_cert(raw: bytes) -> x509.Certificate:
    if raw.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(raw)
    return x509.load_der_x509_certificate(raw)


def _check_link(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    if child.issuer != parent.subject:
        raise AttestationError("cert_chain", f"{what}: issuer {child.issuer.rfc4514_string()} is not the parent")
    if child.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise AttestationError(
            "cert_chain", f"{what}: signed with {child.signature_algorithm_oid.dotted_string}, not RSA-PSS"
        )
    try:
        hash_alg = child.signature_hash_algorithm
        key = parent.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError("cert_chain", f"{what}: {exc}") from exc
    if not isinstance(hash_alg, hashes.SHA384) or not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError("cert_chain", f"{what}: not RSA-PSS with SHA-384")
    try:
        key.verify(child.signature, child.tbs_certificate_bytes, _PSS, hashes.SHA384())
    except InvalidSignature as exc:
        raise AttestationError("cert_chain", f"{what}: RSA-PSS SHA-384 signature does not verify") from exc


def _check_ca(cert: x509.Certificate, is_ca: bool, what: str) -> None:
    try:
        bc: x509.BasicConstraints | None = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    except ValueError as exc:  # malformed or duplicate extensions
        raise AttestationError("cert_chain", f"{what} extensions: {exc}") from exc
    if is_ca and (bc is None or not bc.ca):
        raise AttestationError("cert_chain", f"{what} is not a CA certificate")
    if not is_ca and bc is not None and bc.ca:
        raise AttestationError("cert_chain", f"{what} must not be a CA certificate")


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationError(
            "cert_validity",
            f"{what} valid {cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()}, "
            f"not at {now.isoformat()}",
        )


def _ext_raw(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise AttestationError("vcek_format", f"VCEK extensions do not parse: {exc}") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AttestationError("vcek_format", f"extension {oid.dotted_string} is not AMD's raw form")
    return bytes(value.value)


def _spl(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> int:
    """An SPL is a DER INTEGER in 0..255 (02 01 vv, or 02 02 00 vv for 128..255)."""
    raw = _ext_raw(cert, oid)
    if raw is None:
        raise AttestationError("vcek_format", f"VCEK lacks the TCB extension {oid.dotted_string}")
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[1] > 2:
        raise AttestationError("vcek_format", f"TCB extension {oid.dotted_string} is not a small DER INTEGER")
    body = raw[2:]
    if body[0] & 0x80 or (len(body) == 2 and (body[0] != 0 or body[1] < 0x80)):
        raise AttestationError("vcek_format", f"TCB extension {oid.dotted_string} is not a DER INTEGER in 0..255")
    return int.from_bytes(body, "big")


def _ia5(raw: bytes | None) -> str | None:
    if raw is None or len(raw) < 2 or raw[0] not in (0x0C, 0x16) or raw[1] != len(raw) - 2:
        return None
    return raw[2:].decode("ascii", "replace")


def _decode_leaf(leaf: x509.Certificate, product: str) -> SnpVcek:
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError("vcek_format", f"VCEK public key does not parse: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError("vcek_format", "VCEK key is not ECDSA P-384")
    tcb = TcbVersion(
        boot_loader=_spl(leaf, OID_BL_SPL),
        tee=_spl(leaf, OID_TEE_SPL),
        snp=_spl(leaf, OID_SNP_SPL),
        microcode=_spl(leaf, OID_UCODE_SPL),
        fmc=_spl(leaf, OID_FMC_SPL) if product == TURIN else 0,
    )
    hw_id = _ext_raw(leaf, OID_HW_ID)
    csp_raw = _ext_raw(leaf, OID_CSP_ID)
    if (hw_id is None) == (csp_raw is None):
        raise AttestationError("vcek_format", "leaf must carry exactly one of hwID (VCEK) and cspID (VLEK)")
    if hw_id is not None and len(hw_id) != HW_ID_LEN[product]:
        raise AttestationError("vcek_format", f"{product} hwID must be {HW_ID_LEN[product]} bytes, got {len(hw_id)}")
    csp_id = None if csp_raw is None else (_ia5(csp_raw) or csp_raw.hex())
    return SnpVcek(
        product=product,
        kind="VCEK" if hw_id is not None else "VLEK",
        tcb=tcb,
        hw_id=hw_id,
        csp_id=csp_id,
        product_name=_ia5(_ext_raw(leaf, OID_PRODUCT_NAME)),
        certificate=leaf,
        public_key=key,
    )


def verify_vcek_chain(
    vcek: bytes | x509.Certificate,
    *,
    now: datetime,
    ask: bytes | x509.Certificate | None = None,
    roots: Mapping[str, SnpRoot] = AMD_SNP_ROOTS,
) -> SnpVcek:
    """Check ARK (pinned, self-signed) -> ASK -> VCEK at ``now``; return the leaf with its product and TCB.

    ``ask`` is the intermediate the evidence came with (an ASK, or the ASVK of a VLEK); without it the
    pinned ASK of the VCEK's product is used. The product is whichever pinned ARK signed the intermediate.
    """
    leaf = load_cert(vcek, "vcek_format", "VCEK certificate")
    if ask is None:
        root = next((r for r in roots.values() if r.ask.subject == leaf.issuer), None)
        if root is None:
            raise AttestationError(
                "ark_root", f"VCEK issuer {leaf.issuer.rfc4514_string()} is none of the pinned AMD ASKs"
            )
        inter = root.ask
    else:
        inter = load_cert(ask, "ask_format", "ASK certificate")
        root = next((r for r in roots.values() if r.ark.subject == inter.issuer), None)
        if root is None:
            raise AttestationError(
                "ark_root", f"ASK issuer {inter.issuer.rfc4514_string()} is none of the pinned AMD ARKs"
            )
    _check_link(root.ark, root.ark, f"{root.product} ARK self-signature")
    _check_link(inter, root.ark, f"ASK <- {root.product} ARK")
    _check_link(leaf, inter, "VCEK <- ASK")
    for cert, is_ca, what in ((root.ark, True, "ARK"), (inter, True, "ASK"), (leaf, False, "VCEK")):
        _check_ca(cert, is_ca, what)
        _check_validity(cert, now, f"{what} certificate")
    return _decode_leaf(leaf, root.product)
