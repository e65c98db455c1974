"""The pinned fix of py-libp2p's TCP listener: a closed listening socket is skipped, not an EBADF crash."""

from __future__ import annotations

import trio
from libp2p.transport.tcp.tcp import TCPListener

import cocoon_node.mesh.host  # noqa: F401  (installs the fix, as every Mesh does)


async def _listening_socket() -> trio.SocketListener:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen()
    return trio.SocketListener(sock)


async def test_addresses_of_a_listener_whose_socket_closed_during_shutdown() -> None:
    async def handler(_: object) -> None: ...

    listener = TCPListener(handler)  # type: ignore[arg-type]
    live, closed = await _listening_socket(), await _listening_socket()
    listener.listeners.extend([live, closed])
    port = live.socket.getsockname()[1]
    closed.socket.close()  # what the host's shutdown does while an identify request is still answered
    addrs = listener.get_addrs()  # before the fix: OSError [Errno 9] Bad file descriptor
    assert [str(a) for a in addrs] == [f"/ip4/127.0.0.1/tcp/{port}"]
    live.socket.close()
