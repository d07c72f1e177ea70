"""What one round trip between two processes costs on this machine, sleeping and spinning.

Every database statement of the token path is such a round trip (the worker sends, the
PostgreSQL backend wakes, answers, the worker wakes), and so is every request (wrk and the
worker). When a process waits by sleeping, waking it again costs the kernel (and, in a
virtual machine, the hypervisor) far more than passing the bytes; spinning instead shows
the cost of the transport alone. On the machines bench/README.md quotes, the difference is
most of what a statement costs the worker, which is why the harness prints it with every
run: it tells how much of a gap to an in-memory peer is the machine's price of waiting.
"""

from __future__ import annotations

import os
import socket
import time

_MESSAGE = b"x" * 64


def _echo(sock: socket.socket, spin: bool) -> None:
    """The child: echo each message until the parent closes its end."""
    sock.setblocking(not spin)
    while True:
        try:
            data = sock.recv(len(_MESSAGE))
        except BlockingIOError:
            continue
        if not data:
            return
        sock.sendall(data)


def _recv_exactly(sock: socket.socket, size: int) -> None:
    got = 0
    while got < size:
        try:
            chunk = sock.recv(size - got)
        except BlockingIOError:
            continue
        if not chunk:
            raise RuntimeError("the echo process went away")
        got += len(chunk)


def _one(rounds: int, spin: bool) -> tuple[float, float]:
    """(wall us, this process's CPU us) per round trip with a forked echo process."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        parent.close()
        try:
            _echo(child, spin)
        finally:
            os._exit(0)
    child.close()
    try:
        parent.setblocking(not spin)
        for _ in range(min(rounds, 100)):  # both processes running and their pages touched
            parent.sendall(_MESSAGE)
            _recv_exactly(parent, len(_MESSAGE))
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            parent.sendall(_MESSAGE)
            _recv_exactly(parent, len(_MESSAGE))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        parent.close()
        os.waitpid(pid, 0)
    return wall / rounds * 1e6, cpu / rounds * 1e6


def round_trip_cost(rounds: int = 5000) -> dict[str, float | None]:
    """One measurement of each way to wait (well under a second here); run it while quiet.

    Spinning needs a core for each process: on a single core it is not measured (None).
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    sleeping_wall, sleeping_cpu = _one(rounds, spin=False)
    spinning_wall = _one(rounds, spin=True)[0] if (os.cpu_count() or 1) >= 2 else None
    return {
        "sleeping_round_trip_us": round(sleeping_wall, 1),
        "sleeping_cpu_per_side_us": round(sleeping_cpu, 1),
        "spinning_round_trip_us": round(spinning_wall, 1) if spinning_wall is not None else None,
    }


def describe(cost: dict[str, float | None]) -> str:
    spinning = cost["spinning_round_trip_us"]
    return (
        f"a round trip between two processes takes {cost['sleeping_round_trip_us']:.0f} us "
        f"when both sleep while they wait ({cost['sleeping_cpu_per_side_us']:.0f} us of CPU "
        "on each side)"
        + (f", {spinning:.0f} us when both spin" if spinning is not None else "")
        + "; each database statement and each request pays the first"
    )
