"""GossipSub peer scoring that bites: parameters in py-libp2p 0.8.1's own conventions, graylisting, pruning.

py-libp2p's ``PeerScorer`` (libp2p/pubsub/score.py) is not the GossipSub v1.1 spec's formula, and its signs
differ. Checked term by term against its code (tests/mesh/test_scoring.py moves each one):

==== ====================================== =========================================================
term py-libp2p computes                          so, for a penalty
==== ====================================== =========================================================
P1   ``+ w1 * min(grafts, cap1)``                a bonus; it counts GRAFTs (decayed), not time in mesh
P2   ``+ w2 * min(first_deliveries, cap2)``      a bonus for valid first deliveries
P3   ``+ w3 * min(mesh_deliveries, cap3)``       a bonus, never fed; the spec's deficit penalty does not exist
P4   ``- w4 * min(invalid, cap4)``               linear, not squared: ``w4 > 0`` AND ``cap4 > 0``
P5   ``- (total - threshold) * w5``              when total > threshold: ``w5 > 0``
P6   ``+ app * w6``                              unused here
P7   ``- w7 * excess_same_ip**2 - 0.1*w7*subnet`` ``w7 > 0``
==== ====================================== =========================================================

The mesh used to set P4 to weight -20 with cap 0 (always 0; with a cap the negative weight would have
*raised* the score) and P5/P7 to negative weights (raising it too). Thresholds: py-libp2p applies
``publish_threshold`` to messages it *receives* as well (``Pubsub.push_msg`` drops them unvalidated), so below
it a peer's messages are already ignored; we graylist at the same score and then also ignore its control
messages (:class:`ScoredGossipSub`), which py-libp2p never does. py-libp2p prunes a mesh peer only when the
mesh is above D_high; :meth:`ScoredGossipSub.mesh_heartbeat` prunes every mesh peer whose score is below
``PRUNE_THRESHOLD`` (-10), with a backoff, as the spec's heartbeat does at 0 (why not 0: see there).

Not every rejected announcement proves its forwarder misbehaved: an honest relay can deliver an older
announcement after a newer one came by another path (``replayed``), or one that expired on the way. A
validator may return :data:`IGNORE` for those: dropped like a rejection but not counted against the
forwarder (libp2p's "ignore" verdict, which py-libp2p lacks). py-libp2p counts an invalid message once per
topic it is on and answers a message seen again from its validation cache without asking the validator, so
the forgiveness is keyed by message (:class:`ScoredPubsub`), not by validator call. Stale messages are not
capped by default: each was signed by its origin, and py-libp2p validates a message id once while its cache
holds it, so a forwarder replaying them costs us no more than forwarding fresh ones (which py-libp2p
rate-limits per peer); ``stale_allowance`` can cap them per forwarder per minute.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import INetStream
from libp2p.exceptions import ValidationError
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import PeerScorer, ScoreParams, TopicScoreParams

log = logging.getLogger(__name__)

# One invalid message costs INVALID_WEIGHT; a peer is graylisted below GRAYLIST_THRESHOLD, so a fresh peer
# (no delivery bonus) is graylisted by its GRAYLIST_AFTER-th invalid message within a decay period.
INVALID_WEIGHT = 10.0
INVALID_CAP = 100.0
INVALID_DECAY = 0.997  # per heartbeat: half-life ~230 heartbeats (~4 min at 1 s)
GOSSIP_THRESHOLD = -10.0
PUBLISH_THRESHOLD = -50.0
GRAYLIST_THRESHOLD = PUBLISH_THRESHOLD
GRAYLIST_AFTER = int(-GRAYLIST_THRESHOLD // INVALID_WEIGHT) + 1
PRUNE_THRESHOLD = GOSSIP_THRESHOLD  # mesh peers below it are pruned each heartbeat (see mesh_heartbeat)
STALE_ALLOWANCE_PER_MINUTE: int | None = None  # None: every IGNOREd message forgiven (see the docstring)
IGNORED_REMEMBERED = 4096  # message keys whose verdict was IGNORE, for re-deliveries answered from the cache
IDONTWANT_THRESHOLD = 1024  # go-libp2p's IDontWantMessageThreshold


class Verdict(enum.Enum):
    """What a topic validator may answer besides True/False."""

    IGNORE = "ignore"  # drop, without counting it against the forwarder (within its allowance)

    def __bool__(self) -> bool:  # wherever it is read as a bool, it is a rejection
        return False


IGNORE = Verdict.IGNORE
TopicVerdict = bool | Verdict
ScoredValidator = Callable[[ID, rpc_pb2.Message], TopicVerdict]


def score_params(*, local_cluster: bool) -> ScoreParams:
    """Peer-scoring weights in py-libp2p's conventions (see the module docstring; its defaults are all zero).

    Invalid messages weigh heaviest, first deliveries earn a capped bonus (so honest relays sit above zero),
    behaviour penalties (IHAVE/IWANT spam +5, rate-limit excess +5, GRAFT floods +10, equivocation +100 in
    py-libp2p's accounting) cost one point each beyond the first, and IP colocation is penalised past a
    threshold that a loopback cluster must lift.
    """
    return ScoreParams(
        p1_time_in_mesh=TopicScoreParams(weight=0.01, cap=10.0, decay=0.99),
        p2_first_message_deliveries=TopicScoreParams(weight=1.0, cap=20.0, decay=0.99),
        p3_mesh_message_deliveries=TopicScoreParams(weight=0.0, cap=0.0, decay=0.9),
        p4_invalid_messages=TopicScoreParams(weight=INVALID_WEIGHT, cap=INVALID_CAP, decay=INVALID_DECAY),
        p5_behavior_penalty_weight=1.0,
        p5_behavior_penalty_decay=0.95,
        p5_behavior_penalty_threshold=1.0,
        p7_ip_colocation_weight=5.0,
        p7_ip_colocation_threshold=1_000_000 if local_cluster else 3,
        publish_threshold=PUBLISH_THRESHOLD,
        gossip_threshold=GOSSIP_THRESHOLD,
        graylist_threshold=GRAYLIST_THRESHOLD,
        accept_px_threshold=5.0,
    )


class ForgivingScorer(PeerScorer):
    """py-libp2p's scorer, plus the :data:`IGNORE` verdict: the next invalid-message count for a peer is
    skipped when its validator said "ignore" (validation and the count run with no checkpoint between)."""

    def __init__(self, params: ScoreParams, *, stale_allowance: int | None = STALE_ALLOWANCE_PER_MINUTE) -> None:
        super().__init__(params)
        self._forgive: defaultdict[ID, int] = defaultdict(int)
        self._forgiven_at: defaultdict[ID, deque[float]] = defaultdict(deque)
        self.stale_allowance = stale_allowance
        self.forgiven = 0

    def ignore_next_invalid(self, peer: ID, count: int = 1) -> None:
        """Skip the next ``count`` invalid-message counts for ``peer`` (one message: one per topic it is on)."""
        if self.stale_allowance is not None:
            now = trio.current_time()
            window = self._forgiven_at[peer]
            while window and window[0] < now - 60:
                window.popleft()
            if len(window) >= self.stale_allowance:  # beyond the allowance, stale messages count as invalid
                return
            window.append(now)
        self._forgive[peer] += count

    def on_invalid_message(self, peer: ID, topic: str) -> None:
        if self._forgive.get(peer, 0) > 0:
            self._forgive[peer] -= 1
            self.forgiven += 1
            return
        super().on_invalid_message(peer, topic)

    def remove_peer(self, peer: ID) -> None:
        super().remove_peer(peer)
        self._forgive.pop(peer, None)
        self._forgiven_at.pop(peer, None)


class ScoredGossipSub(GossipSub):
    """GossipSub whose score thresholds act: negative mesh peers are pruned, graylisted peers ignored."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.scorer = ForgivingScorer(self.scorer.params if self.scorer is not None else ScoreParams())
        self.score_pruned = 0  # mesh peers pruned for a negative score
        self.graylist_dropped = 0  # RPCs and messages ignored from graylisted peers
        self._forwarding_size = 0
        self._ignored: OrderedDict[bytes, None] = OrderedDict()

    def note_ignored(self, msg: rpc_pb2.Message) -> None:
        """The validator said IGNORE for ``msg``: it and its re-deliveries are not held against forwarders."""
        key = bytes(msg.from_id) + bytes(msg.seqno)
        self._ignored[key] = None
        self._ignored.move_to_end(key)
        while len(self._ignored) > IGNORED_REMEMBERED:
            self._ignored.popitem(last=False)

    def was_ignored(self, msg: rpc_pb2.Message) -> bool:
        return bytes(msg.from_id) + bytes(msg.seqno) in self._ignored

    def graylisted(self, peer: ID) -> bool:
        """Below the graylist threshold over the topics we are in (what the spec ignores entirely)."""
        return self.scorer is not None and bool(self.mesh) and self.scorer.is_graylisted(peer, list(self.mesh))

    def score_of(self, peer: ID) -> float:
        return self.scorer.score(peer, list(self.mesh)) if self.scorer is not None else 0.0

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        # Read by _emit_idontwant_for_message, which py-libp2p awaits before any checkpoint of this call.
        self._forwarding_size = pubsub_msg.ByteSize()
        await super().publish(msg_forwarder, pubsub_msg)

    idontwant_threshold = IDONTWANT_THRESHOLD  # bytes; bench_discovery compares settings

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        """IDONTWANT only for messages of at least IDONTWANT_THRESHOLD bytes, as go-libp2p does.

        py-libp2p sends one to every mesh peer for every message, each its own RPC with a signed peer record:
        for a ~0.9 kB announcement that cost more than the duplicates it saves (bench_discovery, RESULTS.md)."""
        if self._forwarding_size < self.idontwant_threshold:
            return
        await super()._emit_idontwant_for_message(msg_id, topic_ids)

    async def handle_rpc(self, rpc: rpc_pb2.RPC, sender_peer_id: ID) -> None:
        if self.graylisted(sender_peer_id):
            self.graylist_dropped += 1
            return
        await super().handle_rpc(rpc, sender_peer_id)

    def mesh_heartbeat(self) -> tuple[defaultdict[ID, list[str]], defaultdict[ID, list[str]]]:
        """Prune peers below PRUNE_THRESHOLD first (with a backoff, so the regraft below D_low skips them).

        The spec prunes at any negative score; py-libp2p charges honest peers small behaviour penalties (a
        GRAFT inside the backoff, which its own opportunistic grafting sends, costs one peer -9), and pruning
        at 0 turned those into prune / graft-flood cascades among honest nodes in netsim at 100 nodes. A peer
        that sends invalid messages crosses -10 with its first or second one."""
        pruned: defaultdict[ID, list[str]] = defaultdict(list)
        if self.scorer is not None:
            for topic, peers in self.mesh.items():
                for peer in list(peers):
                    score = self.scorer.score(peer, [topic])
                    if score < PRUNE_THRESHOLD:
                        peers.discard(peer)
                        self.scorer.on_leave_mesh(peer, topic)
                        self._add_back_off(peer, topic, False)
                        pruned[peer].append(topic)
                        self.score_pruned += 1
                        parts = {k: round(v, 2) for k, v in self.scorer.get_score_stats(peer, topic).items()
                                 if isinstance(v, float) and v}
                        log.info("pruned %s from %s: score %.1f %s", peer, topic, score, parts)
        to_graft, to_prune = super().mesh_heartbeat()
        for peer, topics in pruned.items():
            to_prune[peer].extend(t for t in topics if t not in to_prune[peer])
            if peer in to_graft:
                to_graft[peer] = [t for t in to_graft[peer] if t not in topics]
                if not to_graft[peer]:
                    del to_graft[peer]
        return to_graft, to_prune


class ScoredPubsub(Pubsub):
    """Pubsub that ignores messages forwarded by graylisted peers before any other work on them, does not
    count a message its validator IGNOREd against the forwarder (once per topic, as py-libp2p counts it), and
    survives an RPC that is not protobuf."""

    malformed_rpcs = 0

    async def stream_handler(self, stream: INetStream) -> None:
        """py-libp2p's handler, except that bytes that do not parse as an RPC end that peer's stream instead of
        the node: py-libp2p 0.8.1 catches only stream errors there, so the ``DecodeError`` escaped through the
        connection's nursery and cancelled the whole host (any peer could stop a node with one bad frame; a
        netsim pool of 25 nodes died of it). The stream is reset and the peer dropped from pubsub, as py-libp2p
        does after a failed read; it may open a new stream."""
        try:
            await super().stream_handler(stream)
        except DecodeError as exc:
            peer = stream.muxed_conn.peer_id
            self.malformed_rpcs += 1
            log.info("malformed pubsub RPC from %s (%s): stream reset", peer, exc)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception as reset_exc:  # already gone
                    log.debug("resetting a pubsub stream: %r", reset_exc)
            self._handle_dead_peer(peer)

    async def validate_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        try:
            await super().validate_msg(msg_forwarder, msg)
        except ValidationError:
            router = self.router
            if isinstance(router, ScoredGossipSub) and router.was_ignored(msg):
                scorer = router.scorer
                if isinstance(scorer, ForgivingScorer):
                    scorer.ignore_next_invalid(msg_forwarder, count=max(1, len(msg.topicIDs)))
            raise

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        router = self.router
        if isinstance(router, ScoredGossipSub) and router.graylisted(msg_forwarder):
            router.graylist_dropped += 1
            return
        await super().push_msg(msg_forwarder, msg)


def as_pubsub_validator(validator: ScoredValidator,
                        gossipsub: ScoredGossipSub) -> Callable[[ID, rpc_pb2.Message], bool]:
    """py-libp2p's boolean topic validator for one that may also answer :data:`IGNORE`."""

    def run(forwarder: ID, msg: rpc_pb2.Message) -> bool:
        verdict = validator(forwarder, msg)
        if verdict is IGNORE:
            gossipsub.note_ignored(msg)  # ScoredPubsub.validate_msg forgives it
            return False
        return bool(verdict)

    return run
