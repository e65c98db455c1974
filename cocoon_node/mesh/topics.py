"""Finding the peers of a model's topic: DHT provider records as a rendezvous.

With a topic per model, a node subscribes only to the models it serves or buys, so its few random
connections may hold nobody on its model's topic, and GossipSub can only form a topic mesh among connected
subscribers. Workers therefore advertise themselves as providers of the topic's rendezvous key (a sha256
multihash, which py-libp2p servers accept for FIND_NODE and ADD_PROVIDER, unlike our record keys), and a node
whose topic has no connected peer looks the providers up and dials a few; once in the topic mesh,
GossipSub's peer exchange and subscriptions do the rest. The lookup uses py-libp2p's own provider walk
(slow, but it runs only while a topic has no peer, with a growing pause between attempts).
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import TYPE_CHECKING

import trio
from libp2p.peer.peerinfo import PeerInfo

if TYPE_CHECKING:
    from cocoon_node.mesh.host import Mesh

log = logging.getLogger(__name__)


def rendezvous_key(topic: str) -> str:
    """The provider key of a topic: hex of a sha256 multihash (0x12, 0x20, digest)."""
    return "1220" + hashlib.sha256(b"cocoon-rendezvous:" + topic.encode()).hexdigest()


class TopicRendezvous:
    """Advertise the topics we serve; find peers for the topics we want while we have none."""

    def __init__(self, mesh: Mesh, *, provide_interval: float = 600.0, seek_check: float = 2.0,
                 seek_backoff: tuple[float, float] = (2.0, 120.0), max_dials: int = 3,
                 lookup_timeout: float = 30.0) -> None:
        self._mesh = mesh
        self.provide_interval = provide_interval
        self.seek_check = seek_check
        self.seek_backoff = seek_backoff
        self.max_dials = max_dials
        self.lookup_timeout = lookup_timeout
        self.provided = 0
        self.lookups = 0
        self.dialled = 0

    async def provide(self, topic: str) -> None:
        """Advertise ``topic`` now and every ``provide_interval`` (provider records outlive us: 48 h)."""
        dht = self._mesh.dht
        assert dht is not None
        await trio.sleep(random.uniform(0.5, 2.0))  # after the bootstrap dials filled the routing table a bit
        while True:
            with trio.move_on_after(self.lookup_timeout):
                try:
                    if await dht.provide(rendezvous_key(topic)):
                        self.provided += 1
                except* Exception as group:
                    log.debug("advertising %s failed: %s", topic, group.exceptions)
            await trio.sleep(self.provide_interval * random.uniform(0.8, 1.2))

    async def seek(self, topic: str) -> None:
        """While no connected peer is on ``topic``, look its providers up and dial a few of them."""
        dht, mesh = self._mesh.dht, self._mesh
        assert dht is not None
        backoff = self.seek_backoff[0]
        while True:
            if mesh.topic_peers(topic) > 0:
                backoff = self.seek_backoff[0]
                await trio.sleep(self.seek_check)
                continue
            self.lookups += 1
            providers: list[PeerInfo] = []
            with trio.move_on_after(self.lookup_timeout):
                try:
                    providers = await dht.find_providers(rendezvous_key(topic), count=20)
                except* Exception as group:
                    log.debug("looking up providers of %s failed: %s", topic, group.exceptions)
            me = mesh.peer_id
            fresh = [p for p in providers if p.peer_id != me and p.peer_id not in mesh.connected_peers() and p.addrs]
            random.shuffle(fresh)
            async with trio.open_nursery() as nursery:
                for info in fresh[: self.max_dials]:
                    nursery.start_soon(self._dial, info)
            log.info("topic %s had no peers: %d providers found, dialled %d", topic, len(providers),
                     min(len(fresh), self.max_dials))
            await trio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.seek_backoff[1])

    async def _dial(self, info: PeerInfo) -> None:
        host = self._mesh.host
        assert host is not None
        with trio.move_on_after(self._mesh.settings.dial_timeout):
            try:
                await host.connect(info)
                self.dialled += 1
            except* Exception as group:
                log.debug("dialling provider %s failed: %s", info.peer_id, group.exceptions)
