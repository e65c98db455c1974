"""A lean HTTP/1.1 streaming client for the benchmarks: h11 over trio sockets, one keep-alive connection per
concurrent request, server-sent events handed back as they arrive.

Why not httpx: on the 2-core benchmark machine the load generator shares the CPU with the two node
processes it measures. httpx's connection pool alone cost the client ~6 ms of CPU per streamed request at 32
concurrent streams (it scans every pooled connection for each request), which is CPU the requester and the
worker did not get. This client does the same protocol work (request, chunked response, SSE lines) with
h11, the parser httpx and Hypercorn use, and nothing else. Tests and examples keep using httpx / the
OpenAI client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import h11
import trio


class SSEClient:
    """POSTs JSON and yields the ``data:`` payloads of an event-stream response."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or 80
        self._idle: list[tuple[trio.SocketStream, h11.Connection]] = []

    async def aclose(self) -> None:
        for sock, _ in self._idle:
            await sock.aclose()
        self._idle.clear()

    async def _connection(self) -> tuple[trio.SocketStream, h11.Connection]:
        if self._idle:
            return self._idle.pop()
        sock = await trio.open_tcp_stream(self._host, self._port)
        return sock, h11.Connection(h11.CLIENT)

    @asynccontextmanager
    async def post_events(self, path: str, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[bytes]]:
        """Send the request; the iterator yields each event's data (without ``data: ``) as it arrives."""
        sock, conn = await self._connection()
        payload = json.dumps(body).encode()
        head = h11.Request(method="POST", target=path, headers=[
            ("host", f"{self._host}:{self._port}"), ("content-type", "application/json"),
            ("accept", "text/event-stream"), ("content-length", str(len(payload)))])
        await sock.send_all(conn.send(head) + conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
        done = False

        async def events() -> AsyncIterator[bytes]:
            nonlocal done
            buffer = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await sock.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    if event.status_code != 200:
                        raise RuntimeError(f"HTTP {event.status_code}")
                elif isinstance(event, h11.Data):
                    buffer += bytes(event.data)
                    *complete, buffer = buffer.split(b"\n\n")
                    for block in complete:
                        for line in block.split(b"\n"):
                            if line.startswith(b"data:"):
                                yield line[5:].strip()
                elif isinstance(event, h11.EndOfMessage):
                    done = True
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise RuntimeError("server closed the connection mid-response")

        try:
            yield events()
        finally:
            if done and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                self._idle.append((sock, conn))
            else:
                await sock.aclose()
