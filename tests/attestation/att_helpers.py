"""Shared helpers for attestation tests: the real quote, fixed keys, and a fake Intel PKI forge."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cocoon_node.attestation import TdxQuote, parse_tdx_quote

# Real evidence copied into the repository (provenance and SHA-256 in tests/data/README.md).
TESTDATA = Path(__file__).resolve().parents[1] / "data"
QUOTE_PATH = TESTDATA / "tdx-quote-v4.dat"

# Inside every certificate's validity window of the real quote's chain (leaf from 2025-07-20).
AT_VALID = datetime(2026, 1, 1, tzinfo=UTC)
SGX_EXT_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")


def real_quote_bytes() -> bytes:
    return QUOTE_PATH.read_bytes()


def real_quote() -> TdxQuote:
    return parse_tdx_quote(real_quote_bytes())


def fixed_ed25519(label: str) -> Ed25519PrivateKey:
    """Deterministic Ed25519 test key: seed = SHA-256(label)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def fixed_p256(label: str) -> ec.EllipticCurvePrivateKey:
    """Deterministic P-256 test key, so forged quotes are reproducible."""
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    d = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") % (n - 1) + 1
    return ec.derive_private_key(d, ec.SECP256R1())


def raw_sig(key: ec.EllipticCurvePrivateKey, msg: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    pub = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return pub[1:]


@dataclass(frozen=True)
class FakePki:
    """A stand-in for Intel's PKI: same subject names and validity as the real chain, fresh keys."""

    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.leaf, self.inter, self.root))


def _cert(
    template: x509.Certificate,
    issuer: x509.Name,
    pub: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(template.serial_number & ((1 << 159) - 1))
        .not_valid_before(not_before or template.not_valid_before_utc)
        .not_valid_after(not_after or template.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    if not ca:
        # Keep Intel's SGX extension (FMSPC, TCB, PCE id) so dcap-qvl can read the leaf.
        ext = template.extensions.get_extension_for_oid(SGX_EXT_OID)
        b = b.add_extension(ext.value, critical=ext.critical)
    return b.sign(signer, hashes.SHA256())


def make_fake_pki(label: str = "fake-intel") -> FakePki:
    real_leaf, real_inter, real_root = real_quote().pck_chain()
    root_key = fixed_p256(label + "/root")
    inter_key = fixed_p256(label + "/inter")
    leaf_key = fixed_p256(label + "/leaf")
    root = _cert(real_root, real_root.subject, root_key.public_key(), root_key, True)
    inter = _cert(real_inter, root.subject, inter_key.public_key(), root_key, True)
    leaf = _cert(real_leaf, inter.subject, leaf_key.public_key(), inter_key, False)
    return FakePki(root, root_key, inter, inter_key, leaf, leaf_key)


def forge_quote(
    pki: FakePki,
    *,
    report_data: bytes | None = None,
    base: TdxQuote | None = None,
    att_label: str = "fake-att-key",
) -> bytes:
    """Re-sign the real quote consistently under ``pki``: fresh attestation key, QE report bound to
    it and signed by the fake PCK leaf, quote signed by the attestation key."""
    q = base or real_quote()
    att_key = fixed_p256(att_label)
    att_raw = raw_point(att_key)
    qe = replace(q.qe_report, report_data=hashlib.sha256(att_raw + q.qe_auth_data).digest() + bytes(32))
    td = q.td_report if report_data is None else replace(q.td_report, report_data=report_data)
    q = replace(
        q,
        td_report=td,
        attestation_key=att_raw,
        qe_report_bytes=qe.to_bytes(),
        qe_report_signature=raw_sig(pki.leaf_key, qe.to_bytes()),
        pck_chain_pem=pki.chain_pem(),
        padding=0,
    )
    return replace(q, signature=raw_sig(att_key, q.signed_bytes)).to_bytes()


def _name(cn: str) -> x509.Name:
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _crl(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: tuple[int, ...] = ()) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(datetime(2025, 12, 1, tzinfo=UTC))
        .next_update(datetime(2026, 2, 1, tzinfo=UTC))
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(datetime(2025, 11, 1, tzinfo=UTC))
            .build()
        )
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def make_collateral(
    pki: FakePki,
    quote: bytes,
    *,
    status: str = "UpToDate",
    advisories: tuple[str, ...] = (),
    tamper_tcb_info: bool = False,
    revoke_pck: bool = False,
) -> object:
    """Intel-format TDX collateral (TCB info v3, TD_QE identity v2, CRLs) signed by the fake PKI,
    matching ``quote``'s PCK extension and TD report; valid for December 2025 / January 2026.
    ``revoke_pck`` lists the PCK leaf in the PCK CA's CRL."""
    import json

    import dcap_qvl

    ext = dcap_qvl.parse_quote(quote).pck_extension()
    q = parse_tdx_quote(quote)
    td, qe = q.td_report, q.qe_report
    tcb_key = fixed_p256("fake-intel/tcb-signing")
    tcb_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Intel SGX TCB Signing"))
        .issuer_name(pki.root.subject)
        .public_key(tcb_key.public_key())
        .serial_number(12345)
        .not_valid_before(datetime(2018, 5, 21, tzinfo=UTC))
        .not_valid_after(datetime(2032, 5, 21, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(pki.root_key, hashes.SHA256())
    )
    issue, nxt, day = "2025-12-01T00:00:00Z", "2026-02-01T00:00:00Z", "2025-01-01T00:00:00Z"
    seam_id = {
        "mrsigner": td.mrsignerseam.hex().upper(),
        "attributes": "0000000000000000",
        "attributesMask": "FFFFFFFFFFFFFFFF",
    }
    level: dict[str, object] = {
        "tcb": {
            "sgxtcbcomponents": [{"svn": v} for v in ext.cpu_svn],
            "pcesvn": ext.pce_svn,
            "tdxtcbcomponents": [{"svn": v} for v in td.tee_tcb_svn],
        },
        "tcbDate": day,
        "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    tcb_info = {
        "id": "TDX",
        "version": 3,
        "issueDate": issue,
        "nextUpdate": nxt,
        "fmspc": ext.fmspc.hex(),
        "pceId": ext.pce_id.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": seam_id,
        "tdxModuleIdentities": [
            {
                "id": f"TDX_{td.tee_tcb_svn[1]:02X}",
                **seam_id,
                "tcbLevels": [{"tcb": {"isvsvn": td.tee_tcb_svn[0]}, "tcbDate": day, "tcbStatus": "UpToDate"}],
            }
        ],
        "tcbLevels": [level],
    }
    qe_identity = {
        "id": "TD_QE",
        "version": 2,
        "issueDate": issue,
        "nextUpdate": nxt,
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": qe.mrsigner.hex().upper(),
        "isvprodid": 2,
        "tcbLevels": [{"tcb": {"isvsvn": qe.isv_svn}, "tcbDate": day, "tcbStatus": "UpToDate"}],
    }
    ti = json.dumps(tcb_info, separators=(",", ":"))
    qi = json.dumps(qe_identity, separators=(",", ":"))
    ti_sig = raw_sig(tcb_key, ti.encode())
    if tamper_tcb_info:
        ti = ti.replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18')

    def pem(*certs: x509.Certificate) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)

    return dcap_qvl.QuoteCollateralV3(
        pem(pki.inter, pki.root),
        _crl(pki.root, pki.root_key),
        _crl(pki.inter, pki.inter_key, (pki.leaf.serial_number,) if revoke_pck else ()),
        pem(tcb_cert, pki.root),
        ti,
        ti_sig,
        pem(tcb_cert, pki.root),
        qi,
        raw_sig(tcb_key, qi.encode()),
    )
