"""The attestation report record, its claims, and the signed envelope that carries it.

Wire format (canonical CBOR, ``protocols/attestation.toml``; types in :mod:`cocoon_node.wire.messages.attestation`)::

    envelope = {"payload": bytes, "signature": bytes(64)}      (wire's prefixed envelope)
    payload  = canonical CBOR of the record map (claims + "evidence")
    signature = Ed25519(node key, b"cocoon/attestation-report/v1" || payload)

The TEE evidence commits to the claims through ``report_data = SHA-512(canonical CBOR of the claims)``
(the record without ``evidence``), so a quote cannot be lifted into another node's report.
Decoding is strict: unknown or missing fields, wrong types, oversize input and any non-canonical
encoding are rejected, so one report has exactly one byte encoding.
"""

from __future__ import annotations

import hashlib
import typing
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from cocoon_node.wire import (
    CborError,
    Message,
    SchemaError,
    decode_cbor,
    decode_prefixed,
    encode_cbor,
    prefixed_signature_ok,
    seal_prefixed,
    to_builtins,
)
from cocoon_node.wire.messages.attestation import (
    MAX_ENVELOPE_BYTES,
    MAX_EVIDENCE_BYTES,
    REPORT_VERSION,
    AttestationClaims,
    AttestationReport,
    TeeKind,
)

from .errors import AttestationError

__all__ = [
    "ENVELOPE_DOMAIN",
    "MAX_ENVELOPE_BYTES",
    "MAX_EVIDENCE_BYTES",
    "REPORT_VERSION",
    "TEE_DEV",
    "TEE_KINDS",
    "TEE_SNP",
    "TEE_TDX",
    "Claims",
    "Report",
    "decode_and_verify_envelope",
    "decode_record",
    "encode_record",
    "libp2p_pubkey_protobuf",
    "peer_id_from_pubkey",
    "raw_from_libp2p_pubkey",
    "sign_report",
]

ENVELOPE_DOMAIN = b"cocoon/attestation-report/v1"
TEE_TDX: Final = "tdx"
TEE_SNP: Final = "snp"
TEE_DEV: Final = "dev-INSECURE"
TEE_KINDS: tuple[str, ...] = (TEE_TDX, TEE_SNP, TEE_DEV)  # == typing.get_args(TeeKind), checked by the vector tests
_CLAIM_NAMES = AttestationClaims.__struct_fields__


def _ed25519_key(pb: bytes) -> Ed25519PublicKey:
    """py-libp2p's reading of a protobuf public key, accepting only Ed25519 in its one canonical encoding."""
    try:
        key = deserialize_public_key(bytes(pb))
    except Exception as exc:  # protobuf and the key types raise assorted errors on junk
        raise ValueError(f"not a libp2p protobuf public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not a libp2p Ed25519 public key ({key.get_type().name}); only Ed25519 is supported")
    if key.serialize() != pb:
        raise ValueError("not the canonical libp2p encoding of an Ed25519 public key")
    return key


def libp2p_pubkey_protobuf(raw32: bytes) -> bytes:
    """libp2p's protobuf encoding of an Ed25519 public key (``08 01 12 20 || raw32``)."""
    if len(raw32) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return bytes(Ed25519PublicKey.from_bytes(bytes(raw32)).serialize())


def raw_from_libp2p_pubkey(pb: bytes) -> bytes:
    """Inverse of :func:`libp2p_pubkey_protobuf`; only Ed25519 keys are accepted."""
    return _ed25519_key(pb).to_bytes()


def peer_id_from_pubkey(pb: bytes) -> bytes:
    """libp2p peer id bytes of a protobuf Ed25519 public key (the identity multihash ``00 24 || pb``)."""
    return bytes(ID.from_pubkey(_ed25519_key(pb)).to_bytes())


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _encode(message: Message, what: str) -> bytes:
    try:
        return encode_cbor(message)
    except (SchemaError, CborError) as exc:
        raise AttestationError("format", f"{what}: {exc}") from exc


class Claims(AttestationClaims, frozen=True):
    """What a node asserts about itself; the TEE evidence commits to these via :meth:`report_data`.

    ``backend`` is the backend kind and ``upstream`` where it sends prompts: "" when the model runs in this
    process, else the upstream's origin (``scheme://host:port``). Requesters refuse an upstream outside the
    TD by default. Build one with :meth:`for_key`, which derives the key fields and fills the defaults.
    """

    def to_map(self) -> dict[str, Any]:
        return to_builtins(self)

    def to_cbor(self) -> bytes:
        return _encode(self, "claims")

    def report_data(self) -> bytes:
        """64 bytes for the TEE report: SHA-512 of the canonical claims."""
        return hashlib.sha512(self.to_cbor()).digest()

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Claims:
        """The claims of a record map (its claim fields; ``evidence`` is left out)."""
        return cls(**{name: m[name] for name in _CLAIM_NAMES})

    @classmethod
    def of_record(cls, record: AttestationClaims) -> Claims:
        """The claims of a decoded record."""
        return cls(**{name: getattr(record, name) for name in _CLAIM_NAMES})

    @classmethod
    def for_key(
        cls,
        public_key_raw: bytes,
        *,
        model_name: str,
        model_hash: bytes,
        node_version: str,
        issued_at: int,
        expires_at: int,
        tee_kind: str,
        backend: str = "",
        upstream: str = "",
    ) -> Claims:
        """Claims with ``public_key``/``peer_id`` derived from a raw Ed25519 key, so they cannot disagree."""
        pb = libp2p_pubkey_protobuf(public_key_raw)
        return cls(
            version=REPORT_VERSION,
            peer_id=peer_id_from_pubkey(pb),
            public_key=pb,
            model_name=model_name,
            model_hash=model_hash,
            node_version=node_version,
            issued_at=issued_at,
            expires_at=expires_at,
            tee_kind=typing.cast(TeeKind, tee_kind),  # checked when encoded
            backend=backend,
            upstream=upstream,
        )


@dataclass(frozen=True)
class Report:
    """A decoded record whose envelope signature has been checked (evidence not yet verified)."""

    claims: Claims
    evidence: bytes
    payload: bytes  # the signed record bytes, kept for re-publication
    collateral: bytes = b""  # the vendor's TCB collateral the worker shipped (b"": none), not a claim

    @property
    def public_key_raw(self) -> bytes:
        return raw_from_libp2p_pubkey(self.claims.public_key)


def encode_record(claims: Claims, evidence: bytes, collateral: bytes = b"") -> bytes:
    """Canonical CBOR of the record (claims + evidence [+ collateral]): the envelope payload."""
    fields = {name: getattr(claims, name) for name in _CLAIM_NAMES}
    return _encode(AttestationReport(**fields, evidence=evidence, collateral=collateral), "record")


def decode_record(payload: bytes) -> AttestationReport:
    """Strictly decode a record (the envelope payload); raises AttestationError("format")."""
    try:
        return decode_cbor(_as_bytes(payload, "record"), AttestationReport)
    except (CborError, SchemaError) as exc:
        raise AttestationError("format", f"record: {exc}") from exc


def sign_report(claims: Claims, evidence: bytes, private_key: Ed25519PrivateKey, *, collateral: bytes = b"") -> bytes:
    """Build and sign the envelope; ``private_key`` must match ``claims.public_key``. ``collateral`` is the
    TEE vendor's TCB collateral for ``evidence`` (:mod:`.collateral`), shipped alongside, not claimed."""
    public = Ed25519PublicKey.from_bytes(_raw_public(private_key))
    if public.serialize() != claims.public_key:
        raise ValueError("private key does not match claims.public_key")
    if ID.from_pubkey(public).to_bytes() != claims.peer_id:
        raise ValueError("claims.peer_id is not derived from claims.public_key")
    if claims.tee_kind not in TEE_KINDS:
        raise ValueError(f"tee_kind must be one of {TEE_KINDS}")
    # SchemaError and CborError (a payload or envelope over its limit) are ValueErrors too.
    return seal_prefixed(encode_record(claims, evidence, collateral), private_key, ENVELOPE_DOMAIN)


def _as_bytes(data: object, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AttestationError("format", f"{what} must be bytes")
    return bytes(data)


def decode_and_verify_envelope(data: bytes) -> Report:
    """Strictly decode an envelope and check its signature by the key inside the record.

    Also checks that the record's ``peer_id`` is derived from its ``public_key``; whether that is the
    peer you expected, and whether the evidence holds, is :func:`verify_report`'s job.
    """
    try:
        envelope = decode_prefixed(_as_bytes(data, "envelope"))
    except (CborError, SchemaError) as exc:
        raise AttestationError("format", f"envelope: {exc}") from exc
    record = decode_record(envelope.payload)  # the version and tee_kind are checked here, as schema
    try:
        key = _ed25519_key(record.public_key)
    except ValueError as exc:
        raise AttestationError("envelope_signature", f"bad public key: {exc}") from exc
    if not prefixed_signature_ok(envelope, key, ENVELOPE_DOMAIN):
        raise AttestationError("envelope_signature", "envelope not signed by the record's key")
    if bytes(ID.from_pubkey(key).to_bytes()) != record.peer_id:
        raise AttestationError("peer_id", "record peer_id is not derived from its public_key")
    return Report(claims=Claims.of_record(record), evidence=record.evidence, payload=envelope.payload,
                  collateral=record.collateral)
