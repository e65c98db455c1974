"""Both signed-envelope shapes: what verifies, and every way a bad one is refused with a clear error."""

from __future__ import annotations

import hashlib
import json

import cbor2
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair

from cocoon_node.wire import (
    CborError,
    EnvelopeError,
    SchemaError,
    canonical_dumps,
    decode_cbor,
    decode_prefixed,
    encode_cbor,
    open_envelope,
    prefixed_signature_ok,
    seal_envelope,
    seal_prefixed,
)
from cocoon_node.wire.messages.attestation import MAX_ENVELOPE_BYTES
from cocoon_node.wire.messages.envelope import SignedEnvelope

from .make_vectors import VECTOR_DIR

KP = create_new_key_pair(hashlib.sha256(b"envelope-test").digest())
OTHER = create_new_key_pair(hashlib.sha256(b"envelope-test-other").digest())
PREFIX = b"cocoon/test/v1"


def test_domain_envelope_round_trip() -> None:
    sealed = seal_envelope("cocoon/test/v1", b"payload", KP.private_key)
    env = open_envelope(sealed, expected_domain="cocoon/test/v1")
    assert env.payload == b"payload" and env.public_key == KP.public_key and env.raw == sealed
    assert set(cbor2.loads(sealed)) == {"domain", "key", "payload", "sig"}


def test_domain_envelope_golden_vector_through_the_type() -> None:
    vec = json.loads((VECTOR_DIR / "envelope/envelope.json").read_text(encoding="utf-8"))[0]
    raw = bytes.fromhex(vec["hex"])
    assert encode_cbor(decode_cbor(raw, SignedEnvelope)) == raw


def test_domain_envelope_refusals() -> None:
    sealed = seal_envelope("cocoon/test/v1", b"payload", KP.private_key)
    fields = cbor2.loads(sealed)
    with pytest.raises(EnvelopeError, match="domain"):
        open_envelope(sealed, expected_domain="cocoon/other/v1")
    with pytest.raises(EnvelopeError, match="does not verify"):
        open_envelope(canonical_dumps({**fields, "payload": b"payloaD"}), expected_domain="cocoon/test/v1")
    with pytest.raises(EnvelopeError, match="does not verify"):  # another key's signature
        other_key = canonical_dumps({**fields, "key": OTHER.public_key.serialize()})
        open_envelope(other_key, expected_domain="cocoon/test/v1")
    with pytest.raises(EnvelopeError, match="unreadable public key"):
        open_envelope(canonical_dumps({**fields, "key": b"junk"}), expected_domain="cocoon/test/v1")
    for bad in (
        sealed + b"\x00",  # trailing bytes
        cbor2.dumps(dict(reversed(list(fields.items())))),  # not canonical
        canonical_dumps({**fields, "extra": 1}),
        canonical_dumps({k: v for k, v in fields.items() if k != "sig"}),
        canonical_dumps({**fields, "domain": "é" * 33}),  # 66 UTF-8 bytes > 64
        bytes(40000),
    ):
        with pytest.raises(EnvelopeError, match="malformed"):
            open_envelope(bad, expected_domain="cocoon/test/v1")


def test_domain_envelope_refuses_to_seal_what_cannot_be_opened() -> None:
    with pytest.raises(SchemaError) as ei:
        seal_envelope("d" * 65, b"x", KP.private_key)
    assert ei.value.field == "domain"


def test_prefixed_envelope_round_trip_and_refusals() -> None:
    sealed = seal_prefixed(b"record", KP.private_key, PREFIX)
    env = decode_prefixed(sealed)
    assert env.payload == b"record"
    assert env.signature == KP.private_key.sign(PREFIX + b"record")
    assert prefixed_signature_ok(env, KP.public_key, PREFIX)
    assert not prefixed_signature_ok(env, OTHER.public_key, PREFIX)
    assert not prefixed_signature_ok(env, KP.public_key, b"cocoon/other/v1")
    tampered = decode_prefixed(canonical_dumps({"payload": b"recorD", "signature": env.signature}))
    assert not prefixed_signature_ok(tampered, KP.public_key, PREFIX)
    with pytest.raises(SchemaError) as ei:
        decode_prefixed(canonical_dumps({"payload": b"record", "signature": bytes(63)}))
    assert ei.value.field == "signature"
    with pytest.raises(SchemaError) as ei:
        decode_prefixed(canonical_dumps({"payload": b"record", "signature": env.signature, "key": b""}))
    assert ei.value.field == "key"
    with pytest.raises(CborError):
        decode_prefixed(sealed + b"\x00")
    with pytest.raises(CborError, match="limit"):
        seal_prefixed(bytes(MAX_ENVELOPE_BYTES), KP.private_key, PREFIX)  # payload at its max: the envelope is over
