"""Wiring: the node process that combines mesh, attestation, inference and payments.

- :mod:`.node`: :class:`Node`, the one Trio process (roles, mesh, HTTP surfaces);
- :mod:`.faces`: the :class:`HttpSurfaces` the layer above hands in, and the ``node.json`` a node leaves in
  its data dir;
- :mod:`.worker`: the worker role (backend, announcements, the stream server);
- :mod:`.attest`, :mod:`.attest_policy`, :mod:`.gate_view`: publishing our attestation report, and the
  requester's gate that verifies workers' reports (policy from config) before any prompt byte leaves;
- :mod:`.payments`: the payments role (chain, store, meters, cooperative close over its stream protocol).
"""

from cocoon_node.node.faces import HttpSurfaces, NodeInfo, read_node_info
from cocoon_node.node.node import Node

__all__ = ["HttpSurfaces", "Node", "NodeInfo", "read_node_info"]
