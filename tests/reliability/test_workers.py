"""`keyservice serve --workers N`: each worker accepts on a socket of its own (workers.py).

With one shared listening socket the first worker to wake took nearly every connection of a
burst (27 of 32 in the benchmark); with a SO_REUSEPORT socket per worker the kernel spreads
them. Replacement of a killed worker and graceful SIGTERM are covered by the other tests
here, against the same supervisor.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.reliability.support import (
    ESTABLISHED,
    LISTEN,
    Server,
    free_port,
    sockets_of,
    tcp_sockets,
)

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

CONNECTIONS = 32


def _sockets(port: int, state: str) -> set[int]:
    """Inodes of the TCP sockets with local port `port` in `state`."""
    return {inode for inode, local in tcp_sockets(state).items() if local == port}


def _held_by(pid: int, inodes: set[int]) -> set[int]:
    return sockets_of(pid) & inodes


def test_each_worker_listens_on_its_own_socket_and_connections_spread(tmp_path):
    server = Server(database_url=None, data_dir=tmp_path / "server", workers=2)
    server.start()
    clients: list[socket.socket] = []
    try:
        workers = server.worker_pids()
        assert len(workers) == 2, workers
        assert server.process is not None
        listening = _sockets(server.port, LISTEN)
        per_worker = {pid: _held_by(pid, listening) for pid in workers}
        assert all(len(held) == 1 for held in per_worker.values()), per_worker
        assert len(set().union(*per_worker.values())) == 2, per_worker  # two sockets
        # The parent holds none: a socket nobody accepts on would swallow connections.
        assert _held_by(server.process.pid, listening) == set()

        # A burst of keep-alive connections, each answered once and kept open.
        for _ in range(CONNECTIONS):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            clients.append(client)
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200"), "no answer"
        established = _sockets(server.port, ESTABLISHED)
        counts = {pid: len(_held_by(pid, established)) for pid in workers}
        assert sum(counts.values()) == CONNECTIONS, counts
        # Spread by a hash of each connection's address: a split this uneven or worse has a
        # chance of about 1 in 10^6 (one shared socket gave 27/5 and worse).
        assert min(counts.values()) >= 4, counts
    finally:
        for client in clients:
            client.close()
        code = server.terminate()
    assert code == 0, server.log()


def test_serve_with_workers_refuses_a_port_another_process_holds(tmp_path):
    port = free_port(19000)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # would share, silently
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from keyservice.cli import main; main()",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            env={
                "PATH": "/usr/bin:/bin",
                "KEYSERVICE_DATA_DIR": str(tmp_path / "data"),
                "KEYSERVICE_LOG_LEVEL": "WARNING",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "in use" in result.stderr.lower(), result.stderr
    assert not (tmp_path / "data").exists()  # refused before creating anything


def test_sighup_leaves_the_server_serving(tmp_path):
    # Its default action would kill the parent and orphan the workers.
    import httpx

    server = Server(database_url=None, data_dir=tmp_path / "server", workers=2)
    server.start()
    try:
        assert server.process is not None
        before = sorted(server.worker_pids())
        server.process.send_signal(signal.SIGHUP)
        time.sleep(1.5)  # three of the supervisor's polls
        assert server.process.poll() is None
        assert sorted(server.worker_pids()) == before
        assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
    finally:
        code = server.terminate()
    assert code == 0, server.log()


def test_workers_write_our_log_lines_as_a_single_worker_does(tmp_path):
    # A spawned worker starts with no logging configured: the access log and our warnings
    # used to be silent with --workers > 1 (uvicorn's supervisor set up only its own).
    import httpx

    server = Server(database_url=None, data_dir=tmp_path / "server", workers=2, log_level="INFO")
    server.start()
    try:
        response = httpx.get(f"{server.base_url}/healthz?probe=1", timeout=5)
        assert response.status_code == 200
        deadline = time.monotonic() + 5
        while "GET /healthz 200" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        code = server.terminate()
    log = server.log()
    assert code == 0, log
    assert "INFO keyservice.access: GET /healthz 200" in log, log
    assert "probe=1" not in log  # never the query string
    # Where it serves, as one worker's "Uvicorn running on ..." says: the parent's lines
    # named only process ids, so nothing on the terminal said which address to open.
    assert f"2 worker processes starting to serve {server.base_url}" in log, log
