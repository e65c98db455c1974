"""Circuit relay v2, relay side (``--relay``): reservations and circuits within limits sized for inference.

Our own HOP handler on py-libp2p's protobuf messages (``/libp2p/circuit/relay/0.2.0/hop``, the libp2p spec),
not py-libp2p's ``CircuitV2Protocol``: that one keys its live circuits by peer, so when two requesters use one
worker through it, the first circuit to end closes the other's streams; and its duration cap is only checked
when data moves. Here every circuit owns its two streams, the byte budget is shared by both directions, and the
duration is a deadline that also ends idle circuits.

A relay only forwards bytes: the two ends run Noise over the circuit, so it can neither read nor alter the
traffic, and it cannot pose as the worker (the requester's Noise handshake checks the worker's key).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Limit, Reservation, StopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeerId
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.stream_muxer.exceptions import MuxedStreamError

from cocoon_node.mesh.conns import addr_key, is_relayed, live_connections

log = logging.getLogger(__name__)

HOP_PROTOCOL = TProtocol("/libp2p/circuit/relay/0.2.0/hop")
STOP_PROTOCOL = TProtocol("/libp2p/circuit/relay/0.2.0/stop")
_END = (EOFError, StreamError, MuxedStreamError)
CHUNK = 64 * 1024


@dataclass(frozen=True)
class RelayLimits:
    """What one relay grants. A chat completion of 4,096 tokens is ~0.5 MB of frames over a circuit; a circuit
    also carries the pair's gossip and many requests in a row (warm streams), so 64 MiB and 30 minutes per
    circuit let a requester work for a long while before it simply dials a new circuit."""

    max_reservations: int = 128
    max_reservations_per_ip: int = 8
    reservation_ttl: int = 600            # seconds; clients refresh well before
    max_circuits: int = 256
    max_circuits_per_peer: int = 32       # per destination: a busy worker serves many requesters at once
    circuit_bytes: int = 64 << 20         # both directions together
    circuit_duration: int = 1800          # seconds, idle or not

    def problems(self) -> list[str]:
        return [f"relay limit {k} must be positive" for k, v in vars(self).items() if v <= 0]


@dataclass
class _Reservation:
    peer: ID
    ip: str
    expires: float


def _status(code: StatusCode) -> Any:
    return to_proto_status(code)


class HopServer:
    """Serves RESERVE and CONNECT on the HOP protocol; :meth:`summary` feeds ``cocoon-node status``."""

    def __init__(self, host: IHost, limits: RelayLimits | None = None, *, clock: Any = time.time) -> None:
        self.host = host
        self.limits = limits or RelayLimits()
        self._clock = clock
        self.reservations: dict[ID, _Reservation] = {}
        self.circuits: dict[int, tuple[ID, ID, float]] = {}   # id -> (source, destination, started)
        self._next = 0
        self.stats: Counter[str] = Counter()
        self.bytes_relayed = 0

    # ----- entry ----------------------------------------------------------------------------------------
    async def handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            if is_relayed(stream.muxed_conn):  # the spec: no reservations or circuits over circuits
                await self._reply(stream, StatusCode.PERMISSION_DENIED, "over_relayed_connection")
                return
            try:
                with trio.fail_after(10):
                    msg = await read_delimited_msg(stream, HopMessage)
            except Exception:
                await self._reply(stream, StatusCode.MALFORMED_MESSAGE, "malformed")
                return
            if msg.type == HopMessage.RESERVE:
                await self._reserve(stream, peer)
            elif msg.type == HopMessage.CONNECT and msg.HasField("peer"):
                await self._connect(stream, peer, msg)
            else:
                await self._reply(stream, StatusCode.UNEXPECTED_MESSAGE, "unexpected_message")
        except Exception as exc:  # a vanished peer ends its own exchange, never the relay
            log.debug("hop exchange with %s failed: %s", peer, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass

    async def _reply(self, stream: INetStream, code: StatusCode, counter: str, **fields: Any) -> None:
        self.stats[counter] += 1
        with trio.move_on_after(5):
            await write_delimited_msg(stream, HopMessage(type=HopMessage.STATUS, status=_status(code), **fields))

    def _limit(self) -> Limit:
        return Limit(duration=self.limits.circuit_duration, data=self.limits.circuit_bytes)

    # ----- reservations -----------------------------------------------------------------------------------
    def _live_reservation(self, peer: ID) -> _Reservation | None:
        res = self.reservations.get(peer)
        if res is None:
            return None
        if res.expires <= self._clock() or not live_connections(self.host, peer):
            del self.reservations[peer]  # expired, or the peer left (a reservation lives with its connection)
            return None
        return res

    async def _reserve(self, stream: INetStream, peer: ID) -> None:
        remote = stream.get_remote_address()
        ip = remote[0] if remote else "?"
        for other in list(self.reservations):
            self._live_reservation(other)
        if peer not in self.reservations:
            if len(self.reservations) >= self.limits.max_reservations:
                await self._reply(stream, StatusCode.RESERVATION_REFUSED, "reservation_refused_full")
                return
            if sum(1 for r in self.reservations.values() if r.ip == ip) >= self.limits.max_reservations_per_ip:
                await self._reply(stream, StatusCode.RESERVATION_REFUSED, "reservation_refused_ip")
                return
        expires = self._clock() + self.limits.reservation_ttl
        self.reservations[peer] = _Reservation(peer, ip, expires)
        addrs = [a.to_bytes() for a in self.host.get_addrs() if "/p2p-circuit" not in str(a)
                 and addr_key(a).split("/")[2] not in ("0.0.0.0", "::")]
        await self._reply(stream, StatusCode.OK, "reserved",
                          reservation=Reservation(expire=int(expires), addrs=addrs), limit=self._limit())

    # ----- circuits ------------------------------------------------------------------------------------------
    async def _connect(self, stream: INetStream, source: ID, msg: HopMessage) -> None:
        try:
            dest = ID(msg.peer.id)
        except Exception:
            await self._reply(stream, StatusCode.MALFORMED_MESSAGE, "malformed")
            return
        if self._live_reservation(dest) is None:
            await self._reply(stream, StatusCode.NO_RESERVATION, "no_reservation")
            return
        if len(self.circuits) >= self.limits.max_circuits:
            await self._reply(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED, "circuits_full")
            return
        if sum(1 for _, d, _ in self.circuits.values() if d == dest) >= self.limits.max_circuits_per_peer:
            await self._reply(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED, "circuits_full_for_peer")
            return
        try:
            with trio.fail_after(10):
                dst = await self.host.new_stream(dest, [STOP_PROTOCOL])
                await write_delimited_msg(dst, StopMessage(type=StopMessage.CONNECT, peer=PbPeerId(
                    id=source.to_bytes()), limit=self._limit()))
                answer = await read_delimited_msg(dst, StopMessage)
        except Exception as exc:
            log.debug("stop stream to %s failed: %s", dest, exc)
            await self._reply(stream, StatusCode.CONNECTION_FAILED, "connection_failed")
            return
        if answer.type != StopMessage.STATUS or answer.status != StatusCode.OK:
            await self._reply(stream, StatusCode.CONNECTION_FAILED, "refused_by_destination")
            with trio.move_on_after(2):
                await dst.reset()
            return
        await self._reply(stream, StatusCode.OK, "circuits_opened", limit=self._limit())
        self._next += 1
        key = self._next
        self.circuits[key] = (source, dest, self._clock())
        try:
            await self._pump(stream, dst)
        finally:
            del self.circuits[key]
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for s in (stream, dst):
                    try:
                        await s.reset()
                    except Exception:
                        pass

    async def _pump(self, a: INetStream, b: INetStream) -> None:
        """Copy both ways until both ends finish, the byte budget is spent or the duration is over."""
        budget = [self.limits.circuit_bytes]
        with trio.move_on_after(self.limits.circuit_duration) as deadline:
            async with trio.open_nursery() as nursery:
                async def copy(src: INetStream, dst: INetStream) -> None:
                    while True:
                        try:
                            data = await src.read(CHUNK)
                        except _END:
                            data = b""
                        if not data:
                            try:
                                await dst.close()  # half-close: the other direction may still have bytes
                            except Exception:
                                pass
                            return
                        budget[0] -= len(data)
                        if budget[0] < 0:
                            self.stats["circuit_bytes_exceeded"] += 1
                            nursery.cancel_scope.cancel()
                            return
                        self.bytes_relayed += len(data)
                        try:
                            await dst.write(data)
                        except Exception:
                            nursery.cancel_scope.cancel()
                            return

                nursery.start_soon(copy, a, b)
                nursery.start_soon(copy, b, a)
        if deadline.cancelled_caught:
            self.stats["circuit_duration_exceeded"] += 1

    def summary(self) -> dict[str, Any]:
        for peer in list(self.reservations):
            self._live_reservation(peer)
        return {"reservations": len(self.reservations), "circuits": len(self.circuits),
                "bytes_relayed": self.bytes_relayed, "limits": vars(self.limits), "counters": dict(self.stats)}
