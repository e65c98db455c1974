"""Reachability by dial-back: which of our addresses can others dial? (wire format: protocols/dialback.toml)

A node behind a NAT listens on a private address nobody outside can reach. Announcing it would send every
requester into a dial that hangs; announcing nothing would leave a public node unreachable. So a node asks
peers to dial it back (:class:`DialBackServer` answers such requests on every node) and advertises only the
addresses that a dial-back actually reached (:meth:`ReachabilityProber.advertised`, the host's address
factory). Why our own protocol and not py-libp2p's AutoNAT: see the header of protocols/dialback.toml.

The verdict: ``public`` once at least one address was reached from ``needed`` distinct servers (two when
two or more answer), ``private`` when servers answered and none reached us in ``PRIVATE_AFTER`` checks in a
row (one failed round is weak evidence: a busy server, or a busy us, as when 97 nodes start against one seed;
AutoNAT asks for the same kind of confidence), ``unknown`` before that. It
is re-checked when the candidate addresses change, while unknown whenever new peers connect, and every
``recheck_interval`` seconds otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from cocoon_node.mesh.conns import (
    addr_key,
    dialable_ip_port,
    is_relayed,
    live_connections,
    open_stream_on,
)
from cocoon_node.mesh.ratelimit import PeerRateLimit
from cocoon_node.wire import FrameError, FrameStream, load_protocol
from cocoon_node.wire.messages.dialback import (
    CODEC,
    DialBack,
    DialBackOk,
    DialRequest,
    DialResponse,
    DialResult,
)

log = logging.getLogger(__name__)

_PROTO = load_protocol("dialback")
PROTOCOL_ID = TProtocol(_PROTO.meta["id"])
BACK_PROTOCOL_ID = TProtocol(_PROTO.meta["back_id"])
MAX_FRAME = int(_PROTO.meta["max_frame_bytes"])
MAX_DIALS = int(_PROTO.meta["max_dials"])
DIAL_TIMEOUT = float(_PROTO.meta["dial_timeout_s"])
RATE_PER_MINUTE = int(_PROTO.meta["rate_per_minute"])
MAX_CONCURRENT = int(_PROTO.meta["max_concurrent"])
MAX_ADDR_BYTES = 256

UNKNOWN, PUBLIC, PRIVATE = "unknown", "public", "private"
# Refusals of a whole request that say nothing about our addresses (the server's own state, or how we reached
# it): a server answering only these did not answer the question, and its answer must not make us private.
PRIVATE_AFTER = 2  # checks in a row that reached none of our addresses before we call ourselves private
SERVER_REFUSALS = frozenset({"busy", "rate limited", "request over a relayed connection", "no observed address"})
_MAX_REASON_BYTES = 128  # DialResult.reason's bound, in UTF-8 bytes


def _reason(text: str) -> str:
    """Cut a reason to the frame's byte bound without splitting a character (errors may quote anything)."""
    return text.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
MODES = ("auto", "public", "private")


class DialBackServer:
    """Answers dial-back requests: dials the asker back on fresh connections, within the protocol's limits."""

    def __init__(self, host: IHost, *, dial_timeout: float = DIAL_TIMEOUT, max_dials: int = MAX_DIALS,
                 rate_per_minute: int = RATE_PER_MINUTE, max_concurrent: int = MAX_CONCURRENT) -> None:
        self.host = host
        self.dial_timeout = dial_timeout
        self.max_dials = max_dials
        self.rate_per_minute = rate_per_minute
        self._slots = trio.Semaphore(max_concurrent)
        self._rate = PeerRateLimit(rate_per_minute)
        self.served = 0
        self.refused: dict[str, int] = {}

    async def handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        frames = FrameStream(stream, CODEC)
        try:
            with trio.fail_after(10):
                request = await frames.receive()
            if not isinstance(request, DialRequest):
                raise FrameError("expected a dial_request")
            results, observed = await self._answer(stream, peer, request)
            with trio.fail_after(10):
                await frames.send(DialResponse(observed=observed, results=results))
        except (FrameError, trio.TooSlowError) as exc:
            self._count("bad_request")
            log.debug("dial-back request from %s dropped: %s", peer, exc)
        except Exception as exc:  # a peer vanishing mid-exchange is its problem, never ours
            log.debug("dial-back exchange with %s failed: %s", peer, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass

    def _count(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


    async def _answer(self, stream: INetStream, peer: ID, request: DialRequest
                      ) -> tuple[list[DialResult], str]:
        addrs = [a for a in request.addrs if len(a.encode()) <= MAX_ADDR_BYTES]
        relayed = is_relayed(stream.muxed_conn)
        remote = None if relayed else stream.get_remote_address()
        observed_ip = _normal_ip(remote[0]) if remote else None
        observed = ""
        if remote and observed_ip:
            proto = "ip6" if ":" in observed_ip else "ip4"
            observed = f"/{proto}/{observed_ip}/tcp/{remote[1]}"
        def refuse_all(reason: str) -> list[DialResult]:
            self._count(reason)
            return [DialResult(addr=a, status="refused", reason=reason) for a in addrs[:8]]

        if relayed:
            return refuse_all("request over a relayed connection"), observed
        if observed_ip is None:
            return refuse_all("no observed address"), observed
        if not self._rate.allow(peer):
            return refuse_all("rate limited"), observed
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return refuse_all("busy"), observed
        try:
            results = []
            dials = 0
            for addr in addrs[:8]:
                why = self._refusal(addr, peer, observed_ip)
                if why is None and dials >= self.max_dials:
                    why = f"more than {self.max_dials} addresses"
                if why is not None:
                    results.append(DialResult(addr=addr, status="refused", reason=_reason(why)))
                    continue
                dials += 1
                status, reason = await self._dial_back(peer, addr, request.nonce)
                results.append(DialResult(addr=addr, status=status, reason=_reason(reason)))
            self.served += 1
            return results, observed
        finally:
            self._slots.release()

    @staticmethod
    def _refusal(addr: str, peer: ID, observed_ip: str) -> str | None:
        parsed = dialable_ip_port(addr)
        if parsed is None:
            return "not a direct tcp or quic-v1 address"
        if _normal_ip(parsed[0]) != observed_ip:
            return "not the address the request came from"
        if "/p2p/" in addr and addr.rsplit("/p2p/", 1)[1] != peer.to_base58():
            return "another peer's address"
        return None

    async def _dial_back(self, peer: ID, addr: str, nonce: bytes
                         ) -> tuple[Literal["ok", "dial_error"], str]:
        network = self.host.get_network()
        conn: INetConn | None = None
        try:
            with trio.fail_after(self.dial_timeout):
                conn = await network.dial_addr(multiaddr.Multiaddr(addr_key(addr)), peer)  # a NEW connection
                stream = await open_stream_on(self.host, conn, BACK_PROTOCOL_ID, self.dial_timeout)
                back = FrameStream(stream, CODEC)
                await back.send(DialBack(nonce=nonce, addr=addr))
                ack = await back.receive()
                await stream.close()
            if not isinstance(ack, DialBackOk):
                return "dial_error", "no dial_back_ok"
            return "ok", ""
        except trio.TooSlowError:
            return "dial_error", "timed out"
        except Exception as exc:
            return "dial_error", str(exc)
        finally:
            if conn is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await conn.close()
                    except Exception:
                        pass


def _normal_ip(ip: str) -> str | None:
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


@dataclass
class Round:
    """One check: what was asked, who answered, which addresses came back and from how many servers."""

    at: float
    candidates: list[str]
    servers: int
    answered: int
    reached: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # servers that refused the whole request (SERVER_REFUSALS): they did not answer
    observed: list[str] = field(default_factory=list)


class ReachabilityProber:
    """Learns which candidate addresses are dialable; the host advertises only those (mode ``auto``)."""

    def __init__(self, host: IHost, *, mode: str = "auto", servers_per_round: int = 3,
                 recheck_interval: float = 300.0, min_gap: float = 5.0, request_timeout: float = 15.0,
                 unknown_retry: tuple[float, float] = (5.0, 60.0)) -> None:
        if mode not in MODES:
            raise ValueError(f"reachability mode must be one of {MODES}")
        self.host = host
        self.mode = mode
        self.servers_per_round = servers_per_round
        self.recheck_interval = recheck_interval
        self.min_gap = min_gap
        self.request_timeout = request_timeout
        self.unknown_retry = unknown_retry  # while unknown: pause before asking again, doubling up to its max
        self.status = PUBLIC if mode == "public" else PRIVATE if mode == "private" else UNKNOWN
        self.confirmed: set[str] = set()
        self.observed_ips: set[str] = set()
        self.rounds: deque[Round] = deque(maxlen=8)
        self.first_verdict_at: float | None = None
        self.unreached = 0  # answered checks in a row that reached none of our addresses
        self.started_at = time.monotonic()
        self._pending: dict[bytes, set[str]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._kick = trio.Event()

    # ----- what the host advertises ---------------------------------------------------------------------
    def advertised(self, candidates: Sequence[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        if self.mode == "public":
            return list(candidates)
        if self.mode == "private":
            return []
        return [c for c in candidates if addr_key(c) in self.confirmed]

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def kick(self) -> None:
        """Re-check soon (a connection or address change the caller knows about)."""
        self._kick.set()

    def candidates(self) -> list[str]:
        """Our listen addresses (wildcards skipped) and, per IP servers saw us at, the same ports there."""
        out: list[str] = []
        listen = [addr_key(a) for a in self.host.get_transport_addrs() if dialable_ip_port(str(a))]
        for a in listen:
            ip = a.split("/")[2]
            if ip not in ("0.0.0.0", "::"):
                out.append(a)
        for a in listen:
            parts = a.split("/")
            for ip in sorted(self.observed_ips):
                proto = "ip6" if ":" in ip else "ip4"
                if parts[1] == proto:
                    out.append("/".join(["", proto, ip, *parts[3:]]))
        return list(dict.fromkeys(out))[:8]

    # ----- client side ------------------------------------------------------------------------------------
    async def handle_back(self, stream: INetStream) -> None:
        """A server's dial-back arrived on a fresh connection: record it if it carries a nonce we sent."""
        frames = FrameStream(stream, CODEC)
        try:
            with trio.fail_after(10):
                frame = await frames.receive()
                if not isinstance(frame, DialBack):
                    raise FrameError("expected dial_back")
                reached = self._pending.get(frame.nonce)
                if reached is not None:
                    reached.add(frame.addr)
                await frames.send(DialBackOk())
        except Exception as exc:
            log.debug("dial-back from %s dropped: %s", stream.muxed_conn.peer_id, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:
                    pass

    def _servers(self) -> list[ID]:
        peers = []
        for peer in self.host.get_connected_peers():
            conns = live_connections(self.host, peer)
            if conns and not all(is_relayed(c) for c in conns):
                peers.append(peer)
        random.shuffle(peers)
        store = self.host.get_peerstore()
        # Peers known to speak the protocol first; unknown ones are worth a try (identify may lag).
        def speaks(p: ID) -> int:
            try:
                return 0 if store.supports_protocols(p, [str(PROTOCOL_ID)]) else 1
            except Exception:
                return 1
        return sorted(peers, key=speaks)

    async def _ask(self, server: ID, candidates: list[str], rnd: Round) -> None:
        nonce = os.urandom(16)
        reached: set[str] = set()
        self._pending[nonce] = reached
        try:
            with trio.fail_after(self.request_timeout):
                stream = await self.host.new_stream(server, [PROTOCOL_ID])
                frames = FrameStream(stream, CODEC)
                try:
                    await frames.send(DialRequest(v=1, nonce=nonce, addrs=candidates))
                    response = await frames.receive()
                finally:
                    await stream.close()
            if not isinstance(response, DialResponse):
                return
            if not any(r.status != "refused" or r.reason not in SERVER_REFUSALS for r in response.results):
                # Busy (4 dial-backs at a time: 97 nodes started against one seed), rate limited, ...: no
                # answer about us. Counted as one, it made such a node "private" and advertise nothing.
                rnd.refused += 1
                return
            rnd.answered += 1
            if response.observed:
                rnd.observed.append(response.observed)
            for addr in reached & set(candidates):
                rnd.reached[addr] = rnd.reached.get(addr, 0) + 1
        except Exception as exc:
            log.debug("dial-back request to %s failed: %s", server, exc)
        finally:
            self._pending.pop(nonce, None)

    async def check(self) -> str:
        """One round (two if the first taught us a new outside address); returns the verdict."""
        if self.mode != "auto":
            return self.status
        answered: Round | None = None
        for _ in range(2):
            candidates = self.candidates()
            servers = self._servers()[: self.servers_per_round]
            rnd = Round(time.time(), candidates, len(servers), 0)
            if servers and candidates:
                async with trio.open_nursery() as nursery:
                    for server in servers:
                        nursery.start_soon(self._ask, server, candidates, rnd)
            self.rounds.append(rnd)
            for obs in rnd.observed:
                self.observed_ips.add(obs.strip("/").split("/")[1])
            if rnd.answered:
                answered = rnd
            if set(self.candidates()) == set(candidates):
                break
        if answered is not None:  # the verdict of the last round anyone answered, once the check is over
            self._apply(answered)
        return self.status

    def _apply(self, rnd: Round) -> None:
        needed = min(2, rnd.answered)
        confirmed = {a for a, n in rnd.reached.items() if n >= needed}
        self.unreached = 0 if confirmed else self.unreached + 1
        if not confirmed and self.unreached < PRIVATE_AFTER and self.status != PRIVATE:
            return  # not yet: keep what we had (unknown, or the addresses confirmed before) and ask again soon
        status = PUBLIC if confirmed else PRIVATE
        if self.first_verdict_at is None:
            self.first_verdict_at = time.monotonic()
        if confirmed != self.confirmed or status != self.status:
            log.info("reachability %s -> %s (reached: %s)", self.status, status, sorted(confirmed) or "none")
            self.confirmed, self.status = confirmed, status
            for callback in self._listeners:
                callback()

    async def run(self) -> None:
        """Check at start and whenever addresses change; while unknown also when peers come and go."""
        last_round = -1e9
        last_candidates: list[str] = []
        last_peers: set[ID] = set()
        unknown_rounds = 0  # checks in a row that ended unknown
        while True:
            retry = min(self.unknown_retry[0] * 2 ** unknown_rounds, self.unknown_retry[1])
            peers = set(self.host.get_connected_peers())
            candidates = self.candidates()
            since = time.monotonic() - last_round
            # Still unknown with the same peers (every server busy, or none answered in time): ask again after
            # a growing pause, not only after recheck_interval; a node advertises nothing while unknown.
            doubt = self.status == UNKNOWN or 0 < self.unreached < PRIVATE_AFTER
            due = (candidates != last_candidates
                   or (doubt and peers and (peers != last_peers or since >= retry))
                   or since >= self.recheck_interval
                   or self._kick.is_set())
            if due and peers and since >= self.min_gap:
                self._kick = trio.Event()
                last_round = time.monotonic()
                last_peers, last_candidates = peers, candidates
                await self.check()
                last_candidates = self.candidates()
                doubt = self.status == UNKNOWN or 0 < self.unreached < PRIVATE_AFTER
                unknown_rounds = min(unknown_rounds + 1, 16) if doubt else 0
            with trio.move_on_after(1.0):
                await self._kick.wait()

    def summary(self) -> dict[str, Any]:
        last = self.rounds[-1] if self.rounds else None
        return {
            "mode": self.mode, "status": self.status, "confirmed": sorted(self.confirmed),
            "observed_ips": sorted(self.observed_ips),
            "first_verdict_s": round(self.first_verdict_at - self.started_at, 2) if self.first_verdict_at else None,
            "last_round": None if last is None else {
                "at": round(last.at, 1), "asked": last.candidates, "servers": last.servers,
                "answered": last.answered, "refused": last.refused, "reached": last.reached},
        }
