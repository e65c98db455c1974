"""NAT traversal for one node: reachability, relay service, relay reservations, hole punching, path dialling.

Wiring (see each module for the why): every node answers dial-back requests and learns its own reachability
(``reach.py``); the host advertises only confirmed addresses plus, for a node that holds relay reservations,
its ``/p2p-circuit`` addresses (``relay_client.py``); ``--relay`` nodes serve circuits (``relay_hop.py``);
every node dials announced addresses direct-first, relay-second (``paths.py``) and lets DCUtR upgrade relayed
connections (``holepunch.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.tools.anyio_service import background_trio_service

from cocoon_node.mesh.holepunch import HolePuncher
from cocoon_node.mesh.host import Mesh
from cocoon_node.mesh.paths import PathDialer, peer_path
from cocoon_node.mesh.reach import BACK_PROTOCOL_ID, PRIVATE, PROTOCOL_ID, DialBackServer, ReachabilityProber
from cocoon_node.mesh.relay_client import RelayClient
from cocoon_node.mesh.relay_hop import HOP_PROTOCOL, STOP_PROTOCOL, HopServer, RelayLimits

log = logging.getLogger(__name__)
# trio's own TaskStatus is shadowed by the old trio-typing stubs py-libp2p pulls in.
TaskStatus = Any


@dataclass(frozen=True)
class ConnectivitySettings:
    reachability: str = "auto"           # auto | public | private (see reach.py)
    relay: bool = False                  # serve circuit relay v2 (HOP)
    relay_reservations: int = 0          # relays to reserve on while private (workers: 2)
    hole_punching: bool = True
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    recheck_interval: float = 300.0
    relay_ping_interval: float = 1.5


class Connectivity:
    """Owns the NAT-traversal services of one mesh; :meth:`install` before ``mesh.start()``, :meth:`run` after."""

    def __init__(self, mesh: Mesh, settings: ConnectivitySettings) -> None:
        self.mesh = mesh
        self.settings = settings
        self.prober: ReachabilityProber | None = None
        self.server: DialBackServer | None = None
        self.hop: HopServer | None = None
        self.relays: RelayClient | None = None
        self.puncher: HolePuncher | None = None
        self.dialer: PathDialer | None = None
        self._listeners: list[Callable[[], None]] = []
        self._upgrades: list[Callable[[ID], None]] = []

    def install(self) -> None:
        self.mesh.address_filter = self._advertise
        self.mesh.circuit_addrs = self._circuit_addrs
        self.mesh.dialer = self._connect

    def on_change(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs whenever the advertised addresses change (workers re-announce at once)."""
        self._listeners.append(callback)

    def on_upgrade(self, callback: Callable[[ID], None]) -> None:
        """``callback(peer)`` runs when a hole punch gave ``peer`` a direct connection."""
        self._upgrades.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    def _advertise(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        return list(candidates) if self.prober is None else self.prober.advertised(candidates)

    def _circuit_addrs(self) -> list[str]:
        me = self.mesh.peer_id.to_base58()
        return [f"{a}/p2p/{me}" for a in self.relays.circuit_addrs()] if self.relays is not None else []

    async def _connect(self, peer: ID, addrs: Sequence[str]) -> None:
        assert self.dialer is not None
        await self.dialer.connect(peer, addrs)

    def relay_wanted(self) -> bool:
        return self.prober is not None and self.prober.status == PRIVATE and self.settings.relay_reservations > 0

    async def run(self, *, task_status: TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        host = self.mesh.host
        assert host is not None, "start the mesh first"
        s = self.settings
        self.dialer = PathDialer(host)
        self.server = DialBackServer(host)
        self.prober = ReachabilityProber(host, mode=s.reachability, recheck_interval=s.recheck_interval)
        self.prober.on_change(self._changed)
        host.set_stream_handler(PROTOCOL_ID, self.server.handle)
        host.set_stream_handler(BACK_PROTOCOL_ID, self.prober.handle_back)
        if s.relay:
            self.hop = HopServer(host, s.relay_limits)
            self.mesh.protect(lambda: list(self.hop.reservations) if self.hop is not None else [])
            host.set_stream_handler(HOP_PROTOCOL, self.hop.handle)
        if s.relay_reservations > 0:
            self.relays = RelayClient(host, wanted=self.relay_wanted, slots=s.relay_reservations,
                                      ping_interval=s.relay_ping_interval)
            self.mesh.protect(lambda: list(self.relays.held) if self.relays is not None else [])
            self.relays.on_change(self._changed)
            host.set_stream_handler(STOP_PROTOCOL, self.relays.handle_stop)
        async with AsyncExitStack() as stack:
            if s.hole_punching:
                self.puncher = HolePuncher(host)
                self.puncher.on_punched = self._upgrades  # shared: roles register later
                await stack.enter_async_context(background_trio_service(self.puncher))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.prober.run)
                if self.relays is not None:
                    nursery.start_soon(self.relays.run)
                task_status.started()

    def path_to(self, peer: ID) -> str | None:
        return peer_path(self.mesh.host, peer) if self.mesh.host is not None else None

    def summary(self) -> dict[str, Any]:
        return {
            "reachability": self.prober.summary() if self.prober else None,
            "advertised": self.mesh.advertised_addrs() if self.mesh.host else [],
            "relay_service": self.hop.summary() if self.hop else None,
            "relay_client": self.relays.summary() if self.relays else None,
            "hole_punching": self.puncher.summary() if self.puncher else None,
            "dials": dict(self.dialer.dials) if self.dialer else {},
        }
