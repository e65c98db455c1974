"""A pinned patch for py-libp2p 0.8.1's yamux: credit the sender the way go-yamux does; coalesce frame writes.

**Window updates.** After every read py-libp2p's ``YamuxStream._auto_tune_and_send_window_update`` sends a
WINDOW_UPDATE whenever any consumed byte is still uncredited ("partial slack"), even with its documented
``PY_YAMUX_RELEASE_ON_READ=0``: one encrypted 12-byte frame back, a syscall on each end, for every other
token frame a requester reads (tests/mesh/test_yamux_patch.py counts them). go-yamux credits the sender
only once half the receive window has been consumed (``sendWindowUpdate``'s hysteresis), which is what the
same method does when that rule is left out. :func:`install` rebinds it without the partial-slack branch;
full grows, the batched flush, window auto-tuning and the operator's ``PY_YAMUX_RELEASE_ON_READ=1`` are
py-libp2p's code unchanged. Flow control is unchanged too: a sender still stops at a full window, and a
reader that keeps reading frees half of it before the sender can run out (it has the other half).

**Frame writes.** ``Yamux._write_frame`` sends each frame as its own Noise message and socket send, after
parsing its header and formatting a debug line for it (an f-string, built even with debug logging off). At
128 streams the worker's token frames come in bursts (one decode step ticks them all), each waiting for the
connection's write lock. :func:`_write_frame_coalescing` writes the frames of every writer waiting for the
lock in one ``secured_conn.write``, in the order the writers called: one encryption and one send for many
streams' frames. Yamux runs over the secure channel as a byte stream, so how its frames are cut into Noise
messages is the sender's choice (py-libp2p's reader and go-libp2p's read them either way). On the reading
side, a frame body already decrypted into the session's buffer is taken without ``_read_data_body``'s
per-frame timeout scope (there is nothing to wait for).

The yamux frames are py-libp2p's, byte for byte, less the WINDOW_UPDATEs go-yamux would not send.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.io.utils import read_exactly
from libp2p.network.connection.exceptions import RawConnError
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux import yamux

from cocoon_node.mesh._pinned import require_pinned_libp2p

_original_write_frame = yamux.Yamux._write_frame
_original_read_data_body = yamux.Yamux._read_data_body


async def _credit_like_go_yamux(self: yamux.YamuxStream, *, bytes_read: int = 0) -> None:
    """py-libp2p 0.8.1's ``_auto_tune_and_send_window_update`` less its partial-slack branch."""
    total_delta = 0
    async with self.window_lock:
        if bytes_read > 0:
            self._pending_recv_release += bytes_read
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        delta = self.target_recv_window - (self.recv_window + buffered)
        threshold = self._grow_threshold()
        pending = self._pending_recv_release
        if delta >= threshold and delta > 0:
            self._window_update_full_grow += 1
            total_delta = self._grow_to_delta(buffered)
            total_delta += self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        elif pending >= threshold:
            self.recv_window += pending
            total_delta = pending
            self._pending_recv_release = 0
            self._window_update_pending_flush += 1
            total_delta += self._apply_autotune_epoch(buffered)
        elif yamux._yamux_release_on_read() and bytes_read > 0:  # the operator asked for it
            self.recv_window += bytes_read
            total_delta = bytes_read
            self._pending_recv_release -= bytes_read
            self._window_update_bytes_read_only += 1
            total_delta += self._apply_autotune_epoch(buffered)
    if total_delta > 0:
        await self.send_window_update(total_delta, skip_lock=True)


class _Batch:
    """Frames queued for one write of a connection; the first of their writers to get the lock sends all."""

    __slots__ = ("error", "frames", "sent")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.sent = False
        self.error: BaseException | None = None


async def _write_frame_coalescing(self: Any, data: bytes) -> None:
    """``Yamux._write_frame`` that sends the frames of every writer waiting for the lock in one write.

    A writer adds its frame to the connection's open batch, then takes the write lock; the first writer of a
    batch to get it closes the batch and writes all its frames, in the order they were added, as one
    ``secured_conn.write`` (one Noise message and one send for several streams' frames); the others find
    theirs sent. The lock is FIFO and a batch closes under it, so frames go out in the order of the calls.
    A writer cancelled before its batch is written takes its frame out again (it is never sent, as with
    py-libp2p's own method); a failed write fails every writer of that batch. The per-frame header parse and
    debug line run only when this module's logger would print them.
    """
    if yamux.logger.isEnabledFor(logging.DEBUG):
        await _original_write_frame(self, data)
        return
    batch: _Batch | None = getattr(self, "_cocoon_batch", None)
    if batch is None:
        batch = self._cocoon_batch = _Batch()
    batch.frames.append(data)
    try:
        async with self._write_lock:
            if not batch.sent:
                if self._cocoon_batch is batch:
                    self._cocoon_batch = None
                batch.sent = True
                frames = batch.frames
                try:
                    await self.secured_conn.write(frames[0] if len(frames) == 1 else b"".join(frames))
                except Exception as exc:
                    batch.error = exc
                    raise
                except BaseException:  # cancelled mid-write: what reached the socket is unknown
                    batch.error = RawConnError("a coalesced yamux write was interrupted")
                    raise
            elif batch.error is not None:
                raise batch.error
    except BaseException:
        if not batch.sent:
            batch.frames.remove(data)
        raise
    await trio.lowlevel.checkpoint()


async def _read_data_body_buffered(self: Any, length: int) -> bytes:
    """``Yamux._read_data_body`` without its per-frame timer when the body is already decrypted and buffered
    (a Noise message carrying several frames, as :func:`_write_frame_coalescing` sends them): nothing to
    wait for, so no ``fail_after`` scope, no environment lookup for its timeout."""
    conn = self.secured_conn
    if isinstance(conn, SecureSession) and conn.high_watermark - conn.low_watermark >= length:
        return await read_exactly(conn, length)
    return await _original_read_data_body(self, length)


def install() -> None:
    """Rebind the three methods (idempotent); refuse another py-libp2p, whose yamux may differ."""
    require_pinned_libp2p("the yamux patch", "check libp2p/stream_muxer/yamux/yamux.py "
                          "_auto_tune_and_send_window_update, _write_frame and _read_data_body and update "
                          "cocoon_node/mesh/yamux_patch.py")
    stream_cls: Any = yamux.YamuxStream
    conn_cls: Any = yamux.Yamux
    stream_cls._auto_tune_and_send_window_update = _credit_like_go_yamux
    conn_cls._write_frame = _write_frame_coalescing
    conn_cls._read_data_body = _read_data_body_buffered
