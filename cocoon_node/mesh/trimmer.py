"""Keep a node's connections near its target: close the idle surplus, which py-libp2p never does.

py-libp2p's connection pruner skips every connection that carries a stream ("never interrupt live traffic"),
and pubsub keeps a stream open to every connected peer, so in practice it never closes anything: each DHT
walk, put, dial-back or attestation fetch leaves its connections behind. In netsim's scale scenario, with a
target of 4 peers, nodes held 37 connections each (922 in one 25-node pool), and each one costs its owner
all the time: a yamux read loop, RTT pings and a stream sweeper, a pubsub stream each way, a subscription
exchange and a replay of recent messages when it opens, and IHAVE gossip on every heartbeat.

Every ``interval`` seconds, while the node holds more than ``high`` peers, :class:`ConnectionTrimmer` closes
the connections of the least useful peers until ``high`` remain. It never closes a peer that is

- in our GossipSub mesh or fanout for any topic (the paths our announcements travel),
- named by a protection source (``protect``: relays we hold a reservation on, peers reserved on us),
- using a stream of any other protocol right now (an inference stream, a DHT RPC, a dial-back, a stream
  still negotiating), or
- connected for less than ``grace`` seconds (a dial made for a reason is used soon after it opens).

Among the rest it closes peers not subscribed to any topic we follow first, then the longest connected.
A closed peer stays in the peerstore and the DHT's routing table; whoever needs it again dials it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost, INetConn
from libp2p.peer.id import ID

log = logging.getLogger(__name__)

#: Streams that every pubsub peer keeps open, or that only exchange metadata: they do not make a peer busy.
IDLE_PROTOCOL_PREFIXES = ("/meshsub/", "/floodsub/", "/ipfs/id/")


@dataclass
class TrimStats:
    rounds: int = 0
    closed: int = 0
    kept_busy: int = 0  # surplus peers kept in the last round because something protected them


class ConnectionTrimmer:
    """Close the idle surplus over ``high`` connected peers (see the module docstring)."""

    def __init__(self, host: IHost, gossipsub: Any, pubsub: Any, *, high: int, grace: float = 30.0,
                 interval: float = 10.0, clock: Callable[[], float] = time.time,
                 protectors: list[Callable[[], Iterable[ID]]] | None = None) -> None:
        self.host = host
        self.gossipsub = gossipsub
        self.pubsub = pubsub
        self.high = high
        self.grace = grace
        self.interval = interval
        self.clock = clock
        self.stats = TrimStats()
        self._protectors = protectors if protectors is not None else []

    def protect(self, source: Callable[[], Iterable[ID]]) -> None:
        """Never close a peer ``source()`` names (asked at every round)."""
        self._protectors.append(source)

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            await self.trim_once()

    def surplus(self) -> list[ID]:
        """The peers a round would close now, in closing order."""
        conns = self.host.get_network().get_connections_map()
        excess = len(conns) - self.high
        if self.high <= 0 or excess <= 0:  # 0: trimming is off
            return []
        protected = self._protected()
        now = self.clock()
        ours = set(getattr(self.pubsub, "topic_ids", ()) or ())
        candidates: list[tuple[bool, float, ID]] = []
        for peer, peer_conns in conns.items():
            if peer in protected or any(_busy(c) or now - _opened_at(c, now) < self.grace for c in peer_conns):
                continue
            on_our_topics = any(peer in self.pubsub.peer_topics.get(t, ()) for t in ours)
            candidates.append((on_our_topics, min(_opened_at(c, now) for c in peer_conns), peer))
        candidates.sort(key=lambda c: (c[0], c[1]))
        self.stats.kept_busy = max(0, excess - len(candidates))
        return [peer for _, _, peer in candidates[:excess]]

    async def trim_once(self) -> int:
        """One round: close the surplus; returns how many peers were closed."""
        self.stats.rounds += 1
        closed = 0
        for peer in self.surplus():
            for conn in list(self.host.get_network().get_connections_map().get(peer, ())):
                with trio.move_on_after(5):
                    try:
                        await conn.close()
                    except Exception as exc:  # already closing, reset underneath us: it is gone either way
                        log.debug("closing the connection to %s: %r", peer, exc)
            closed += 1
        if closed:
            self.stats.closed += closed
            log.info("closed %d idle connection(s) over the %d-peer mark", closed, self.high)
        return closed

    def _protected(self) -> set[ID]:
        keep: set[ID] = set()
        for table in (getattr(self.gossipsub, "mesh", None), getattr(self.gossipsub, "fanout", None)):
            for peers in (table or {}).values():
                keep.update(peers)
        for source in self._protectors:
            keep.update(source())
        return keep


def _busy(conn: INetConn) -> bool:
    """A stream other than pubsub's and identify's is open on ``conn`` (or one is still negotiating)."""
    for stream in conn.get_streams():
        try:
            protocol = stream.get_protocol()
        except Exception:
            return True
        if not protocol or not str(protocol).startswith(IDLE_PROTOCOL_PREFIXES):
            return True
    return False


def _opened_at(conn: INetConn, default: float) -> float:
    """When py-libp2p made the connection (``SwarmConn._created_at``, wall clock); ``default`` if unknown."""
    created = getattr(conn, "_created_at", None)
    return float(created) if isinstance(created, (int, float)) else default
