"""Circuit relay v2 in-process on loopback (relay_hop.py, relay_client.py, paths.py).

A node that advertises no direct address reserves a slot on a relay found through the mesh (no relay is
configured anywhere), advertises a /p2p-circuit address, and a peer that knows only that address reaches it
through the relay; Noise authenticates the far end, so a relay that connects the circuit to another peer
only makes the dial fail. Limits: no reservation, no circuit; a full relay refuses; the byte budget ends a
circuit. Real NATs (namespaces) are in tests/netsim/test_nat_nodes.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from cocoon_node.mesh import Connectivity, ConnectivitySettings, Mesh, MeshSettings
from cocoon_node.mesh.paths import RELAYED, stream_path
from cocoon_node.mesh.relay_client import RelayDialError, dial_circuit
from cocoon_node.mesh.relay_hop import HopServer, RelayLimits
from tests.conftest import connectivity_host
from tests.waiting import wait_until

ECHO = TProtocol("/test/echo/1.0.0")


@asynccontextmanager
async def node(bootstrap: tuple[str, ...] = (), **settings: Any) -> AsyncIterator[tuple[Mesh, Connectivity]]:
    mesh_settings = MeshSettings(bootstrap=bootstrap, local_cluster=True, target_peers=2)
    conn_settings = ConnectivitySettings(hole_punching=False, relay_ping_interval=0.5, **settings)
    async with connectivity_host(mesh_settings, conn_settings) as (mesh, conn):

        async def echo(stream: Any) -> None:
            while data := await stream.read(65536):
                await stream.write(data)
            await stream.close()

        mesh.set_stream_handler(ECHO, echo)
        yield mesh, conn


def circuit(mesh: Mesh) -> list[str]:
    return [a for a in mesh.advertised_addrs() if "/p2p-circuit" in a]


async def echo_once(stream: Any, payload: bytes) -> bytes:
    await stream.write(payload)
    got = b""
    with trio.fail_after(10):
        while len(got) < len(payload):
            got += await stream.read(len(payload) - len(got))
    return got


async def test_private_node_is_reached_through_a_relay_it_found_itself() -> None:
    async with node(relay=True, reachability="public") as (relay, rc):
        boot = (relay.listen_addrs()[0],)
        async with node(boot, reachability="private", relay_reservations=2) as (worker, wc), \
                node(boot, reachability="private") as (requester, _):
            addrs = await wait_until(lambda: circuit(worker), timeout=20)
            assert addrs == [f"{relay.listen_addrs()[0]}/p2p-circuit/p2p/{worker.peer_id.to_base58()}"]
            assert worker.advertised_addrs() == addrs  # private: the circuit is all it announces
            assert requester.host is not None
            assert worker.peer_id not in requester.connected_peers()
            stream = await requester.new_stream(worker.peer_id, ECHO, worker.advertised_addrs())
            assert stream.muxed_conn.peer_id == worker.peer_id  # Noise authenticated the worker's key
            assert stream_path(stream) == RELAYED
            assert await echo_once(stream, b"x" * 200_000) == b"x" * 200_000
            await stream.close()
            assert rc.hop is not None
            summary = rc.hop.summary()
            assert summary["reservations"] == 1 and summary["bytes_relayed"] >= 400_000
            assert wc.relays is not None and wc.relays.circuits_accepted >= 1


class MisroutingHop(HopServer):
    """A rogue relay: every CONNECT goes to ``victim`` instead of the peer the dialler asked for."""

    victim: ID

    async def _connect(self, stream: Any, source: ID, msg: Any) -> None:
        msg.peer.id = self.victim.to_bytes()
        await super()._connect(stream, source, msg)


async def test_a_relay_cannot_pose_as_the_worker() -> None:
    async with node(relay=True, reachability="public") as (relay, rc):
        boot = (relay.listen_addrs()[0],)
        async with node(boot, reachability="private", relay_reservations=1) as (worker, _), \
                node(boot, reachability="private", relay_reservations=1) as (impostor, _), \
                node(boot, reachability="private") as (requester, _):
            await wait_until(lambda: circuit(worker) and circuit(impostor), timeout=20)
            assert relay.host is not None and requester.host is not None
            rogue = MisroutingHop(relay.host)
            rogue.victim = impostor.peer_id
            rogue.reservations = rc.hop.reservations if rc.hop else {}
            relay.host.set_stream_handler(TProtocol("/libp2p/circuit/relay/0.2.0/hop"), rogue.handle)
            with pytest.raises(Exception):  # noqa: B017 - the Noise upgrade fails, whatever py-libp2p calls it
                await dial_circuit(requester.host, circuit(worker)[0])
            assert worker.peer_id not in requester.connected_peers()
            assert rogue.stats["circuits_opened"] == 1  # the relay did connect, to the wrong peer


async def test_limits_no_reservation_full_relay_and_byte_budget() -> None:
    limits = RelayLimits(max_reservations=1, circuit_bytes=100_000)
    async with node(relay=True, reachability="public") as (relay, rc):
        assert rc.hop is not None
        rc.hop.limits = limits
        boot = (relay.listen_addrs()[0],)
        async with node(boot, reachability="private", relay_reservations=1) as (worker, _):
            await wait_until(lambda: circuit(worker), timeout=20)  # it holds the relay's only slot
            async with node(boot, reachability="private", relay_reservations=1) as (second, sc), \
                    node(boot, reachability="private") as (requester, _):
                assert requester.host is not None
                await wait_until(lambda: rc.hop is not None and rc.hop.stats["reservation_refused_full"] >= 1,
                                 timeout=20)
                assert circuit(second) == [] and sc.relays is not None and not sc.relays.held
                await limits_hold(relay, worker, second, requester, rc)


async def limits_hold(relay: Mesh, worker: Mesh, second: Mesh, requester: Mesh, rc: Connectivity) -> None:
    assert requester.host is not None
    # No reservation on this relay for `second`: the circuit is refused with NO_RESERVATION.
    fake = f"{relay.listen_addrs()[0]}/p2p-circuit/p2p/{second.peer_id.to_base58()}"
    with pytest.raises(RelayDialError, match="status 204"):
        await dial_circuit(requester.host, fake)
    # Over the byte budget the relay resets the circuit.
    stream = await requester.new_stream(worker.peer_id, ECHO, circuit(worker))
    with pytest.raises(Exception):  # noqa: B017 - a reset stream, whatever py-libp2p calls it
        with trio.fail_after(20):
            for _ in range(40):
                await echo_once(stream, b"y" * 10_000)
    await wait_until(lambda: rc.hop is not None and rc.hop.stats["circuit_bytes_exceeded"] >= 1, timeout=10)


async def test_bad_input_on_hop_and_stop_is_refused() -> None:
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, StopMessage
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeerId
    from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

    from cocoon_node.mesh.relay_hop import HOP_PROTOCOL, STOP_PROTOCOL

    async with node(relay=True, reachability="public") as (relay, rc):
        boot = (relay.listen_addrs()[0],)
        async with node(boot, reachability="private", relay_reservations=1) as (worker, wc), \
                node(boot, reachability="private") as (stranger, _):
            await wait_until(lambda: circuit(worker), timeout=20)
            assert stranger.host is not None and rc.hop is not None and wc.relays is not None
            # Junk on HOP: a MALFORMED status back, the relay carries on.
            hop = await stranger.host.new_stream(relay.peer_id, [HOP_PROTOCOL])
            await hop.write(b"\x05junk!")
            with trio.fail_after(10):
                reply = await read_delimited_msg(hop, HopMessage)
            assert reply.status == StatusCode.MALFORMED_MESSAGE and rc.hop.stats["malformed"] == 1
            # A STOP from a peer the worker holds no reservation with (a would-be relay): refused.
            await stranger.connect(worker.listen_addrs()[0])
            stop = await stranger.host.new_stream(worker.peer_id, [STOP_PROTOCOL])
            await write_delimited_msg(stop, StopMessage(type=StopMessage.CONNECT,
                                                        peer=PbPeerId(id=stranger.peer_id.to_bytes())))
            with trio.fail_after(10):
                answer = await read_delimited_msg(stop, StopMessage)
            assert answer.status == StatusCode.PERMISSION_DENIED and wc.relays.circuits_refused == 1


async def test_reservations_are_refreshed_and_circuits_end_at_their_duration() -> None:
    async with node(relay=True, reachability="public") as (relay, rc):
        assert rc.hop is not None
        rc.hop.limits = RelayLimits(reservation_ttl=2, circuit_duration=1)
        boot = (relay.listen_addrs()[0],)
        async with node(boot, reachability="private", relay_reservations=1) as (worker, wc), \
                node(boot, reachability="private") as (requester, _):
            await wait_until(lambda: circuit(worker), timeout=20)
            assert wc.relays is not None
            [held] = wc.relays.held.values()
            first = held.refreshed
            # Refreshed at half its lifetime, so the relay never lets it lapse.
            await wait_until(lambda: held.refreshed > first and rc.hop is not None
                             and rc.hop.stats["reserved"] >= 2, timeout=20)
            assert worker.peer_id in rc.hop.reservations
            stream = await requester.new_stream(worker.peer_id, ECHO, circuit(worker))
            assert await echo_once(stream, b"z" * 1000) == b"z" * 1000
            # The circuit's duration is a deadline, idle or not: the relay ends it.
            await wait_until(lambda: rc.hop is not None and rc.hop.stats["circuit_duration_exceeded"] >= 1,
                             timeout=20)
            assert not rc.hop.circuits
