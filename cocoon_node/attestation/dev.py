"""INSECURE software "dev TEE" for machines without TDX: it PROVES NOTHING about hardware.

Anyone can generate a dev platform key and sign any evidence with it; a dev report only shows that
the node's key holder also holds *some* dev platform key. It exists so the rest of the stack
(reports, the DHT, policy checks) runs on laptops and CI. Policies accept it only when they list
:data:`TEE_DEV` explicitly, and acceptance is logged at WARNING.

Key choice: a per-"platform" Ed25519 key, generated once and persisted (:meth:`DevPlatform.load_or_create`),
so a test cluster can pin its dev platform keys in policy (``Policy.dev_platform_keys``) and tell its
own dev machines from a stranger's. No well-known key is built in: a shared key would make every
dev report interchangeable.

Evidence (canonical CBOR, ``dev_evidence`` in ``protocols/attestation.toml``; type ``DevEvidenceRecord``)::

    {"kind": "dev-INSECURE", "report_data": bytes(64), "image_hash": bytes(32),
     "platform_key": bytes(32), "signature": bytes(64)}
    signature = Ed25519(platform key, b"cocoon/dev-tee-evidence/v1" || canonical CBOR of the map
                        without "signature")
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from cocoon_node.wire import CborError, SchemaError, canonical_dumps, check, decode_cbor, encode_cbor, to_builtins
from cocoon_node.wire.messages.attestation import DevEvidenceRecord

from .errors import AttestationError
from .report import TEE_DEV

log = logging.getLogger(__name__)

DEV_EVIDENCE_DOMAIN = b"cocoon/dev-tee-evidence/v1"
MAX_DEV_EVIDENCE_BYTES = DevEvidenceRecord.MAX_BYTES


def _signed_body(record: DevEvidenceRecord) -> bytes:
    """What the platform key signs: the domain, then canonical CBOR of the record without ``signature``."""
    body = to_builtins(record)
    del body["signature"]
    return DEV_EVIDENCE_DOMAIN + canonical_dumps(body)


def dev_image_hash(node_version: str) -> bytes:
    """Dev stand-in for a TD image hash: SHA-256(b"cocoon-dev-image/v1\\0" || node version)."""
    return hashlib.sha256(b"cocoon-dev-image/v1\x00" + node_version.encode("utf-8")).digest()


@dataclass(frozen=True)
class DevEvidence:
    """Decoded and signature-checked dev evidence (still INSECURE: see module docstring)."""

    report_data: bytes
    image_hash: bytes
    platform_key: bytes


class DevPlatform:
    """An INSECURE software stand-in for a TEE platform, holding one Ed25519 dev platform key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> DevPlatform:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path | str) -> DevPlatform:
        """Load the raw 32-byte dev platform seed at ``path`` or create it (mode 0600)."""
        p = Path(path)
        if p.exists():
            seed = p.read_bytes()
            if len(seed) != 32:
                raise ValueError(f"{p}: dev platform key must be 32 raw bytes")
            return cls(Ed25519PrivateKey.from_private_bytes(seed))
        key = Ed25519PrivateKey.generate()
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
        log.warning("created dev-INSECURE platform key %s: dev attestation proves nothing about hardware", p)
        return cls(key)

    def evidence(self, report_data: bytes, image_hash: bytes) -> bytes:
        """Sign dev evidence over ``report_data`` (64 bytes) and ``image_hash`` (32 bytes)."""
        unsigned = DevEvidenceRecord(
            kind=TEE_DEV,
            report_data=bytes(report_data),
            image_hash=bytes(image_hash),
            platform_key=self.public_key,
            signature=bytes(64),
        )
        try:
            check(unsigned)
        except SchemaError as exc:
            raise AttestationError("format", f"dev evidence: {exc}") from exc
        log.warning("issuing dev-INSECURE attestation evidence: it proves nothing about hardware")
        signed = msgspec.structs.replace(unsigned, signature=self._key.sign(_signed_body(unsigned)))
        return encode_cbor(signed)


def verify_dev_evidence(evidence: bytes, expected_report_data: bytes) -> DevEvidence:
    """Check dev evidence's signature and report data; raises AttestationError.

    Passing proves nothing about hardware: anyone can mint a dev platform key.
    """
    if not isinstance(evidence, bytes | bytearray | memoryview):
        raise AttestationError("format", "dev evidence must be bytes")
    try:
        m = decode_cbor(bytes(evidence), DevEvidenceRecord)  # the kind is checked here, as schema
    except (CborError, SchemaError) as exc:
        raise AttestationError("format", f"dev evidence: {exc}") from exc
    try:
        Ed25519PublicKey.from_public_bytes(m.platform_key).verify(m.signature, _signed_body(m))
    except (ValueError, InvalidSignature) as exc:
        raise AttestationError("dev_signature", "dev evidence not signed by its platform key") from exc
    if m.report_data != bytes(expected_report_data):
        raise AttestationError("report_data", "dev evidence report_data does not match the claims")
    return DevEvidence(report_data=m.report_data, image_hash=m.image_hash, platform_key=m.platform_key)
