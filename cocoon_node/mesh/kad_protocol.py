"""The Kademlia protocol id cocoon's DHT speaks: ``/cocoon/kad/1.0.0``, never IPFS's ``/ipfs/kad/1.0.0``.

py-libp2p 0.8.1 stores the ``protocol_prefix`` given to ``KadDHT`` but never uses it: its stream handler,
its FIND_NODE / GET_VALUE / PUT_VALUE / ADD_PROVIDER dials and its routing-table admission check (a peer
counts as a DHT server when identify lists the protocol) all read the module constant
``libp2p.kad_dht.common.PROTOCOL_ID``, imported by name into four more modules. On the internet a cocoon node
would therefore join the public IPFS DHT: answer IPFS peers' queries, admit them into its routing table and
store our records at them.

This module is the small pinned patch for that: :func:`install` rebinds the constant in every py-libp2p
module that holds it, once per process, before any ``KadDHT`` exists (``cocoon_node.mesh.host`` calls it on
import). It refuses to run against any other py-libp2p version, or when a module no longer holds the IPFS id
where we expect it, so an upgrade cannot silently bring the IPFS protocol back: review, then bump
``PINNED_VERSION``. Every ``KadDHT`` in the process speaks our id afterwards (a netsim pool runs many cocoon
nodes in one process; none of them is an IPFS node).
"""

from __future__ import annotations

import importlib

from libp2p.custom_types import TProtocol

from cocoon_node.mesh._pinned import PINNED_LIBP2P, require_pinned_libp2p

COCOON_KAD_PROTOCOL = TProtocol("/cocoon/kad/1.0.0")
IPFS_KAD_PROTOCOL = TProtocol("/ipfs/kad/1.0.0")
PINNED_VERSION = PINNED_LIBP2P
# Every py-libp2p 0.8.1 module that binds PROTOCOL_ID at import (routing_table imports it from common lazily).
PATCHED_MODULES = (
    "libp2p.kad_dht.common",
    "libp2p.kad_dht.kad_dht",
    "libp2p.kad_dht.peer_routing",
    "libp2p.kad_dht.value_store",
    "libp2p.kad_dht.provider_store",
)


class KadPatchError(RuntimeError):
    """The installed py-libp2p is not the one this patch was written (and tested) against."""


def install() -> None:
    """Make py-libp2p's KadDHT serve and dial ``/cocoon/kad/1.0.0`` only. Idempotent."""
    require_pinned_libp2p("cocoon's DHT protocol patch", "check where that version reads the Kademlia protocol "
                          "id, then update kad_protocol.py", KadPatchError)
    modules = [importlib.import_module(name) for name in PATCHED_MODULES]
    for module in modules:
        current = getattr(module, "PROTOCOL_ID", None)
        if current not in (IPFS_KAD_PROTOCOL, COCOON_KAD_PROTOCOL):
            raise KadPatchError(f"{module.__name__}.PROTOCOL_ID is {current!r}; the pinned patch expects the IPFS id")
    for module in modules:
        module.PROTOCOL_ID = COCOON_KAD_PROTOCOL  # type: ignore[attr-defined]


def installed() -> bool:
    """True when every patched module speaks our id (what the tests and ``cocoon-node status`` check)."""
    return all(getattr(importlib.import_module(name), "PROTOCOL_ID", None) == COCOON_KAD_PROTOCOL
               for name in PATCHED_MODULES)
