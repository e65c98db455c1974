"""Signed envelopes: a payload bound to a domain and signed by a libp2p identity key.

Modelled on libp2p's signed envelope (RFC 0002): the signature covers the domain as well as the payload,
so a signature made for one purpose (a worker announcement, say) can never be replayed as another (an
attestation report). The signer's public key travels inside the envelope, and the peer id is derived from
it, so a record claiming to come from peer X is only valid if X's own key signed it.
"""

from __future__ import annotations

from dataclasses import dataclass

from libp2p.crypto.keys import PrivateKey, PublicKey
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from cocoon_node.wire.cbor import CborError, canonical_dumps, canonical_loads
from cocoon_node.wire.schema import SchemaError, load_protocol, validate

_SIGNING_CONTEXT = "cocoon-envelope/v1"


class EnvelopeError(ValueError):
    """The envelope is malformed, for another domain, or its signature does not verify."""


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
    public = private_key.get_public_key()
    envelope = {
        "domain": domain,
        "key": public.serialize(),
        "payload": payload,
        "sig": private_key.sign(_signed_bytes(domain, payload)),
    }
    return canonical_dumps(envelope)


def open_envelope(data: bytes, *, expected_domain: str) -> Envelope:
    """Decode and verify an envelope; raises :class:`EnvelopeError` with the reason."""
    schema = load_protocol("envelope").message("envelope")
    try:
        raw = canonical_loads(data, max_bytes=schema.max_bytes)
        fields = validate("envelope", "envelope", raw)
    except (CborError, SchemaError) as exc:
        raise EnvelopeError(f"malformed envelope: {exc}") from exc
    if fields["domain"] != expected_domain:
        raise EnvelopeError(f"envelope is for domain {fields['domain']!r}, expected {expected_domain!r}")
    try:
        public_key = deserialize_public_key(fields["key"])
    except Exception as exc:  # libp2p raises assorted errors for bad key bytes
        raise EnvelopeError(f"envelope carries an unreadable public key: {exc}") from exc
    try:
        valid = public_key.verify(_signed_bytes(fields["domain"], fields["payload"]), fields["sig"])
    except Exception:
        valid = False
    if not valid:
        raise EnvelopeError("envelope signature does not verify")
    return Envelope(fields["domain"], fields["payload"], public_key, ID.from_pubkey(public_key), data)
