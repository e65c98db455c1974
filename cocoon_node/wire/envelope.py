"""Signed envelopes, in the two shapes our records use; both are canonical CBOR.

1. The domain envelope (``protocols/envelope.toml``, :func:`seal_envelope` / :func:`open_envelope`):
   modelled on libp2p's signed envelope (RFC 0002), the signature covers the domain as well as the
   payload, so a signature made for one purpose (a worker announcement, say) can never be replayed as
   another. The signer's public key travels inside the envelope, and the peer id is derived from it, so a
   record claiming to come from peer X is only valid if X's own key signed it.
2. The prefixed envelope (``attestation_envelope`` in ``protocols/attestation.toml``, :func:`seal_prefixed`
   / :func:`decode_prefixed` / :func:`prefixed_signature_ok`): ``{payload, signature}`` with the signature
   over a fixed domain prefix followed by the payload. It carries no key: the key is a field of the signed
   record, so the caller decodes the payload first and then checks the signature with the key it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from libp2p.crypto.keys import PrivateKey, PublicKey
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from cocoon_node.wire.cbor import CborError, canonical_dumps
from cocoon_node.wire.messages.attestation import AttestationEnvelope
from cocoon_node.wire.messages.envelope import SignedEnvelope
from cocoon_node.wire.schema import SchemaError
from cocoon_node.wire.typed import decode_cbor, encode_cbor

_SIGNING_CONTEXT = "cocoon-envelope/v1"


class EnvelopeError(ValueError):
    """The envelope is malformed, for another domain, or its signature does not verify."""


class Signer(Protocol):
    """Anything that signs bytes: a libp2p private key or a ``cryptography`` Ed25519 key."""

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Envelope:
    """An opened, verified envelope."""

    domain: str
    payload: bytes
    public_key: PublicKey
    peer_id: ID
    raw: bytes


def _signed_bytes(domain: str, payload: bytes) -> bytes:
    return canonical_dumps([_SIGNING_CONTEXT, domain, payload])


def seal_envelope(domain: str, payload: bytes, private_key: PrivateKey) -> bytes:
    """Sign ``payload`` for ``domain`` and return the canonical CBOR envelope."""
    envelope = SignedEnvelope(
        domain=domain,
        key=private_key.get_public_key().serialize(),
        payload=payload,
        sig=private_key.sign(_signed_bytes(domain, payload)),
    )
    return encode_cbor(envelope)


def open_envelope(data: bytes, *, expected_domain: str) -> Envelope:
    """Decode and verify an envelope; raises :class:`EnvelopeError` with the reason."""
    try:
        fields = decode_cbor(data, SignedEnvelope)
    except (CborError, SchemaError) as exc:
        raise EnvelopeError(f"malformed envelope: {exc}") from exc
    if fields.domain != expected_domain:
        raise EnvelopeError(f"envelope is for domain {fields.domain!r}, expected {expected_domain!r}")
    try:
        public_key = deserialize_public_key(fields.key)
    except Exception as exc:  # libp2p raises assorted errors for bad key bytes
        raise EnvelopeError(f"envelope carries an unreadable public key: {exc}") from exc
    try:
        valid = public_key.verify(_signed_bytes(fields.domain, fields.payload), fields.sig)
    except Exception:
        valid = False
    if not valid:
        raise EnvelopeError("envelope signature does not verify")
    return Envelope(fields.domain, fields.payload, public_key, ID.from_pubkey(public_key), data)


def seal_prefixed(payload: bytes, signer: Signer, prefix: bytes) -> bytes:
    """``{payload, signature = sign(prefix || payload)}`` as canonical CBOR (raises SchemaError/CborError)."""
    return encode_cbor(AttestationEnvelope(payload=payload, signature=signer.sign(prefix + payload)))


def decode_prefixed(data: bytes) -> AttestationEnvelope:
    """Decode a prefixed envelope (signature NOT yet checked: its key is inside the payload).

    Raises :class:`CborError` for bytes that are not canonical CBOR, :class:`SchemaError` for a bad shape.
    """
    return decode_cbor(data, AttestationEnvelope)


def prefixed_signature_ok(envelope: AttestationEnvelope, public_key: PublicKey, prefix: bytes) -> bool:
    """Whether ``public_key`` signed ``prefix || payload``."""
    try:
        return bool(public_key.verify(prefix + envelope.payload, envelope.signature))
    except Exception:  # libp2p key implementations raise assorted errors on junk signatures
        return False
