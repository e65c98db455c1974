"""NETSIM-ONLY loopback forwarding between the root namespace and nodes' namespaces.

A node in its own namespace serves its admin endpoint and OpenAI API on *its* 127.0.0.1, which the netsim
process (in the root namespace) cannot reach; and the shared EMULATED chain listens on the root's 127.0.0.1,
which the node cannot reach. The forwarder bridges both ways from inside this process, with sockets created
in the node's namespace (``netns.ns_socket``): :meth:`expose` gives a root 127.0.0.1 port that leads to a
port inside a namespace, :meth:`reach_root` gives a namespace a 127.0.0.1 port that leads to the root's.
Nothing is bound outside 127.0.0.1, and nothing outlives the forwarder's nursery.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from netsim.netns import ns_connect, ns_socket


async def _splice(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    async def copy(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
            if isinstance(dst, trio.SocketStream):
                await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, a, b)
            nursery.start_soon(copy, b, a)
    finally:
        for s in (a, b):
            await trio.aclose_forcefully(s)


class Forwarder:
    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._exposed: dict[tuple[str, int], int] = {}
        self._reached: set[tuple[str, int]] = set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Forwarder]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def expose(self, namespace: str, port: int) -> int:
        """A root-namespace 127.0.0.1 port whose connections are piped to 127.0.0.1:``port`` in ``namespace``."""
        assert self._nursery is not None, "use `async with forwarder.running()`"
        key = (namespace, port)
        if key not in self._exposed:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self._exposed[key] = listeners[0].socket.getsockname()[1]
            self._nursery.start_soon(trio.serve_listeners, partial(self._into, namespace, port), listeners)
        return self._exposed[key]

    async def _into(self, namespace: str, port: int, client: trio.SocketStream) -> None:
        try:
            target = await ns_connect(namespace, "127.0.0.1", port)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        await _splice(client, target)

    async def reach_root(self, namespace: str, port: int) -> None:
        """Make 127.0.0.1:``port`` inside ``namespace`` lead to 127.0.0.1:``port`` of the root namespace."""
        assert self._nursery is not None, "use `async with forwarder.running()`"
        if (namespace, port) in self._reached:
            return
        sock = await ns_socket(namespace)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(("127.0.0.1", port))
        sock.listen(128)
        self._reached.add((namespace, port))
        self._nursery.start_soon(trio.serve_listeners, partial(self._out, port), [trio.SocketListener(sock)])

    async def _out(self, port: int, client: trio.SocketStream) -> None:
        try:
            target = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        await _splice(client, target)

    def url(self, namespace: str, url: str) -> str:
        """``http://127.0.0.1:PORT`` inside ``namespace`` as the root-side URL (after :meth:`expose`)."""
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        return f"http://127.0.0.1:{self._exposed[(namespace, port)]}"
