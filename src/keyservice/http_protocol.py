"""uvicorn's httptools protocol, sending each response in one write instead of two.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, and the body when it sends `http.response.body`: two `send()`
system calls and two TCP segments for every small response. On loopback each send also
runs the receiver's side of the TCP stack, and the two were ~20 % of a worker's CPU
under load (py-spy, bench/README.md "sixth pass"). Here the writes made in one turn of
the event loop are joined and sent at the end of that turn: the app sends both messages
without waiting in between, so a small response leaves in one segment. Nothing waits
longer than the current turn; closing the connection sends what is pending first; and
once FLUSH_BYTES are pending they are written at once, so that a large or streamed body
meets the socket's back-pressure (uvicorn's pause_writing) as it would without this.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """A transport whose writes within one event-loop turn go out as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        chunk = bytes(data)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        # Called early (a large body, a close), it leaves the scheduled call in place: that
        # one sends whatever was written since, or finds nothing.
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, pause_reading, get_extra_info, ...) as the transport.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
