"""The PCK certificate chain of a TDX quote: the pinned Intel SGX Root CA and the chain walk to it.

A root carried inside a quote is never trusted by itself: the chain's root must have the pinned key, and
every link is checked against its parent, with validity at the time asked about.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import AttestationError

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


def _raw_sig_to_der(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes) -> bool:
    try:
        key.verify(_raw_sig_to_der(raw_sig), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


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


