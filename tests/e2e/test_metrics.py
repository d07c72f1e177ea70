"""Prometheus metrics of the real `keyservice serve`: off by default (no listener, no
files), and with `--workers N` the sum of every worker's counts, served by the parent on a
listener of its own (keyservice/metrics.py). What is counted: tests/test_metrics.py."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.reliability.support import (
    LISTEN,
    Server,
    admin_key,
    free_port,
    sockets_of,
    tcp_sockets,
)
from tests.test_metrics import Samples, parse, tokens

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, SO_REUSEPORT"),
]

EXCHANGES = 40
REFUSALS = 6


def _server(tmp_path: Path, *, workers: int, metrics_port: int | None) -> Server:
    settings = {} if metrics_port is None else {"metrics_port": str(metrics_port)}
    server = Server(database_url=None, data_dir=tmp_path / "server", workers=workers, **settings)
    # Where the metrics' private directory would go (tempfile honours TMPDIR).
    server.env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    return server


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports that process `pid` holds a listening socket on."""
    held = sockets_of(pid)
    return {port for inode, port in tcp_sockets(LISTEN).items() if inode in held}


def _exchange_and_refuse(server: Server) -> dict:
    key = admin_key(server.base_url, ["metrics"])[0]
    # A new connection per request: the kernel spreads connections, not requests.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.base_url, timeout=30, limits=limits) as http:
        for _ in range(EXCHANGES):
            issued = http.post(
                "/token", data={"grant_type": "client_credentials", "api_key": key["api_key"]}
            )
            assert issued.status_code == 200, issued.text
        wrong = key["api_key"][:-6] + "000000"
        for _ in range(REFUSALS):
            refused = http.post(
                "/token", data={"grant_type": "client_credentials", "api_key": wrong}
            )
            assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        assert http.get("/metrics").status_code == 404  # not on the API's port
    return key


def _scrape(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def _issued_per_worker(directory: Path) -> dict[int, float]:
    """Each process's own count of issued client_credentials tokens, from its file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        samples: Samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for metric in MultiProcessCollector.merge([str(path)])
            for sample in metric.samples
        }
        counts[pid] = tokens(samples, "client_credentials", "issued")
    return counts


def test_off_by_default_no_listener_and_no_files(tmp_path):
    server = _server(tmp_path, workers=2, metrics_port=None)
    server.start()
    try:
        _exchange_and_refuse(server)
        assert server.process is not None
        assert _listening_ports(server.process.pid) == set()
        for worker in server.worker_pids():
            assert _listening_ports(worker) == {server.port}
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        assert server.terminate() == 0


def test_several_workers_counts_add_up_in_the_parent(tmp_path):
    metrics_port = free_port(24000)
    server = _server(tmp_path, workers=2, metrics_port=metrics_port)
    server.start()
    try:
        key = _exchange_and_refuse(server)
        text = _scrape(metrics_port)
        samples = parse(text)
        assert tokens(samples, "client_credentials", "issued") == EXCHANGES
        assert tokens(samples, "client_credentials", "refused", "invalid_client") == REFUSALS
        assert tokens(samples, "password", "issued") == 1  # admin_key's sign-in
        assert samples[("keyservice_worker_restarts_total", frozenset())] == 0
        for secret in (key["api_key"], key["client_secret"], key["client_id"], key["id"]):
            assert secret not in text

        # Both workers answered some of the exchanges, and their counts make the total.
        (directory,) = (tmp_path / "tmp").iterdir()
        workers = server.worker_pids()
        per_worker = _issued_per_worker(directory)
        assert sorted(per_worker) == sorted(workers), (per_worker, workers)
        assert all(count > 0 for count in per_worker.values()), per_worker
        assert sum(per_worker.values()) == EXCHANGES

        # The parent serves them; the workers listen on the API's port only.
        assert server.process is not None
        assert _listening_ports(server.process.pid) == {metrics_port}
        for worker in workers:
            assert _listening_ports(worker) == {server.port}

        # A worker that dies is replaced; what it counted is still in the sum.
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = server.worker_pids()
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.2)
        samples = parse(_scrape(metrics_port))
        assert samples[("keyservice_worker_restarts_total", frozenset())] == 1
        assert tokens(samples, "client_credentials", "issued") == EXCHANGES
    finally:
        assert server.terminate() == 0
    # The directory goes with the server: no count of this run is added to the next.
    assert list((tmp_path / "tmp").iterdir()) == []


def test_one_worker_serves_its_own_metrics_from_memory(tmp_path):
    metrics_port = free_port(24000)
    server = _server(tmp_path, workers=1, metrics_port=metrics_port)
    # An operator's own multiprocess setting would make them files nobody reads.
    server.env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "tmp")
    server.start()
    try:
        _exchange_and_refuse(server)
        samples = parse(_scrape(metrics_port))
        assert tokens(samples, "client_credentials", "issued") == EXCHANGES
        assert tokens(samples, "client_credentials", "refused", "invalid_client") == REFUSALS
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        # uvicorn's single process ends by raising SIGTERM again once it has drained.
        assert server.terminate() == -signal.SIGTERM
