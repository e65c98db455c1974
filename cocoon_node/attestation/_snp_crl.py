"""AMD's certificate revocation list for one SEV-SNP product (KDS ``/vcek/v1/<product>/crl``).

The CRL is issued and signed by the product's ARK (RSA-PSS SHA-384, like every link of the chain) and lists
the ARK-issued certificates AMD has revoked: the ASK, or the ASVK of VLEK-signed reports. A VCEK or VLEK is
never listed there (its issuer is the ASK/ASVK, not the ARK); revoking the intermediate revokes them all.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from .errors import AttestationError

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def check_snp_crl(crl_der: bytes, ark: x509.Certificate, intermediate: x509.Certificate, now: datetime) -> None:
    """The CRL is the ARK's, current at ``now``, and does not revoke ``intermediate``; raise AttestationError."""
    try:
        crl = x509.load_der_x509_crl(bytes(crl_der))
    except ValueError as exc:
        raise AttestationError("crl", f"AMD CRL is not a DER CRL: {exc}") from exc
    if crl.issuer != ark.subject:
        raise AttestationError("crl", f"CRL issuer {crl.issuer.rfc4514_string()} is not the "
                                      f"{ark.subject.rfc4514_string()} ARK")
    if crl.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise AttestationError("crl", f"CRL signed with {crl.signature_algorithm_oid.dotted_string}, not RSA-PSS")
    try:
        hash_alg = crl.signature_hash_algorithm
        key = ark.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AttestationError("crl", f"CRL signature parameters: {exc}") from exc
    if not isinstance(hash_alg, hashes.SHA384) or not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError("crl", "CRL is not RSA-PSS SHA-384 by the ARK")
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes, _PSS, hashes.SHA384())
    except InvalidSignature as exc:
        raise AttestationError("crl", "CRL signature does not verify with the pinned ARK") from exc
    nxt = crl.next_update_utc
    if nxt is None or not crl.last_update_utc <= now <= nxt:
        raise AttestationError("crl", f"CRL is valid {crl.last_update_utc.isoformat()} .. "
                                      f"{nxt.isoformat() if nxt else '?'}, not at {now.isoformat()}")
    revoked = crl.get_revoked_certificate_by_serial_number(intermediate.serial_number)
    if revoked is not None:
        when = revoked.revocation_date_utc.isoformat()
        raise AttestationError("revoked", f"AMD revoked {intermediate.subject.rfc4514_string()} (serial "
                                          f"{intermediate.serial_number:x}) on {when}")
