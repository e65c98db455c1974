"""Wiring: the node process that combines mesh, attestation, inference and payments."""

from cocoon_node.node.node import Node, NodeInfo, read_node_info

__all__ = ["Node", "NodeInfo", "read_node_info"]
