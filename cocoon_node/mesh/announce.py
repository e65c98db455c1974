"""Worker announcements: the small signed pointers that drive discovery.

A worker gossips who it is, where to dial it, what it serves and at what price. Every node validates each
announcement before GossipSub forwards it (a topic validator), so junk never propagates: malformed,
oversized, unsigned, forged, expired, replayed and too-frequent announcements are dropped and counted.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from libp2p.crypto.keys import PrivateKey
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from cocoon_node.mesh.scoring import IGNORE, TopicVerdict
from cocoon_node.wire import (
    CborError,
    EnvelopeError,
    SchemaError,
    load_protocol,
    open_envelope,
    seal_envelope,
)
from cocoon_node.wire.messages.announce import (
    ANNOUNCEMENT_VERSION,
    CAPABILITIES_VERSION,
    AnnouncementPayload,
    Version,
    decode_payload,
    encode_payload,
    payload_fields,
    payload_from_fields,
)
from cocoon_node.wire.messages.announce import TOKENIZER_VERSION as TOKENIZER_VERSION
from cocoon_node.wire.messages.announce import Hardware as Hardware  # re-exported: the mesh's face for it

_PROTO = load_protocol("announce")
TOPIC: str = _PROTO.meta["topic"]  # the directory topic (see protocols/announce.toml)
MODEL_TOPIC_PREFIX: str = _PROTO.meta["model_topic_prefix"]
DOMAIN: str = _PROTO.meta["domain"]
MAX_CLOCK_SKEW = 30  # seconds an announcement's issue time may lie ahead of the validator's clock
MAX_TTL: int = int(_PROTO.meta["max_ttl_seconds"])
RATE_LIMIT_PER_MINUTE: int = int(_PROTO.meta["rate_limit_per_minute"])
STALE_REASONS = frozenset({"replayed", "expired"})


def model_topic(model: str) -> str:
    """The topic a model's announcements travel on: only nodes serving or buying it subscribe."""
    return MODEL_TOPIC_PREFIX + model


def payload_version(*, tokenizer: bytes, hardware: Hardware | msgspec.UnsetType | None,
                    capabilities: tuple[str, ...] = ()) -> Version:
    """The version an announcement with these optional fields is sent as (one offer, one encoding)."""
    if capabilities:
        return CAPABILITIES_VERSION
    return 2 if tokenizer or isinstance(hardware, Hardware) else ANNOUNCEMENT_VERSION


class AnnouncementError(ValueError):
    """Why an announcement was rejected; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Announcement(AnnouncementPayload, frozen=True, kw_only=True):
    """A worker's offer, as gossiped: the wire type (:mod:`cocoon_node.wire.messages.announce`, fields and
    version rules) with what the mesh does with one."""

    @property
    def peer(self) -> ID:
        return ID(self.peer_id)

    def to_wire(self) -> dict[str, Any]:
        """The payload's map, as it is signed (optional fields left out; every v3 map has capabilities)."""
        return payload_fields(self)

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> Announcement:
        """A decoded map as an announcement, validated; raises :class:`SchemaError`."""
        return payload_from_fields(fields, cls)

    def to_payload(self) -> bytes:
        """The canonical CBOR a worker signs; validated first."""
        return encode_payload(self)

    @classmethod
    def from_payload(cls, data: bytes) -> Announcement:
        """Canonical CBOR from a peer -> announcement: :class:`CborError` or :class:`SchemaError` if it is not one."""
        return decode_payload(data, cls)

    def seal(self, private_key: PrivateKey) -> bytes:
        return seal_envelope(DOMAIN, self.to_payload(), private_key)

    def bump(self, *, load: int, now: int, ttl: int) -> Announcement:
        """The next announcement: higher seqno, fresh validity window."""
        return msgspec.structs.replace(self, load=load, seqno=self.seqno + 1, issued_at=now, expires_at=now + ttl)


def decode_announcement(data: bytes) -> tuple[Announcement, ID]:
    """Open the envelope and decode the payload; returns the announcement and the signer's peer id."""
    if len(data) > load_protocol("envelope").message("envelope").max_bytes:
        raise AnnouncementError("oversized", f"{len(data)} bytes")
    try:
        envelope = open_envelope(data, expected_domain=DOMAIN)
    except EnvelopeError as exc:
        reason = "forged" if "signature" in str(exc) else "malformed"
        raise AnnouncementError(reason, str(exc)) from exc
    limit = Announcement.MAX_BYTES
    if len(envelope.payload) > limit:
        raise AnnouncementError("oversized", f"payload of {len(envelope.payload)} bytes > {limit}")
    try:
        announcement = Announcement.from_payload(envelope.payload)
    except (CborError, SchemaError, TypeError) as exc:
        raise AnnouncementError("malformed", str(exc)) from exc
    return announcement, envelope.peer_id


class AnnouncementValidator:
    """Stateful GossipSub topic validator for the workers topic.

    State per origin peer: the highest seqno accepted (replays and reorders are dropped) and a sliding
    one-minute window of acceptance times (rate limit). Counters by reason feed ``cocoon-node status``.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None, rate_limit_per_minute: int = RATE_LIMIT_PER_MINUTE,
                 clock_skew: int = MAX_CLOCK_SKEW) -> None:
        self._clock = clock or (lambda: time.time())  # looked up per call: a (netsim-)skewed clock applies
        self._rate_limit = rate_limit_per_minute
        self._skew = clock_skew
        self._last_seqno: dict[bytes, int] = {}
        self._recent: dict[bytes, deque[float]] = {}
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.on_accept: Callable[[Announcement], object] | None = None
        # py-libp2p runs a topic's validator once per topic a message is on: a message on a model topic and
        # the directory reaches us twice; the second call must give the first one's verdict (not "replayed").
        self._last_msg: tuple[bytes, bytes] | None = None
        self._last_verdict: TopicVerdict = False

    def check(self, data: bytes, origin: ID | None, topics: Sequence[str] = ()) -> Announcement:
        """Validate one announcement; raises :class:`AnnouncementError`. Updates replay/rate state.

        ``topics``: the pubsub topics it came on; a model topic must be the announced model's own."""
        announcement, signer = decode_announcement(data)
        model_topics = [t for t in topics if t.startswith(MODEL_TOPIC_PREFIX)]
        if any(t != model_topic(announcement.model) for t in model_topics):
            raise AnnouncementError("wrong_topic", f"model {announcement.model!r} announced on {model_topics}")
        if signer.to_bytes() != announcement.peer_id:
            raise AnnouncementError("forged", "payload peer_id is not the signer")
        if origin is not None and origin.to_bytes() != announcement.peer_id:
            raise AnnouncementError("forged", "announcement relayed under another origin peer")
        now = self._clock()
        if announcement.expires_at <= now:
            raise AnnouncementError("expired", f"expired {now - announcement.expires_at:.0f}s ago")
        if announcement.issued_at > now + self._skew:
            raise AnnouncementError("malformed", "issued in the future")
        if announcement.expires_at - announcement.issued_at > MAX_TTL:
            raise AnnouncementError("malformed", f"validity window longer than {MAX_TTL}s")
        last = self._last_seqno.get(announcement.peer_id)
        if last is not None and announcement.seqno <= last:
            raise AnnouncementError("replayed", f"seqno {announcement.seqno} <= last seen {last}")
        window = self._recent.setdefault(announcement.peer_id, deque())
        while window and window[0] < now - 60:
            window.popleft()
        if len(window) >= self._rate_limit:
            raise AnnouncementError("rate_limited", f"more than {self._rate_limit} per minute")
        window.append(now)
        self._last_seqno[announcement.peer_id] = announcement.seqno
        return announcement

    def __call__(self, forwarder: ID, msg: rpc_pb2.Message) -> TopicVerdict:
        """The py-libp2p sync topic-validator signature, plus IGNORE (see cocoon_node/mesh/scoring.py)."""
        key = (bytes(msg.from_id), bytes(msg.seqno))
        if len(msg.topicIDs) > 1 and key == self._last_msg:
            return self._last_verdict
        self._last_msg = key
        self._last_verdict = verdict = self._verdict(forwarder, msg)
        return verdict

    def _verdict(self, forwarder: ID, msg: rpc_pb2.Message) -> TopicVerdict:
        try:
            origin = ID(msg.from_id) if msg.from_id else None
            announcement = self.check(msg.data, origin, msg.topicIDs)
        except AnnouncementError as exc:
            self.rejected[exc.reason] += 1
            # Stale, not forged: an honest peer may deliver these (reordered paths, slow links, py-libp2p
            # replaying its recent messages to a peer that just joined the topic, the origin included); they
            # are dropped without counting against it (see mesh/scoring.py). A rate excess counts when the
            # origin itself sends it (a relay only forwards what passed its own, slightly shifted, window).
            relayed = origin is not None and origin != forwarder
            stale = exc.reason in STALE_REASONS or (relayed and exc.reason == "rate_limited")
            return IGNORE if stale else False
        except Exception:  # anything unexpected from hostile bytes is a malformed message, not a crash
            self.rejected["malformed"] += 1
            return False
        self.accepted += 1
        if self.on_accept is not None:
            self.on_accept(announcement)
        return True

    def stats(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(self.rejected)}
