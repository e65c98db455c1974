"""Circuit relay v2, client side: reservations for a node nobody can dial, and dialling through a relay.

A worker that reachability found ``private`` reserves a slot on one or two relays. Relays are found through
the mesh, never configured: any peer whose identify lists the HOP protocol is a candidate, connected ones
first, then ones the peerstore knows. Reservations are refreshed at half their lifetime; each relay is pinged
every ``ping_interval`` seconds, and one that misses ``ping_misses`` pings in a row (a partition leaves no
FIN to notice) or whose connection closes is dropped and replaced. The node advertises
``<relay address>/p2p/<relay>/p2p-circuit`` for each live reservation.

Incoming circuits (STOP) are accepted only from relays we hold a reservation with, and then upgraded like
any connection: Noise authenticates the dialler, so the relay stays a pipe.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import TProtocol
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, StopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeerId
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from cocoon_node.mesh.conns import addr_key, forget_dead_connections, is_relayed, live_connections
from cocoon_node.mesh.relay_hop import HOP_PROTOCOL

log = logging.getLogger(__name__)
PING_PROTOCOL = TProtocol("/ipfs/ping/1.0.0")


class RelayDialError(ConnectionError):
    """A circuit could not be opened (the relay's status code is in the message)."""


def circuit_parts(addr: str) -> tuple[str, ID]:
    """``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<dest>`` -> (relay address with /p2p, destination)."""
    relay, sep, rest = addr.partition("/p2p-circuit")
    if not sep or "/p2p/" not in relay or not rest.startswith("/p2p/"):
        raise ValueError(f"not a circuit address: {addr}")
    return relay, ID.from_base58(rest.removeprefix("/p2p/").split("/")[0])


def _circuit_ma(relay: ID, dest: ID) -> multiaddr.Multiaddr:
    return multiaddr.Multiaddr(f"/p2p/{relay.to_base58()}/p2p-circuit/p2p/{dest.to_base58()}")


async def dial_circuit(host: IHost, addr: str, *, timeout: float = 10.0) -> INetConn:
    """Open a connection to ``addr``'s destination through its relay; Noise checks the destination's key."""
    relay_addr, dest = circuit_parts(addr)
    info = info_from_p2p_addr(multiaddr.Multiaddr(relay_addr))
    network = host.get_network()
    if not live_connections(host, info.peer_id):
        forget_dead_connections(host, info.peer_id)
        # py-libp2p refuses to dial a peer whose last dial failed for a while; a relay is worth another try.
        unblock = getattr(network, "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
    with trio.fail_after(timeout):
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [HOP_PROTOCOL])
        try:
            await write_delimited_msg(stream, HopMessage(type=HopMessage.CONNECT, peer=PbPeerId(id=dest.to_bytes())))
            resp = await read_delimited_msg(stream, HopMessage)
            if resp.type != HopMessage.STATUS or resp.status != StatusCode.OK:
                raise RelayDialError(f"relay {info.peer_id} refused the circuit to {dest}: status {resp.status}")
            raw = RawConnection(stream=stream, initiator=True, connection_type=ConnectionType.RELAYED,
                                addresses=[_circuit_ma(info.peer_id, dest)])
            return await host.upgrade_outbound_connection(raw, dest)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception:
                    pass
            raise


@dataclass
class Held:
    relay: ID
    relay_addr: str              # where we reached the relay (no /p2p part)
    expires: float
    since: float
    refreshed: float
    misses: int = 0


@dataclass
class RelayEvents:
    reserved: list[dict[str, Any]] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)


class RelayClient:
    """Keeps up to ``slots`` reservations while ``wanted()`` says the node needs them."""

    def __init__(self, host: IHost, *, wanted: Callable[[], bool], slots: int = 2, ping_interval: float = 1.5,
                 ping_timeout: float = 2.5, ping_misses: int = 3, retry_after: float = 5.0) -> None:
        self.host = host
        self.wanted = wanted
        self.slots = slots
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.ping_misses = ping_misses
        self.retry_after = retry_after
        self.held: dict[ID, Held] = {}
        self.events = RelayEvents()
        self._failed: dict[ID, float] = {}
        self._pinging: set[ID] = set()
        # Relays seen so far and where: py-libp2p's peerstore may forget a peer's protocols and addresses once
        # its connection is gone, and a relay that was cut off must still be found again after the heal.
        self._known: dict[ID, list[multiaddr.Multiaddr]] = {}
        self._listeners: list[Callable[[], None]] = []
        self.circuits_accepted = 0
        self.circuits_refused = 0

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    def circuit_addrs(self) -> list[str]:
        """Our addresses through each live reservation, oldest first, without our own /p2p part."""
        return [f"{h.relay_addr}/p2p/{h.relay.to_base58()}/p2p-circuit"
                for h in sorted(self.held.values(), key=lambda h: h.since)]

    # ----- STOP: a circuit arrives ----------------------------------------------------------------------
    async def handle_stop(self, stream: INetStream) -> None:
        relay = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(10):
                msg = await read_delimited_msg(stream, StopMessage)
            if relay not in self.held or msg.type != StopMessage.CONNECT or not msg.HasField("peer"):
                self.circuits_refused += 1
                await write_delimited_msg(stream, StopMessage(type=StopMessage.STATUS,
                                                              status=to_proto_status(StatusCode.PERMISSION_DENIED)))
                await stream.close()
                return
            source = ID(msg.peer.id)
            ok = StopMessage(type=StopMessage.STATUS, status=to_proto_status(StatusCode.OK))
            await write_delimited_msg(stream, ok)
            ma = _circuit_ma(relay, source)
            raw = RawConnection(stream=stream, initiator=False, connection_type=ConnectionType.RELAYED,
                                addresses=[ma])
            muxed = await self.host.upgrade_inbound_connection(raw, ma)
            self.circuits_accepted += 1
            if muxed.peer_id != source:
                log.info("circuit via %s announced %s but authenticated %s", relay, source, muxed.peer_id)
            for conn in self.host.get_network().get_connections(muxed.peer_id):  # tag it, as py-libp2p does
                tag = getattr(conn, "set_transport_info", None)
                if getattr(conn, "muxed_conn", None) is muxed and tag is not None:
                    tag([ma], ConnectionType.RELAYED)
        except Exception as exc:
            log.debug("incoming circuit via %s failed: %s", relay, exc)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception:
                    pass

    # ----- reservations --------------------------------------------------------------------------------------
    def _candidates(self) -> list[ID]:
        store = self.host.get_peerstore()
        for peer in store.peer_ids():
            try:
                if peer != self.host.get_id() and store.supports_protocols(peer, [str(HOP_PROTOCOL)]):
                    addrs = [a for a in store.addrs(peer) if "/p2p-circuit" not in str(a)]
                    self._known[peer] = addrs or self._known.get(peer, [])
            except Exception:
                continue
        connected: list[ID] = []
        known: list[ID] = []
        now = time.monotonic()
        for peer in self._known:
            if peer in self.held or self._failed.get(peer, 0) > now:
                continue
            conns = live_connections(self.host, peer)
            (connected if conns and not all(is_relayed(c) for c in conns) else known).append(peer)
        random.shuffle(connected)
        random.shuffle(known)
        return connected + known

    def _relay_addr(self, relay: ID) -> str | None:
        for conn in live_connections(self.host, relay):
            if is_relayed(conn):
                continue
            for addr in conn.get_transport_addresses():
                key = addr_key(addr)
                if key.startswith(("/ip4/", "/ip6/")):
                    return key
        return None

    async def reserve(self, relay: ID) -> bool:
        try:
            with trio.fail_after(10):
                network = self.host.get_network()
                if not live_connections(self.host, relay):
                    forget_dead_connections(self.host, relay)
                    unblock = getattr(network, "unblock_peer", None)
                    if unblock is not None:  # a relay cut off for a while must get another chance at once
                        unblock(relay)
                    addrs = self._known.get(relay) or self.host.get_peerstore().addrs(relay)
                    await self.host.connect(PeerInfo(relay, addrs))
                stream = await self.host.new_stream(relay, [HOP_PROTOCOL])
                try:
                    await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
                    resp = await read_delimited_msg(stream, HopMessage)
                finally:
                    await stream.close()
        except Exception as exc:
            log.info("reservation on %s failed: %r", relay, exc)
            self._failed[relay] = time.monotonic() + self.retry_after
            return False
        addr = self._relay_addr(relay)
        if resp.status != StatusCode.OK or not resp.HasField("reservation") or addr is None:
            log.info("relay %s refused a reservation (status %s)", relay, resp.status)
            self._failed[relay] = time.monotonic() + self.retry_after
            return False
        now = time.time()
        fresh = relay not in self.held
        held = self.held.get(relay) or Held(relay, addr, 0.0, now, now)
        held.expires, held.refreshed, held.misses = float(resp.reservation.expire), now, 0
        self.held[relay] = held
        if fresh:
            log.info("reserved a relay slot on %s (%s), expires in %.0f s", relay, addr, held.expires - now)
            self.events.reserved.append({"relay": relay.to_base58(), "at": now})
            self._changed()
        return True

    def _drop(self, relay: ID, why: str) -> None:
        if self.held.pop(relay, None) is not None:
            log.info("relay %s lost: %s", relay, why)
            self.events.lost.append({"relay": relay.to_base58(), "at": time.time(), "why": why})
            self._failed[relay] = time.monotonic() + self.retry_after
            self._changed()

    async def _ping(self, relay: ID) -> bool:
        try:
            with trio.fail_after(self.ping_timeout):
                stream = await self.host.new_stream(relay, [PING_PROTOCOL])
                payload = os.urandom(32)
                try:
                    await stream.write(payload)
                    echo = b""
                    while len(echo) < 32:
                        chunk = await stream.read(32 - len(echo))
                        if not chunk:
                            break
                        echo += chunk
                finally:
                    await stream.close()
            return echo == payload
        except Exception:
            return False

    async def _ping_in_background(self, relay: ID, done: trio.Event, result: list[bool]) -> None:
        try:
            result.append(await self._ping(relay))
        finally:
            self._pinging.discard(relay)
            done.set()

    async def _disconnect(self, relay: ID) -> None:
        with trio.move_on_after(10):
            try:
                await self.host.disconnect(relay)
            except Exception:
                pass

    async def _check(self, relay: ID, background: trio.Nursery) -> None:
        """Ping ``relay``; a ping still pending from last time is a miss too. Pings run in ``background``:
        on a connection cut without a FIN, py-libp2p can block far beyond any timeout in its (shielded) stream
        cleanup while the TCP send buffer is full, and that must not stall the watch over the other relays."""
        held = self.held.get(relay)
        if held is None:
            return
        if not live_connections(self.host, relay):
            self._drop(relay, "connection closed")
            return
        if relay in self._pinging:
            held.misses += 1
        else:
            done = trio.Event()
            result: list[bool] = []
            self._pinging.add(relay)
            background.start_soon(self._ping_in_background, relay, done, result)
            with trio.move_on_after(self.ping_timeout):
                await done.wait()
            if result and result[0]:
                held.misses = 0
            else:
                held.misses += 1
        if held.misses >= self.ping_misses:
            self._drop(relay, f"{held.misses} pings unanswered")
            background.start_soon(self._disconnect, relay)
            return
        if held.expires - time.time() < (held.expires - held.refreshed) / 2:
            background.start_soon(self.reserve, relay)

    async def run(self) -> None:
        async with trio.open_nursery() as background:
            while True:
                if not self.wanted():
                    for relay in list(self.held):
                        self._drop(relay, "not needed (reachable directly)")
                else:
                    async with trio.open_nursery() as nursery:
                        for relay in list(self.held):
                            nursery.start_soon(self._check, relay, background)
                    for relay in self._candidates():
                        if len(self.held) >= self.slots:
                            break
                        await self.reserve(relay)
                await trio.sleep(self.ping_interval)

    def summary(self) -> dict[str, Any]:
        now = time.time()
        return {
            "wanted": self.wanted(), "slots": self.slots,
            "reservations": [{"relay": h.relay.to_base58(), "addr": h.relay_addr,
                              "expires_in_s": round(h.expires - now, 1), "since": round(h.since, 3)}
                             for h in self.held.values()],
            "events": {"reserved": self.events.reserved[-20:], "lost": self.events.lost[-20:]},
            "circuits_accepted": self.circuits_accepted, "circuits_refused": self.circuits_refused,
        }
