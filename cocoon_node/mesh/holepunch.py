"""Hole punching: py-libp2p's DCUtR upgrades relayed connections to direct ones where both NATs allow.

DCUtR (``/libp2p/dcutr``) runs over a relayed connection: the two peers exchange the addresses they are seen
at, then both dial at once from their listen ports (TCP simultaneous open). Through endpoint-independent NATs
that meets in the middle; through a symmetric NAT the outside port differs per destination, every dial
misses, and the connection stays relayed (py-libp2p gives up after three attempts per peer). New streams
prefer the direct connection; py-libp2p closes the relayed one after a grace period.

Two adjustments, both here rather than in py-libp2p:

* The host advertises only addresses reachability confirmed (``reach.py``), so a NAT'd node's own listen
  port would be invisible to DCUtR, which reads it from ``host.get_addrs()``. DCUtR gets a view of the host
  whose ``get_addrs()`` lists the raw listen and observed addresses, everything else passes through.
* Connections a punch opened are marked, so paths say ``hole-punched`` instead of ``direct``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from multiaddr import Multiaddr

from cocoon_node.mesh.conns import is_relayed
from cocoon_node.mesh.paths import mark_hole_punched

log = logging.getLogger(__name__)


class _UnfilteredAddrs:
    """The host as DCUtR should see it: every other attribute (and assignment) goes to the real host."""

    def __init__(self, host: IHost) -> None:
        object.__setattr__(self, "_host", host)

    def get_addrs(self) -> list[Multiaddr]:
        host = object.__getattribute__(self, "_host")
        out = list(host.get_transport_addrs())
        manager = getattr(host, "_observed_addr_manager", None)
        if manager is not None:
            out += [a for a in manager.addrs() if str(a) not in {str(b) for b in out}]
        return [a.encapsulate(Multiaddr(f"/p2p/{host.get_id()}")) for a in out]

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_host"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_host"), name, value)


class HolePuncher(DCUtRProtocol):
    """py-libp2p's DCUtR service, counting outcomes and marking the connections it opened."""

    def __init__(self, host: IHost, *, dial_timeout: int = 5) -> None:
        super().__init__(_UnfilteredAddrs(host), dial_timeout=dial_timeout)  # type: ignore[arg-type]
        self.outcomes: Counter[str] = Counter()
        self.by_peer: dict[str, str] = {}
        self.on_punched: list[Callable[[ID], None]] = []  # e.g. drop warm streams still on the relayed path

    def _direct_muxed(self, peer_id: ID) -> set[Any]:
        conns = self.host.get_network().get_connections(peer_id)
        return {c.muxed_conn for c in conns if not is_relayed(c)}

    async def _perform_hole_punch(self, peer_id: ID, addrs: list[Multiaddr], as_responder: bool = False) -> bool:
        before = self._direct_muxed(peer_id)
        ok = await super()._perform_hole_punch(peer_id, addrs, as_responder=as_responder)
        fresh = self._direct_muxed(peer_id) - before
        for muxed in fresh:
            mark_hole_punched(muxed)
        if ok and fresh:
            for callback in self.on_punched:
                callback(peer_id)
        outcome = "punched" if ok and fresh else "direct_already" if ok else "failed"
        self.outcomes[outcome] += 1
        self.by_peer[peer_id.to_base58()] = outcome
        log.info("hole punch with %s: %s", peer_id, outcome)
        return ok

    def summary(self) -> dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "by_peer": dict(list(self.by_peer.items())[-50:])}
