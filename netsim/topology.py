"""NETSIM-ONLY topology on network namespaces: a public "internet", NAT gateways, and a namespace per node.

Layout (every box a namespace of one run, see :mod:`netsim.netns`)::

    [public node] eth0 ──veth── ┐                    ┌── veth ── eth0 [NAT'd node]  10.K.0.J/24
    [public node] eth0 ──veth── ┤ wan: bridge br0    │
                                └──veth── wan0 [gateway K] br-lan ┘  (masquerade to its WAN address)

Public nodes and gateways get ``198.18.N.1/16`` (RFC 2544 benchmark space, so never a real route); each
node behind a NAT gets a LAN address with a default route through its gateway. Public nodes have no route
to any LAN, so a private address is undialable from outside, as on the internet.

NAT kinds (nftables in the gateway's namespace):

* ``eim`` — endpoint-independent mapping: plain ``masquerade`` (persistent and fully-random off), which keeps
  a connection's source port when it is free, so one inside port maps to one outside port for every
  destination. Filtering is conntrack's (only replies to mappings the inside opened get in), unsolicited
  inbound connections are dropped silently, like a home router. TCP hole punching works through it.
* ``symmetric`` — ``masquerade random``: every connection gets a random outside port, so the port a peer saw
  is useless to anyone else (endpoint-dependent mapping). Hole punching fails; a relay is the way in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netsim.netns import NetnsError, NetnsRun

NAT_KINDS = ("eim", "symmetric")
PUBLIC = "public"
WAN_NS = "wan"


@dataclass(frozen=True)
class NatSpec:
    name: str
    kind: str = "eim"
    lan: str = ""                       # "" = 10.<index>.0.0/24


@dataclass(frozen=True)
class Topology:
    """``[topology]``: where each node sits. ``place`` maps node or group names to ``public`` or a NAT name
    (unlisted nodes are public); ``loss`` maps node names to a real packet loss fraction (nftables drops)."""

    wan: str = "198.18.0.0/16"
    listen_port: int = 4001
    nats: tuple[NatSpec, ...] = ()
    place: dict[str, str] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = []
        names = [n.name for n in self.nats]
        if len(set(names)) != len(names):
            out.append("topology.nat: names must be unique")
        for n in self.nats:
            if n.kind not in NAT_KINDS:
                out.append(f"topology.nat.{n.name}: kind must be one of {NAT_KINDS}")
            if not n.name.replace("_", "").isalnum() or len(n.name) > 12:
                out.append(f"topology.nat.{n.name}: use up to 12 letters, digits and _")
        for node, where in self.place.items():
            if where != PUBLIC and where not in names:
                out.append(f"topology.place.{node}: {where!r} is neither 'public' nor a NAT name")
        for node, frac in self.loss.items():
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1:
                out.append(f"topology.loss.{node}: a fraction in [0, 1) (a full cut is a partition fault)")
        try:
            ipaddress.ip_network(self.wan)
        except ValueError as exc:
            out.append(f"topology.wan: {exc}")
        return out


def parse_topology(raw: Any) -> Topology:
    if not isinstance(raw, dict):
        raise ValueError("topology: expected a table")
    raw = dict(raw)
    nats = []
    for i, n in enumerate(raw.pop("nat", [])):
        if not isinstance(n, dict) or set(n) - {"name", "kind", "lan"} or "name" not in n:
            raise ValueError(f"topology.nat[{i}]: a table with name, kind and optionally lan")
        nats.append(NatSpec(**n))
    place, loss = dict(raw.pop("place", {})), dict(raw.pop("loss", {}))
    unknown = set(raw) - {"wan", "listen_port"}
    if unknown:
        raise ValueError(f"topology: unknown keys {sorted(unknown)}")
    return Topology(nats=tuple(nats), place=place, loss={k: float(v) for k, v in loss.items()}, **raw)


@dataclass
class HostNet:
    name: str
    ns: str                             # local namespace name in the run
    ip: str
    nat: str | None                     # None: public
    visible_ip: str                     # the address the internet sees it at (its gateway's, behind a NAT)


@dataclass
class GatewayNet:
    nat: NatSpec
    ns: str
    wan_ip: str
    lan: ipaddress.IPv4Network
    hosts: list[str] = field(default_factory=list)


class Network:
    """A built topology: namespaces, addresses, NAT rules; plus partitions and loss as nftables rules."""

    def __init__(self, run: NetnsRun, topology: Topology) -> None:
        self.run = run
        self.topology = topology
        self.hosts: dict[str, HostNet] = {}
        self.gateways: dict[str, GatewayNet] = {}
        self._wan = ipaddress.ip_network(topology.wan)
        self._next_wan = 1
        self._partitions = 0
        self._open: dict[str, list[str]] = {}   # partition tag -> namespaces holding its rules

    def _wan_ip(self) -> str:
        ip = self._wan.network_address + (self._next_wan << 8) + 1
        self._next_wan += 1
        if ip not in self._wan:
            raise NetnsError(f"topology.wan {self._wan} has no room for another public address")
        return str(ip)

    async def build(self, placements: Sequence[tuple[str, str]]) -> None:
        """Create the WAN, the gateways and one namespace per ``(node, public-or-NAT-name)``."""
        await self.run.add(WAN_NS)
        await self.run.bridge(WAN_NS, "br0")
        for k, nat in enumerate(self.topology.nats, start=1):
            await self._gateway(k, nat)
        for node, where in placements:
            await self.add_host(node, where)
        for node, frac in self.topology.loss.items():
            if frac > 0:
                await self.set_loss(node, frac)

    async def _gateway(self, k: int, nat: NatSpec) -> None:
        ns = f"gw-{nat.name}"
        await self.run.add(ns)
        wan_ip = self._wan_ip()
        await self.run.veth(ns, "wan0", WAN_NS, f"g{k}")
        await self.run.enslave(WAN_NS, f"g{k}", "br0")
        await self.run.ip(ns, "addr", "add", f"{wan_ip}/{self._wan.prefixlen}", "dev", "wan0")
        lan = ipaddress.IPv4Network(nat.lan or f"10.{k}.0.0/24")
        await self.run.bridge(ns, "br-lan")
        await self.run.ip(ns, "addr", "add", f"{lan.network_address + 1}/{lan.prefixlen}", "dev", "br-lan")
        await self.run.sysctl(ns, "net.ipv4.ip_forward", "1")
        masquerade = "masquerade random" if nat.kind == "symmetric" else "masquerade"
        await self.run.nft(ns, (
            "table ip cnsim_nat {\n"
            "  chain postrouting { type nat hook postrouting priority srcnat;\n"
            f'    oifname "wan0" {masquerade}\n'
            "  }\n"
            "}\n"
            "table inet cnsim_gw {\n"
            "  chain forward { type filter hook forward priority 0; policy drop;\n"
            "    ct state established,related accept\n"
            '    iifname "br-lan" oifname "wan0" accept\n'
            "  }\n"
            "  chain input { type filter hook input priority 0; policy accept;\n"
            '    iifname "wan0" ct state established,related accept\n'
            '    iifname "wan0" drop\n'
            "  }\n"
            "}\n"))
        self.gateways[nat.name] = GatewayNet(nat, ns, wan_ip, lan)

    async def add_host(self, node: str, where: str = PUBLIC) -> HostNet:
        if node in self.hosts:
            raise NetnsError(f"host {node} already placed")
        await self.run.add(node)
        if where == PUBLIC:
            ip = self._wan_ip()
            peer_if = f"h{len(self.hosts) + 1}"
            await self.run.veth(node, "eth0", WAN_NS, peer_if)
            await self.run.enslave(WAN_NS, peer_if, "br0")
            await self.run.ip(node, "addr", "add", f"{ip}/{self._wan.prefixlen}", "dev", "eth0")
            host = HostNet(node, node, ip, None, ip)
        else:
            gw = self.gateways[where]
            ip = str(gw.lan.network_address + 2 + len(gw.hosts))
            peer_if = f"l{len(gw.hosts) + 1}"
            await self.run.veth(node, "eth0", gw.ns, peer_if)
            await self.run.enslave(gw.ns, peer_if, "br-lan")
            await self.run.ip(node, "addr", "add", f"{ip}/{gw.lan.prefixlen}", "dev", "eth0")
            await self.run.ip(node, "route", "add", "default", "via", str(gw.lan.network_address + 1))
            gw.hosts.append(node)
            host = HostNet(node, node, ip, where, gw.wan_ip)
        self.hosts[node] = host
        return host

    def listen_addr(self, node: str) -> str:
        return f"/ip4/{self.hosts[node].ip}/tcp/{self.topology.listen_port}"

    def exec_args(self, node: str, cmd: Sequence[str]) -> list[str]:
        return self.run.exec_args(self.hosts[node].ns, cmd)

    def namespace(self, node: str) -> str:
        """The full namespace name of a node (for sockets opened inside it)."""
        return self.run.ns(self.hosts[node].ns)

    # ----- faults ------------------------------------------------------------------------------------------
    def _member_ns(self, member: str) -> str:
        if member in self.hosts:
            return self.hosts[member].ns
        if member in self.gateways:
            return self.gateways[member].ns
        raise NetnsError(f"no host or NAT named {member!r}")

    def _seen_from(self, viewer: str, member: str) -> set[str]:
        """The addresses packets of ``member`` carry when they reach ``viewer`` (LAN ones on its own LAN)."""
        viewer_nat = self.hosts[viewer].nat if viewer in self.hosts else viewer
        if member in self.gateways:
            gw = self.gateways[member]
            return {gw.wan_ip} | ({self.hosts[h].ip for h in gw.hosts} if viewer_nat == member else set())
        host = self.hosts[member]
        if host.nat is None:
            return {host.ip}
        return {host.ip} if viewer_nat == host.nat else {host.visible_ip}

    async def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> str:
        """Drop every packet between the two sides (hosts or NAT names); returns the tag for :meth:`heal`."""
        self._partitions += 1
        tag = f"partition-{self._partitions}"
        b = list(side_b)
        for member in side_a:
            ips = sorted(set().union(*(self._seen_from(member, other) for other in b)))
            if not ips:
                continue
            addr_set = "{ " + ", ".join(ips) + " }"
            rules = [(chain, f"ip {d} {addr_set} drop") for chain in ("input", "output", "forward")
                     for d in ("saddr", "daddr")]
            await self.run.add_rules(self._member_ns(member), tag, rules)
        self._open[tag] = list(side_a)
        return tag

    async def heal(self, tag: str) -> None:
        for member in self._open.pop(tag, []):
            await self.run.remove_rules(self._member_ns(member), tag)

    async def set_loss(self, node: str, fraction: float) -> None:
        """Real random loss on every non-loopback packet in and out of ``node`` (0 removes it)."""
        ns = self._member_ns(node)
        await self.run.ensure_fault_table(ns)
        await self.run.remove_rules(ns, "loss")
        if fraction > 0:
            per_10k = round(fraction * 10_000)
            await self.run.add_rules(ns, "loss", [
                ("input", f'iifname != "lo" numgen random mod 10000 < {per_10k} drop'),
                ("output", f'oifname != "lo" numgen random mod 10000 < {per_10k} drop'),
            ])
