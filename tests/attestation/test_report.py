"""Report record, libp2p key/peer-id helpers, and strict envelope decoding."""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cocoon_node.attestation import (
    TEE_DEV,
    AttestationError,
    Claims,
    decode_and_verify_envelope,
    libp2p_pubkey_protobuf,
    peer_id_from_pubkey,
    raw_from_libp2p_pubkey,
    sign_report,
)
from cocoon_node.attestation.report import ENVELOPE_DOMAIN
from cocoon_node.wire import canonical_dumps as canonical_cbor

from .att_helpers import fixed_ed25519

KEY = fixed_ed25519("node-1")
RAW_PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def claims(**kw: Any) -> Claims:
    base: dict[str, Any] = dict(
        model_name="qwen3-8b",
        model_hash=hashlib.sha256(b"weights").digest(),
        node_version="0.1.0",
        issued_at=1_790_000_000,
        expires_at=1_790_003_600,
        tee_kind=TEE_DEV,
    )
    base.update(kw)
    return Claims.for_key(RAW_PUB, **base)


def test_libp2p_helpers_match_py_libp2p() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    seed = hashlib.sha256(b"node-1").digest()
    kp = create_new_key_pair(seed)
    assert kp.public_key.to_bytes() == RAW_PUB  # same seed -> same key in both libraries
    pb = libp2p_pubkey_protobuf(RAW_PUB)
    assert pb == kp.public_key.serialize()
    assert peer_id_from_pubkey(pb) == ID.from_pubkey(kp.public_key).to_bytes()
    assert raw_from_libp2p_pubkey(pb) == RAW_PUB
    # and libp2p can verify a signature our key made
    assert kp.public_key.verify(b"msg", KEY.sign(b"msg"))


def test_bad_libp2p_keys() -> None:
    with pytest.raises(ValueError):
        raw_from_libp2p_pubkey(b"\x08\x00\x12\x20" + bytes(32))  # RSA type
    with pytest.raises(ValueError):
        libp2p_pubkey_protobuf(bytes(31))
    pb = libp2p_pubkey_protobuf(RAW_PUB)
    for bad in (
        b"",
        b"junk",
        pb[:-1],
        pb + b"\x00",
        pb[4:] + pb[:4],
        b"\x12\x20" + RAW_PUB + b"\x08\x01",  # the same key with its protobuf fields swapped
    ):
        with pytest.raises(ValueError):
            raw_from_libp2p_pubkey(bad)
        with pytest.raises(ValueError):
            peer_id_from_pubkey(bad)


def test_non_ed25519_keys_are_refused() -> None:
    from libp2p.crypto.secp256k1 import create_new_key_pair as secp256k1_pair

    secp = secp256k1_pair().public_key.serialize()
    with pytest.raises(ValueError, match="Ed25519"):
        raw_from_libp2p_pubkey(secp)
    with pytest.raises(ValueError, match="Ed25519"):
        peer_id_from_pubkey(secp)
    with pytest.raises(AttestationError) as ei:
        decode_and_verify_envelope(_resign(_record(public_key=secp)))
    assert ei.value.check == "envelope_signature" and "Ed25519" in str(ei.value)


def test_report_data_is_sha512_of_canonical_claims() -> None:
    c = claims()
    assert c.report_data() == hashlib.sha512(canonical_cbor(c.to_map())).digest()
    assert "evidence" not in cbor2.loads(c.to_cbor())


def test_sign_and_decode_round_trip() -> None:
    env = sign_report(claims(), b"evidence", KEY)
    rep = decode_and_verify_envelope(env)
    assert rep.claims == claims() and rep.evidence == b"evidence"
    assert rep.public_key_raw == RAW_PUB


def test_sign_rejects_mismatched_key() -> None:
    with pytest.raises(ValueError):
        sign_report(claims(), b"e", fixed_ed25519("other"))


def _resign(record: dict[str, Any], key: Any = KEY, *, encoder: Any = None) -> bytes:
    payload = (encoder or canonical_cbor)(record)
    return canonical_cbor({"payload": payload, "signature": key.sign(ENVELOPE_DOMAIN + payload)})


def _record(**kw: Any) -> dict[Any, Any]:
    rec = {**claims().to_map(), "evidence": b"ev"}
    rec.update(kw)
    return rec


def _expect_format(data: bytes) -> None:
    with pytest.raises(AttestationError) as ei:
        decode_and_verify_envelope(data)
    assert ei.value.check == "format", str(ei.value)


def test_resign_helper_is_sound() -> None:
    decode_and_verify_envelope(_resign(_record()))


@pytest.mark.parametrize(
    "record",
    [
        {k: v for k, v in _record().items() if k != "model_name"},  # missing
        {**_record(), "extra": 1},  # unknown
        {**_record(), **{7: 1}},  # non-text key
        _record(version=True),  # bool is not uint
        _record(version=1),  # unsupported version (v1 lacks backend/upstream)
        _record(version=3),  # unsupported version
        {k: v for k, v in _record().items() if k != "upstream"},  # v2 requires where prompts go
        _record(upstream="h" * 257),
        _record(backend="b" * 33),
        _record(issued_at=-1),
        _record(issued_at=1.5),
        _record(model_hash=bytes(31)),
        _record(model_hash="00" * 32),
        _record(model_name=b"x"),
        _record(model_name="x" * 257),
        _record(node_version="v" * 65),
        _record(tee_kind="sgx"),
        _record(peer_id=bytes(65)),
        _record(evidence=[b"x"]),
        _record(evidence=bytes(13000)),
        _record(expires_at=cbor2.CBORTag(1, 5)),
    ],
    ids=lambda r: "-",
)
def test_decode_rejects_bad_records(record: dict[str, Any]) -> None:
    _expect_format(_resign(record))


def test_decode_rejects_non_canonical() -> None:
    rec = _record()
    # keys in insertion (not canonical) order
    _expect_format(_resign(rec, encoder=lambda r: cbor2.dumps(dict(reversed(list(r.items()))))))
    # non-minimal integer: issued_at as 0x1b + 8 bytes while it fits in 4
    good = canonical_cbor(rec)
    ia = cbor2.dumps(rec["issued_at"])
    assert ia[0] == 0x1A
    bad_payload = good.replace(ia, b"\x1b" + rec["issued_at"].to_bytes(8, "big"))
    env = canonical_cbor({"payload": bad_payload, "signature": KEY.sign(ENVELOPE_DOMAIN + bad_payload)})
    _expect_format(env)
    # trailing bytes after the envelope, and inside the payload
    _expect_format(_resign(rec) + b"\x00")
    padded = good + b"\x00"
    _expect_format(canonical_cbor({"payload": padded, "signature": KEY.sign(ENVELOPE_DOMAIN + padded)}))
    # duplicate keys
    dup = b"\xa3" + cbor2.dumps("payload") + cbor2.dumps(good) + cbor2.dumps("payload") + cbor2.dumps(good)
    _expect_format(dup + cbor2.dumps("signature") + cbor2.dumps(KEY.sign(ENVELOPE_DOMAIN + good)))
    # indefinite-length byte string
    _expect_format(b"\xa2\x67payload\x5f\x41\x00\xff\x69signature\x40")


def test_decode_rejects_oversize_and_junk() -> None:
    _expect_format(bytes(16385))
    _expect_format(b"")
    _expect_format(b"\xff\xff")
    _expect_format(b"\x81" * 5000 + b"\x00")  # deep nesting
    _expect_format(canonical_cbor([1, 2]))
    _expect_format(canonical_cbor({"payload": b"\xa0", "signature": bytes(64), "x": 1}))


def test_envelope_signature_and_peer_binding() -> None:
    env = cbor2.loads(sign_report(claims(), b"e", KEY))
    sig = bytearray(env["signature"])
    sig[0] ^= 1
    with pytest.raises(AttestationError) as ei:
        decode_and_verify_envelope(canonical_cbor({**env, "signature": bytes(sig)}))
    assert ei.value.check == "envelope_signature"
    # signed without the domain prefix
    payload = env["payload"]
    with pytest.raises(AttestationError) as ei:
        decode_and_verify_envelope(canonical_cbor({"payload": payload, "signature": KEY.sign(payload)}))
    assert ei.value.check == "envelope_signature"
    # record claims another peer id than its key's
    other = peer_id_from_pubkey(libp2p_pubkey_protobuf(bytes(32)))
    with pytest.raises(AttestationError) as ei:
        decode_and_verify_envelope(_resign(_record(peer_id=other)))
    assert ei.value.check == "peer_id"
