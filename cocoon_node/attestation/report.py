"""The attestation report record, its claims, and the signed envelope that carries it.

Wire format (canonical CBOR, see ``protocols/attestation.toml``)::

    envelope = {"payload": bytes, "signature": bytes(64)}
    payload  = canonical CBOR of the record map (claims + "evidence")
    signature = Ed25519(node key, b"cocoon/attestation-report/v1" || payload)

The TEE evidence commits to the claims through ``report_data = SHA-512(canonical CBOR of the claims)``
(the record without ``evidence``), so a quote cannot be lifted into another node's report.
Decoding is strict: unknown or missing fields, wrong types, oversize input and any non-canonical
encoding are rejected, so one report has exactly one byte encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import AttestationError

# v2 added ``backend`` and ``upstream`` (where prompts go); v1 reports are refused.
REPORT_VERSION = 2
MAX_ENVELOPE_BYTES = 16384
MAX_EVIDENCE_BYTES = 12288
ENVELOPE_DOMAIN = b"cocoon/attestation-report/v1"
TEE_TDX = "tdx"
TEE_DEV = "dev-INSECURE"
TEE_KINDS = (TEE_TDX, TEE_DEV)

_LIBP2P_ED25519_PREFIX = bytes.fromhex("08011220")  # protobuf: Type=Ed25519 (1), Data=32 bytes
_UINT64_MAX = 2**64 - 1

# name -> (python type, max length or None, exact length or None); mirrors protocols/attestation.toml
_CLAIM_FIELDS: dict[str, tuple[type, int | None, int | None]] = {
    "version": (int, None, None),
    "peer_id": (bytes, 64, None),
    "public_key": (bytes, 128, None),
    "model_name": (str, 256, None),
    "model_hash": (bytes, None, 32),
    "node_version": (str, 64, None),
    "issued_at": (int, None, None),
    "expires_at": (int, None, None),
    "tee_kind": (str, 16, None),
    "backend": (str, 32, None),
    "upstream": (str, 256, None),
}
_RECORD_FIELDS = {**_CLAIM_FIELDS, "evidence": (bytes, MAX_EVIDENCE_BYTES, None)}
_ENVELOPE_FIELDS: dict[str, tuple[type, int | None, int | None]] = {
    "payload": (bytes, MAX_ENVELOPE_BYTES, None),
    "signature": (bytes, None, 64),
}


def libp2p_pubkey_protobuf(raw32: bytes) -> bytes:
    """libp2p's protobuf encoding of an Ed25519 public key: ``08 01 12 20 || raw32``."""
    if len(raw32) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return _LIBP2P_ED25519_PREFIX + bytes(raw32)


def raw_from_libp2p_pubkey(pb: bytes) -> bytes:
    """Inverse of :func:`libp2p_pubkey_protobuf`; only Ed25519 keys are accepted."""
    if len(pb) != 36 or pb[:4] != _LIBP2P_ED25519_PREFIX:
        raise ValueError("not a libp2p protobuf Ed25519 public key")
    return bytes(pb[4:])


def peer_id_from_pubkey(pb: bytes) -> bytes:
    """libp2p peer id bytes for a protobuf public key of <= 42 bytes: identity multihash ``00 len || pb``."""
    if len(pb) > 42:
        raise ValueError("keys over 42 bytes take a SHA-256 multihash peer id; only Ed25519 is supported")
    return bytes([0x00, len(pb)]) + bytes(pb)


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def canonical_cbor(obj: Any) -> bytes:
    """The one encoding we sign and compare: cbor2 canonical (RFC 7049 §3.9) CBOR."""
    return cbor2.dumps(obj, canonical=True)


def strict_decode(data: bytes, what: str, max_bytes: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AttestationError("format", f"{what} must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise AttestationError("format", f"{what} is {len(data)} bytes, max {max_bytes}")
    try:
        obj = cbor2.loads(data)
        again = canonical_cbor(obj)
    except Exception as exc:  # cbor2 raises a variety of errors (incl. RecursionError) on junk
        raise AttestationError("format", f"{what} is not valid CBOR: {type(exc).__name__}: {exc}") from exc
    if again != data:
        raise AttestationError("format", f"{what} is not canonical CBOR (or has trailing bytes)")
    return obj


def _exact_type(value: object, typ: type) -> bool:
    """Exact type match: CBOR true must not pass as a uint, nor a tagged value as bytes."""
    return type(value) is typ


def check_fields(obj: Any, spec: dict[str, tuple[type, int | None, int | None]], what: str) -> dict[str, Any]:
    """Exact key set, exact types (no bool-as-int), length limits and uint range; raises AttestationError."""
    if not isinstance(obj, dict):
        raise AttestationError("format", f"{what} must be a CBOR map")
    keys = set(obj)
    if keys != set(spec):
        missing = sorted(str(k) for k in set(spec) - keys)
        unknown = sorted(repr(k) for k in keys - set(spec))
        raise AttestationError("format", f"{what}: missing fields {missing}, unknown fields {unknown}")
    for name, (typ, max_len, size) in spec.items():
        value: Any = obj[name]
        if not _exact_type(value, typ):
            raise AttestationError("format", f"{what}.{name} must be {typ.__name__}, got {type(value).__name__}")
        if typ is int and not 0 <= value <= _UINT64_MAX:
            raise AttestationError("format", f"{what}.{name} must be a uint64")
        length = len(value.encode("utf-8")) if isinstance(value, str) else len(value) if typ is bytes else None
        if length is not None:
            if max_len is not None and length > max_len:
                raise AttestationError("format", f"{what}.{name} is {length} bytes, max {max_len}")
            if size is not None and length != size:
                raise AttestationError("format", f"{what}.{name} must be exactly {size} bytes, got {length}")
    return obj


@dataclass(frozen=True)
class Claims:
    """What a node asserts about itself; the TEE evidence commits to these via :meth:`report_data`."""

    peer_id: bytes
    public_key: bytes
    model_name: str
    model_hash: bytes
    node_version: str
    issued_at: int
    expires_at: int
    tee_kind: str
    # The backend kind and where it sends prompts: "" when the model runs in this process, else the
    # upstream's origin (``scheme://host:port``). Requesters refuse an upstream outside the TD by default.
    backend: str = ""
    upstream: str = ""
    version: int = REPORT_VERSION

    def to_map(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CLAIM_FIELDS}

    def to_cbor(self) -> bytes:
        return canonical_cbor(check_fields(self.to_map(), _CLAIM_FIELDS, "claims"))

    def report_data(self) -> bytes:
        """64 bytes for the TEE report: SHA-512 of the canonical claims."""
        return hashlib.sha512(self.to_cbor()).digest()

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Claims:
        return cls(**{name: m[name] for name in _CLAIM_FIELDS})

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
            peer_id=peer_id_from_pubkey(pb),
            public_key=pb,
            model_name=model_name,
            model_hash=model_hash,
            node_version=node_version,
            issued_at=issued_at,
            expires_at=expires_at,
            tee_kind=tee_kind,
            backend=backend,
            upstream=upstream,
        )


@dataclass(frozen=True)
class Report:
    """A decoded record whose envelope signature has been checked (evidence not yet verified)."""

    claims: Claims
    evidence: bytes
    payload: bytes  # the signed record bytes, kept for re-publication

    @property
    def public_key_raw(self) -> bytes:
        return raw_from_libp2p_pubkey(self.claims.public_key)


def encode_record(claims: Claims, evidence: bytes) -> bytes:
    """Canonical CBOR of the record (claims + evidence): the envelope payload."""
    return canonical_cbor(check_fields({**claims.to_map(), "evidence": evidence}, _RECORD_FIELDS, "record"))


def sign_report(claims: Claims, evidence: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """Build and sign the envelope; ``private_key`` must match ``claims.public_key``."""
    if libp2p_pubkey_protobuf(_raw_public(private_key)) != claims.public_key:
        raise ValueError("private key does not match claims.public_key")
    if peer_id_from_pubkey(claims.public_key) != claims.peer_id:
        raise ValueError("claims.peer_id is not derived from claims.public_key")
    if claims.tee_kind not in TEE_KINDS:
        raise ValueError(f"tee_kind must be one of {TEE_KINDS}")
    payload = encode_record(claims, evidence)
    envelope = canonical_cbor({"payload": payload, "signature": private_key.sign(ENVELOPE_DOMAIN + payload)})
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise ValueError(f"report envelope is {len(envelope)} bytes, max {MAX_ENVELOPE_BYTES}")
    return envelope


def decode_and_verify_envelope(data: bytes) -> Report:
    """Strictly decode an envelope and check its signature by the key inside the record.

    Also checks that the record's ``peer_id`` is derived from its ``public_key``; whether that is the
    peer you expected, and whether the evidence holds, is :func:`verify_report`'s job.
    """
    env = check_fields(strict_decode(data, "envelope", MAX_ENVELOPE_BYTES), _ENVELOPE_FIELDS, "envelope")
    payload: bytes = env["payload"]
    rec = check_fields(strict_decode(payload, "record", MAX_ENVELOPE_BYTES), _RECORD_FIELDS, "record")
    if rec["version"] != REPORT_VERSION:
        raise AttestationError("format", f"unsupported report version {rec['version']}")
    if rec["tee_kind"] not in TEE_KINDS:
        raise AttestationError("format", f"unknown tee_kind {rec['tee_kind']!r}")
    try:
        raw = raw_from_libp2p_pubkey(rec["public_key"])
        Ed25519PublicKey.from_public_bytes(raw).verify(env["signature"], ENVELOPE_DOMAIN + payload)
    except ValueError as exc:
        raise AttestationError("envelope_signature", f"bad public key: {exc}") from exc
    except InvalidSignature as exc:
        raise AttestationError("envelope_signature", "envelope not signed by the record's key") from exc
    if peer_id_from_pubkey(rec["public_key"]) != rec["peer_id"]:
        raise AttestationError("peer_id", "record peer_id is not derived from its public_key")
    return Report(claims=Claims.from_map(rec), evidence=rec["evidence"], payload=payload)
