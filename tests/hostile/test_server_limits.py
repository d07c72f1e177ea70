"""The same limits through the real server (uvicorn + httptools), on raw sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.reliability.support import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(database_url=None, data_dir=tmp_path_factory.mktemp("limits"), workers=1)
    running.start()
    try:
        yield running
    finally:
        running.terminate()


def exchange(server: Server, request: bytes) -> bytes:
    """Send raw bytes; return what the server answered before closing (or b"")."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        try:
            connection.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse and close before reading everything
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b'"}' in chunks[-1]:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


@pytest.mark.parametrize("size", [40_000, 1_000_000])
def test_huge_header(server, size):
    answer = exchange(
        server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    )
    assert status_of(answer) in (400, 431), answer[:300]


def test_many_headers(server):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    answer = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_of(answer) == 431


def test_chunked_body_over_the_limit(server):
    chunk = b"a" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    answer = exchange(
        server,
        b"POST /api-keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert status_of(answer) in (401, 413), answer[:300]  # no token: 401 may come first
    answer = exchange(
        server,
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert status_of(answer) in (400, 413), answer[:300]


def test_invalid_utf8_in_request_line_and_headers(server):
    answer = exchange(server, b"GET /healthz\xff HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer == b"" or status_of(answer) < 500
    answer = exchange(
        server, b"GET /me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    )
    assert status_of(answer) == 401
    answer = exchange(
        server,
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Authorization: Basic \xff\xfe\r\nContent-Length: 29\r\n\r\ngrant_type=client_credentials",
    )
    assert status_of(answer) == 401
    assert b"invalid_client" in answer
