"""`keyservice serve --workers N`: N uvicorn workers, each with a listening socket of its own.

uvicorn's own supervisor hands every worker one shared listening socket. The worker that
wakes first accepts every connection waiting, and keep-alive connections stay where they
landed: the benchmark's 32 connections split 27/5 over two workers, one saturated while
the other idled. Here each worker binds its own socket to the address with SO_REUSEPORT and
the kernel spreads new connections over the sockets (15/17; +10 % exchanges at 32
connections, bench/README.md).

The parent does for these workers what uvicorn's supervisor did: starts them, replaces one
that dies, gives up when one cannot start at all, and on SIGTERM or SIGINT asks each to
shut down gracefully and waits for it. Not carried over: uvicorn's health ping of workers
(a worker hung with the GIL held is not replaced) and its SIGHUP/SIGTTIN/SIGTTOU handling
(SIGHUP is ignored here rather than fatal). It holds no listening socket itself: one left open
in the parent would keep receiving its share of connections and never accept them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING, Any

from uvicorn.config import STARTUP_FAILURE

if TYPE_CHECKING:
    from keyservice.metrics import WorkerMetrics

log = logging.getLogger("uvicorn.error")
_spawn = multiprocessing.get_context("spawn")

APP = "keyservice.main:create_app"
BACKLOG = 2048  # uvicorn's default
POLL_SECONDS = 0.5


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    family, _type, _proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, address


def listening_socket(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A TCP socket bound to host:port and listening; with SO_REUSEPORT unless told not to."""
    family, address = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def check_address(host: str, port: int) -> None:
    """Raise OSError if host:port cannot be listened on by us alone.

    Bound without SO_REUSEPORT, so that a port another server holds fails here, loudly,
    even one that set SO_REUSEPORT itself (the workers would silently share it otherwise).
    """
    listening_socket(host, port, reuse_port=False).close()


def _worker(options: dict[str, Any], host: str, port: int, log_format: str = "text") -> None:
    """One worker process: its own socket, then uvicorn's server on it until told to stop."""
    import uvicorn

    from keyservice.cli import configure_logging

    config = uvicorn.Config(APP, **options)  # also configures uvicorn's logging here
    # Our own loggers (the access log, warnings) as `serve --workers 1` configures them:
    # a spawned worker starts with none of the parent's logging set up.
    configure_logging(str(options.get("log_level", "info")).upper(), log_format)
    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        log.error("worker %d cannot listen on %s:%d: %s", os.getpid(), host, port, exc)
        sys.exit(STARTUP_FAILURE)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        # A spawned process ends in os._exit(), without the atexit hook that writes out
        # the log lines still waiting in our batching handler.
        logging.shutdown()


class Supervisor:
    def __init__(
        self,
        options: dict[str, Any],
        *,
        host: str,
        port: int,
        workers: int,
        log_format: str = "text",
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.options = options
        self.log_format = log_format
        self.metrics = metrics  # the workers' metrics directory, told of each that ends
        self.host = host
        self.port = port
        self.workers = workers
        self.stop = threading.Event()
        self.processes: list[SpawnProcess] = []

    def _start_one(self) -> SpawnProcess:
        process = _spawn.Process(
            target=_worker,
            args=(self.options, self.host, self.port, self.log_format),
            name="keyservice-worker",
        )
        process.start()
        log.info("started worker process [%s]", process.pid)
        return process

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit status 0) or a worker that cannot start (3)."""
        check_address(self.host, self.port)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        # Not the default (the parent would die and leave its workers behind): restart the
        # service to take new settings.
        signal.signal(signal.SIGHUP, lambda *_: log.warning("SIGHUP ignored: restart to reload"))
        log.info("started parent process [%s]", os.getpid())
        status = 0
        try:
            self.processes = [self._start_one() for _ in range(self.workers)]
            host = f"[{self.host}]" if ":" in self.host else self.host
            log.info(
                "%d worker processes starting to serve http://%s:%d (press CTRL+C to quit)",
                self.workers,
                host,
                self.port,
            )
            while not self.stop.wait(POLL_SECONDS):
                status = self._replace_dead()
                if status:
                    break
        finally:
            self._stop_all()
        log.info("stopping parent process [%s]", os.getpid())
        return status

    def _replace_dead(self) -> int:
        for index, process in enumerate(self.processes):
            if process.is_alive():
                continue
            process.join()
            replaced = process.exitcode != STARTUP_FAILURE and not self.stop.is_set()
            if self.metrics is not None:
                self.metrics.worker_exited(process.pid, replaced=replaced)
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker process [%s] could not start; stopping", process.pid)
                return STARTUP_FAILURE
            if self.stop.is_set():
                return 0
            log.warning(
                "worker process [%s] exited (%s); starting another", process.pid, process.exitcode
            )
            self.processes[index] = self._start_one()
        return 0

    def _stop_all(self) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        # uvicorn's graceful shutdown is bounded by timeout_graceful_shutdown; a little more
        # for the lifespan's own shutdown, then whatever is left is killed.
        grace = float(self.options.get("timeout_graceful_shutdown") or 20) + 10
        deadline = time.monotonic() + grace
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker process [%s] did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
            if self.metrics is not None and not process.is_alive():
                self.metrics.worker_exited(process.pid, replaced=False)
