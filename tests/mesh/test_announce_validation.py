"""Bad announcements are rejected and counted; good ones feed the worker table (newest seqno wins)."""

from __future__ import annotations

import time

import cbor2
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from cocoon_node.mesh import Announcement, AnnouncementValidator, WorkerTable
from cocoon_node.wire import SchemaError, canonical_dumps, seal_envelope


def announcement(key_pair, *, seqno: int = 1, issued: int | None = None, ttl: int = 30, **over) -> Announcement:
    now = int(time.time()) if issued is None else issued
    peer = ID.from_pubkey(key_pair.public_key)
    fields = dict(peer_id=peer.to_bytes(), addrs=("/ip4/127.0.0.1/tcp/1",), model="m", model_hash=b"\x00" * 32,
                  backend="synthetic", synthetic=True, price_prompt=1, price_completion=1, max_concurrent=1,
                  load=0, protocols=("/cocoon/inference/1.0.0",), tee_kind="dev-INSECURE", seqno=seqno,
                  issued_at=now, expires_at=now + ttl, payout="", v=1)
    fields.update(over)
    return Announcement(**fields)


def msg(data: bytes, origin: ID) -> rpc_pb2.Message:
    return rpc_pb2.Message(data=data, from_id=origin.to_bytes(), seqno=b"\x00" * 8, topicIDs=["/cocoon/workers/1"])


def test_valid_announcement_accepted_and_tabled() -> None:
    kp = create_new_key_pair()
    v = AnnouncementValidator()
    table = WorkerTable()
    v.on_accept = table.update
    peer = ID.from_pubkey(kp.public_key)
    assert v(peer, msg(announcement(kp).seal(kp.private_key), peer))
    assert len(table) == 1 and v.accepted == 1


def test_forged_signature_rejected() -> None:
    kp, other = create_new_key_pair(), create_new_key_pair()
    sealed = bytearray(announcement(kp).seal(kp.private_key))
    sealed[-5] ^= 0x01  # inside the signature
    peer = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator()
    assert not v(peer, msg(bytes(sealed), peer))
    # Signed by another key but claiming kp's peer id.
    forged = announcement(kp).seal(other.private_key)
    assert not v(peer, msg(forged, peer))
    assert v.rejected["forged"] == 2 and v.accepted == 0


def test_unsigned_and_malformed_rejected() -> None:
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator()
    unsigned = canonical_dumps(announcement(kp).to_wire())  # payload without an envelope
    assert not v(peer, msg(unsigned, peer))
    assert not v(peer, msg(b"\xff\x00garbage", peer))
    bad_field = announcement(kp).to_wire() | {"extra": 1}
    assert not v(peer, msg(seal_envelope("cocoon/announce/v1", canonical_dumps(bad_field), kp.private_key), peer))
    non_canonical = cbor2.dumps(announcement(kp).to_wire(), canonical=False)
    if non_canonical != canonical_dumps(announcement(kp).to_wire()):
        assert not v(peer, msg(seal_envelope("cocoon/announce/v1", non_canonical, kp.private_key), peer))
    assert v.rejected["malformed"] >= 3 and v.accepted == 0


def test_tokenizer_field_only_in_version_2() -> None:
    """v2 adds the tokenizer hash (requesters holding that tokenizer count claimed tokens themselves); a v1
    announcement must not carry it and a v2 one must."""
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator()
    tok = b"\x42" * 32
    good = announcement(kp, v=2, tokenizer=tok)
    assert v(peer, msg(good.seal(kp.private_key), peer))
    table = WorkerTable()
    v.on_accept = table.update
    assert v(peer, msg(announcement(kp, seqno=2, v=2, tokenizer=tok).seal(kp.private_key), peer))
    assert table.live()[0].tokenizer == tok
    assert "tokenizer" not in announcement(kp).to_wire()  # v1 stays as it was, byte for byte
    v1_with = announcement(kp, seqno=3).to_wire() | {"tokenizer": tok}
    v2_without = announcement(kp, seqno=4).to_wire() | {"v": 2}  # (the type refuses to build these two)
    short = announcement(kp, seqno=5).to_wire() | {"v": 2, "tokenizer": b"\x42" * 31}
    for payload in (v1_with, v2_without, short):
        assert not v(peer, msg(seal_envelope("cocoon/announce/v1", canonical_dumps(payload), kp.private_key), peer))
    assert v.rejected["malformed"] == 3 and v.accepted == 2


def test_one_version_2_with_tokenizer_hardware_or_both() -> None:
    """Version 2 is one format for both optional fields (tokenizer, issue 19; hardware, issue 15): each alone
    or both together; v1 carries neither; a v2 carrying neither is refused (one offer, one encoding); and a
    worker picks the version from what it has to announce."""
    from cocoon_node.mesh.announce import Hardware, payload_version

    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator()
    table = WorkerTable()
    v.on_accept = table.update
    tok, hw = b"\x42" * 32, Hardware("NVIDIA H200", 8, 143_771, "detected", 32_768, "declared")
    both = announcement(kp, seqno=1, v=2, tokenizer=tok, hardware=hw)
    assert v(peer, msg(both.seal(kp.private_key), peer))
    assert (table.live()[0].tokenizer, table.live()[0].hardware) == (tok, hw)
    assert v(peer, msg(announcement(kp, seqno=2, v=2, hardware=hw).seal(kp.private_key), peer))
    assert table.live()[0].tokenizer == b"" and table.live()[0].hardware == hw
    v1_with_hw = announcement(kp, seqno=3).to_wire() | {"hardware": hw.to_dict()}
    v1_with_both = announcement(kp, seqno=4).to_wire() | {"hardware": hw.to_dict(), "tokenizer": tok}
    v2_bare = announcement(kp, seqno=5).to_wire() | {"v": 2}
    for payload in (v1_with_hw, v1_with_both, v2_bare):
        assert not v(peer, msg(seal_envelope("cocoon/announce/v1", canonical_dumps(payload), kp.private_key), peer))
    assert v.rejected["malformed"] == 3 and v.accepted == 2
    assert payload_version(tokenizer=b"", hardware=None) == 1
    assert payload_version(tokenizer=tok, hardware=None) == payload_version(tokenizer=b"", hardware=hw) == 2


def test_expired_and_future_rejected() -> None:
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator()
    old = announcement(kp, issued=int(time.time()) - 100, ttl=30)
    assert not v(peer, msg(old.seal(kp.private_key), peer))
    long = announcement(kp, ttl=10_000)
    assert not v(peer, msg(long.seal(kp.private_key), peer))
    assert v.rejected["expired"] == 1 and v.rejected["malformed"] == 1


def test_replayed_and_reordered_rejected() -> None:
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator()
    a5 = announcement(kp, seqno=5).seal(kp.private_key)
    assert v(peer, msg(a5, peer))
    assert not v(peer, msg(a5, peer))  # exact replay
    assert not v(peer, msg(announcement(kp, seqno=4).seal(kp.private_key), peer))  # older
    assert v.rejected["replayed"] == 2


def test_oversized_rejected() -> None:
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator()
    big = announcement(kp, model="m" * 5000)
    with pytest.raises(SchemaError):
        big.seal(kp.private_key)  # a node will not sign one; a hostile one signs the bytes itself
    assert not v(peer, msg(seal_envelope("cocoon/announce/v1", canonical_dumps(big.to_wire()), kp.private_key), peer))
    assert not v(peer, msg(b"\x00" * 100_000, peer))
    assert v.rejected["oversized"] + v.rejected["malformed"] == 2 and v.rejected["oversized"] >= 1


def test_relayed_under_other_origin_rejected() -> None:
    kp, other = create_new_key_pair(), create_new_key_pair()
    v = AnnouncementValidator()
    other_peer = ID.from_pubkey(other.public_key)
    assert not v(other_peer, msg(announcement(kp).seal(kp.private_key), other_peer))
    assert v.rejected["forged"] == 1


def test_rate_limited_per_peer() -> None:
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator(rate_limit_per_minute=5)
    results = [v(peer, msg(announcement(kp, seqno=i).seal(kp.private_key), peer)) for i in range(1, 9)]
    assert results == [True] * 5 + [False] * 3
    assert v.rejected["rate_limited"] == 3
    other = create_new_key_pair()
    other_peer = ID.from_pubkey(other.public_key)
    assert v(other_peer, msg(announcement(other).seal(other.private_key), other_peer))


def test_table_newest_seqno_wins_and_expiry() -> None:
    kp = create_new_key_pair()
    clock = [1000.0]
    table = WorkerTable(clock=lambda: clock[0])
    assert table.update(announcement(kp, seqno=2, issued=1000, ttl=10))
    assert not table.update(announcement(kp, seqno=1, issued=1000, ttl=10))
    assert table.live()[0].seqno == 2
    clock[0] = 1011
    assert table.expire() == [ID.from_pubkey(kp.public_key).to_bytes()]
    assert len(table) == 0


def test_stale_announcements_are_ignored_and_forgeries_rejected() -> None:
    """Issue 15: what an honest peer may deliver (an older or expired announcement, a relayed rate excess) is
    dropped with the IGNORE verdict, which does not count against the sender's score; the rest is rejected."""
    from cocoon_node.mesh.scoring import IGNORE

    kp, relay = create_new_key_pair(), ID.from_pubkey(create_new_key_pair().public_key)
    origin = ID.from_pubkey(kp.public_key)
    v = AnnouncementValidator(rate_limit_per_minute=2)
    assert v(origin, msg(announcement(kp, seqno=5).seal(kp.private_key), origin)) is True
    assert v(origin, msg(announcement(kp, seqno=4).seal(kp.private_key), origin)) is IGNORE  # replay
    assert v(relay, msg(announcement(kp, seqno=3).seal(kp.private_key), origin)) is IGNORE
    expired = announcement(kp, seqno=9, issued=int(time.time()) - 100, ttl=30)
    assert v(origin, msg(expired.seal(kp.private_key), origin)) is IGNORE
    assert v(relay, msg(announcement(kp, seqno=6).seal(kp.private_key), origin)) is True
    assert v(relay, msg(announcement(kp, seqno=7).seal(kp.private_key), origin)) is IGNORE  # relayed rate excess
    assert v(origin, msg(announcement(kp, seqno=8).seal(kp.private_key), origin)) is False  # the origin's own
    other = create_new_key_pair()
    forged = announcement(other, seqno=10).seal(other.private_key)
    assert v(relay, msg(forged, origin)) is False


def test_capabilities_are_on_the_wire_exactly_when_v3() -> None:
    """The one version rule the type cannot say by itself (an empty list is the field's default, which the
    encoding leaves out): a v3 payload always carries ``capabilities``, even empty, and v1/v2 never do."""
    kp = create_new_key_pair()
    v3_empty = announcement(kp).to_wire() | {"v": 3, "capabilities": []}
    decoded = Announcement.from_wire(v3_empty)
    assert decoded.v == 3 and decoded.capabilities == ()
    assert decoded.to_wire()["capabilities"] == [] and Announcement.from_payload(decoded.to_payload()) == decoded
    for bad in ({k: v for k, v in v3_empty.items() if k != "capabilities"},  # v3 without the field
                announcement(kp).to_wire() | {"capabilities": []},  # v1 with it, even empty
                announcement(kp).to_wire() | {"v": 2, "tokenizer": b"\x42" * 32, "capabilities": []}):
        with pytest.raises(SchemaError, match="capabilities"):
            Announcement.from_wire(bad)
