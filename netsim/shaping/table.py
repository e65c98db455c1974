"""NETSIM-ONLY link table: what every link between two named nodes does; never used on a real network.

The table is a JSON file netsim rewrites atomically (temp file + ``os.replace``) and every shaped node
re-reads when it changes (:func:`watch_table_file`), so partitions, heals and link changes apply to
connections that are already open. :class:`LinkView` is one connection's window on it.

Link table format (version 1)::

    {"version": 1, "seed": 3,
     "default": {"latency_ms": 20, "jitter_ms": 5, "loss": 0.01, "bandwidth_bytes_s": 0, "blocked": false},
     "nodes": {"worker1": {"peer_id": "12D3Koo...", "ports": [40123]}, ...},
     "rules": [{"a": ["worker1"], "b": ["requester1"], "latency_ms": 80},
               {"a": ["worker4"], "b": ["worker1", "requester1"], "blocked": true}]}

The link between two named nodes is ``default`` overlaid, in order, with every rule whose ``a`` holds one of
them and ``b`` the other (a rule sets only the keys it names). A peer the table does not name gets
``default``. Links are symmetric.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

NETSIM_ONLY = "NETSIM-ONLY link shaping; never used on a real network"
TABLE_VERSION = 1
POLL_INTERVAL_S = 0.2           # how often a node checks whether the link table file changed


class LinkTableError(ValueError):
    """The link table is unreadable or malformed."""


@dataclass(frozen=True)
class LinkParams:
    """One link's behaviour, the same in both directions."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0               # probability that a chunk needs a retransmission (+RTO_S)
    bandwidth_bytes_s: float = 0.0  # 0: unlimited
    blocked: bool = False           # partitioned: nothing crosses until it is unblocked

    def overlaid(self, overrides: dict[str, Any], where: str) -> LinkParams:
        """These params with ``overrides`` applied; unknown keys or bad values raise :class:`LinkTableError`."""
        known = {f.name for f in fields(LinkParams)}
        unknown = set(overrides) - known
        if unknown:
            raise LinkTableError(f"{where}: unknown link keys {sorted(unknown)}")
        values: dict[str, Any] = {}
        for key, value in overrides.items():
            if key == "blocked":
                if not isinstance(value, bool):
                    raise LinkTableError(f"{where}: blocked must be true or false")
                values[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise LinkTableError(f"{where}: {key} must be a non-negative number (got {value!r})")
            if key == "loss" and value >= 1:
                raise LinkTableError(f"{where}: loss must be below 1 (got {value!r})")
            values[key] = float(value)
        return replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Rule:
    a: frozenset[str]
    b: frozenset[str]
    overrides: dict[str, Any]

    def matches(self, x: str, y: str) -> bool:
        return (x in self.a and y in self.b) or (x in self.b and y in self.a)


class LinkTable:
    """The current link description; :meth:`replace` swaps it and wakes everyone waiting for a change."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.seed: int | None = None
        self._default = LinkParams()
        self._by_peer: dict[str, str] = {}
        self._by_port: dict[int, str] = {}
        self._rules: list[_Rule] = []
        self._cache: dict[tuple[str, str], LinkParams] = {}
        self._changed = trio.Event()
        self.generation = 0
        # What the watcher and the links did, for tests and logs: tables the watcher read but refused (the old
        # one stayed in force), and senders or dials parked on a blocked link right now.
        self.refused = 0
        self.held = 0
        if data is not None:
            self.replace(data)

    @classmethod
    def from_file(cls, path: Path) -> LinkTable:
        return cls(read_table_file(path))

    def replace(self, data: dict[str, Any]) -> None:
        """Validate ``data`` completely, then switch to it (a bad table leaves the old one in force)."""
        if not isinstance(data, dict):
            raise LinkTableError("link table: expected a JSON object")
        unknown = set(data) - {"version", "seed", "default", "nodes", "rules", "note"}
        if unknown:
            raise LinkTableError(f"link table: unknown keys {sorted(unknown)}")
        if data.get("version", TABLE_VERSION) != TABLE_VERSION:
            raise LinkTableError(f"link table: version {data.get('version')!r}, this node reads {TABLE_VERSION}")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise LinkTableError("link table: seed must be an integer")
        default = LinkParams().overlaid(_table(data.get("default", {}), "default"), "default")
        by_peer: dict[str, str] = {}
        by_port: dict[int, str] = {}
        for name, node in _table(data.get("nodes", {}), "nodes").items():
            node = _table(node, f"nodes.{name}")
            if set(node) - {"peer_id", "ports"}:
                raise LinkTableError(f"nodes.{name}: unknown keys {sorted(set(node) - {'peer_id', 'ports'})}")
            if "peer_id" in node:
                if not isinstance(node["peer_id"], str):
                    raise LinkTableError(f"nodes.{name}.peer_id: expected a string")
                by_peer[node["peer_id"]] = name
            for port in node.get("ports", []):
                if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                    raise LinkTableError(f"nodes.{name}.ports: {port!r} is not a TCP port")
                by_port[port] = name
        rules = []
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise LinkTableError("rules: expected a list")
        for i, rule in enumerate(raw_rules):
            rule = dict(_table(rule, f"rules[{i}]"))
            sides = []
            for side in ("a", "b"):
                names = rule.pop(side, None)
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise LinkTableError(f"rules[{i}].{side}: expected a list of node names")
                sides.append(frozenset(names))
            rule.pop("why", None)  # free text for people reading the file
            LinkParams().overlaid(rule, f"rules[{i}]")  # validate now, not on first use
            rules.append(_Rule(sides[0], sides[1], rule))
        self.seed, self._default, self._by_peer, self._by_port, self._rules = seed, default, by_peer, by_port, rules
        self._cache = {}
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def name_of(self, *, peer_id: str | None = None, port: int | None = None) -> str | None:
        """The node's name: by peer id if the table knows it, else by listen port."""
        if peer_id is not None and peer_id in self._by_peer:
            return self._by_peer[peer_id]
        if port is not None:
            return self._by_port.get(port)
        return None

    def link(self, x: str | None, y: str | None) -> LinkParams:
        """Parameters of the link between nodes ``x`` and ``y`` (``default`` when either is unknown)."""
        if x is None or y is None:
            return self._default
        key = (x, y) if x <= y else (y, x)
        params = self._cache.get(key)
        if params is None:
            params = self._default
            for rule in self._rules:
                if rule.matches(x, y):
                    params = params.overlaid(rule.overrides, "rule")
            self._cache[key] = params
        return params


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LinkTableError(f"{where}: expected a JSON object")
    return value


def read_table_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LinkTableError(f"link table {path}: {exc}") from None
    return _table(data, f"link table {path}")


def write_table_file(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename), so a node never reads half a table."""
    LinkTable(data)  # refuse to write what the nodes would refuse to read
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"note": NETSIM_ONLY, **data}, indent=1))
    os.replace(tmp, path)


async def watch_table_file(table: LinkTable, path: Path, interval: float = POLL_INTERVAL_S) -> None:
    """Reload ``table`` from ``path`` whenever the file is replaced or rewritten; keep the old one if bad."""

    def signature() -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    seen: tuple[int, int, int] | None = None  # read once at start: it may have changed since the table was loaded
    while True:
        await trio.sleep(interval)
        now = signature()
        if now == seen or now is None:
            continue
        seen = now
        try:
            table.replace(read_table_file(path))
        except LinkTableError as exc:
            table.refused += 1
            log.error("%s: keeping the previous link table: %s", NETSIM_ONLY, exc)


class LinkView:
    """One connection's link, looked up afresh on every use so table changes apply to open connections."""

    def __init__(self, table: LinkTable, local: str | None, remote: str | None) -> None:
        self.table, self.local, self.remote = table, local, remote

    def params(self) -> LinkParams:
        return self.table.link(self.local, self.remote)

    async def wait_open(self) -> bool:
        """Return once the link is not blocked; True if it had to wait (a partition was in force)."""
        waited = False
        while self.params().blocked:
            waited = True
            self.table.held += 1
            try:
                await self.table.wait_changed()
            finally:
                self.table.held -= 1
        return waited


