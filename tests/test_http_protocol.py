"""keyservice/http_protocol.py: a response leaves in one write, and nothing is lost or late."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from keyservice.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """What a socket transport would have been asked to do, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        assert not self.closing, "written after close"
        self.events.append(("write", bytes(data)))

    def writes(self) -> list[bytes]:
        return [data for kind, data in self.events if kind == "write"]

    def close(self) -> None:
        self.events.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.events.append(("abort", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.events.append(("pause_reading", b""))

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )


async def test_writes_in_one_turn_of_the_loop_leave_as_one() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(memoryview(b"body"))
    transport.write(b"")
    assert real.writes() == []  # not yet: at the end of this turn
    assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
    await asyncio.sleep(0)
    assert real.writes() == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert real.writes()[-1] == b"next"


async def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"last words")
    transport.close()
    assert real.events == [("write", b"last words"), ("close", b"")]
    await asyncio.sleep(0)  # the scheduled flush finds nothing to send, and sends nothing
    assert real.writes() == [b"last words"]

    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"never")
    transport.abort()
    await asyncio.sleep(0)
    assert real.events == [("abort", b"")]


async def test_everything_else_is_the_transport_itself() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.pause_reading()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 50000)
    assert real.events == [("pause_reading", b"")]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = b'{"status":"ok"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _serve_one(protocol_class: type[Any], requests: bytes, answers: int) -> list[bytes]:
    config = uvicorn.Config(_app, http=protocol_class, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    real = RecordingTransport()
    protocol.connection_made(real)
    protocol.data_received(requests)
    for _ in range(100):
        await asyncio.sleep(0)
        if sum(data.count(b"HTTP/1.1 200") for data in real.writes()) == answers:
            break
    await asyncio.sleep(0)
    protocol.connection_lost(None)
    return real.writes()


async def test_a_response_leaves_in_one_write_as_uvicorn_would_send_it_in_two() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    request = b"GET /healthz HTTP/1.1\r\nHost: keyservice.test\r\n\r\n"
    plain = await _serve_one(HttpToolsProtocol, request, 1)
    ours = await _serve_one(CoalescingHttpToolsProtocol, request, 1)
    assert len(plain) == 2  # what this replaces: the headers, then the body
    assert len(ours) == 1
    assert ours[0] == b"".join(plain)  # the same bytes
    assert ours[0].endswith(b'\r\n\r\n{"status":"ok"}')


async def test_pipelined_requests_each_get_their_whole_answer_in_order() -> None:
    request = b"GET /a HTTP/1.1\r\nHost: keyservice.test\r\n\r\n"
    writes = await _serve_one(CoalescingHttpToolsProtocol, request * 3, 3)
    stream = b"".join(writes)
    assert stream.count(b"HTTP/1.1 200 OK") == 3
    assert stream.count(b'{"status":"ok"}') == 3
    assert stream.endswith(b'{"status":"ok"}')


async def test_a_large_body_is_written_at_once_so_back_pressure_still_works() -> None:
    from keyservice.http_protocol import FLUSH_BYTES

    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    chunk = b"x" * (FLUSH_BYTES // 2)
    transport.write(chunk)
    assert real.writes() == []
    transport.write(chunk)  # now FLUSH_BYTES are pending: written in this turn, not later
    assert real.writes() == [b"HTTP/1.1 200 OK\r\n\r\n" + chunk + chunk]
    assert transport.get_write_buffer_size() == 0
