"""A pinned fix for py-libp2p 0.8.1's TCP listener: list addresses of open listening sockets only.

``TCPListener.get_addrs`` calls ``getsockname()`` on every listening socket, including those already closed
while the host shuts down. py-libp2p's identify handler asks for the host's addresses, so an identify
request that arrives in that window raises ``OSError(EBADF)`` out of the swarm's stream handler and tears
the whole host's nursery down with it (seen as a failed teardown in tests/mesh/test_relay.py on a loaded
machine). :func:`install` makes ``get_addrs`` skip closed sockets; everything else is py-libp2p's code.
"""

from __future__ import annotations

from libp2p.transport.tcp import tcp
from libp2p.utils.multiaddr_utils import multiaddr_from_socket
from multiaddr import Multiaddr

from cocoon_node.mesh._pinned import require_pinned_libp2p


def _open_listener_addrs(self: tcp.TCPListener) -> tuple[Multiaddr, ...]:
    return tuple(multiaddr_from_socket(listener.socket) for listener in self.listeners
                 if listener.socket.fileno() != -1)


def install() -> None:
    """Rebind ``TCPListener.get_addrs`` (idempotent); refuse another py-libp2p, whose code may differ."""
    require_pinned_libp2p("the TCP listener fix", "check libp2p/transport/tcp/tcp.py get_addrs and update "
                          "cocoon_node/mesh/tcp_addrs.py")
    tcp.TCPListener.get_addrs = _open_listener_addrs  # type: ignore[method-assign]
