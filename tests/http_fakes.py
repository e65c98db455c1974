"""What the tests' small fake HTTP servers (PCCS, AMD's KDS, an OpenAI upstream) share."""

from __future__ import annotations

import trio


async def read_request_head(stream: trio.SocketStream) -> bytes | None:
    """Read until the end of an HTTP request's head; the bytes so far (any body bytes after the head
    included), or None when the client closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    return data
