"""NETSIM-ONLY link shaping inside the TCP transport; never used on a real network.

netsim wants per-link latency, jitter, loss, bandwidth and partitions between node processes on one loopback
interface. The kernel way (network namespaces, veth pairs, ``tc netem``) needs ``sch_netem``, which the CI
machines lack, so this package shapes links inside the TCP transport instead, and reaches the mesh only as an
injected transport (``MeshSettings.transport_factory``): production code never imports it. Nodes get it by
starting through netsim's own entry points (``python -m netsim.node --link-table PATH run ...``, the rogue
nodes' ``--link-table``, ``netsim.pool --link-table``), see :mod:`netsim.node`.

Modules:

* :mod:`~netsim.shaping.table` -- the link table (JSON file, format and validation), its file watcher, and
  :class:`LinkView`, one connection's live view of its link.
* :mod:`~netsim.shaping.stream` -- :class:`ShapedStream`, the per-direction pumps that delay, throttle and
  hold one connection's bytes.
* :mod:`~netsim.shaping.transport` -- :class:`ShapedTCP`, py-libp2p's TCP transport shaping what it dials,
  and :func:`shaped_transport_factory`, what the mesh is given.
"""

from netsim.shaping.stream import BUFFER_BYTES, LINGER_S, RTO_S, LinkClock, ShapedStream
from netsim.shaping.table import (
    NETSIM_ONLY,
    POLL_INTERVAL_S,
    TABLE_VERSION,
    LinkParams,
    LinkTable,
    LinkTableError,
    LinkView,
    read_table_file,
    watch_table_file,
    write_table_file,
)
from netsim.shaping.transport import ShapedTCP, remote_of, shaped_transport_factory

__all__ = [
    "BUFFER_BYTES",
    "LINGER_S",
    "NETSIM_ONLY",
    "POLL_INTERVAL_S",
    "RTO_S",
    "TABLE_VERSION",
    "LinkClock",
    "LinkParams",
    "LinkTable",
    "LinkTableError",
    "LinkView",
    "ShapedStream",
    "ShapedTCP",
    "read_table_file",
    "remote_of",
    "shaped_transport_factory",
    "watch_table_file",
    "write_table_file",
]
