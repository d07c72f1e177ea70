"""What one round trip between two processes costs on this machine, sleeping and spinning.

Every database statement of the token path is such a round trip (the worker sends, the
PostgreSQL backend wakes, answers, the worker wakes), and so is every request (wrk and the
worker). When a process waits by sleeping, waking it again costs the kernel (and, in a
virtual machine, the hypervisor) far more than passing the bytes; spinning instead shows
the cost of the transport alone. On the machines bench/README.md quotes, the difference is
most of what a statement costs the worker at low concurrency, where cores go idle between
requests, which is why the harness prints it with every run: it tells how much of a gap to
an in-memory peer may be the machine's price of waiting.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

_MESSAGE = b"x" * 64

# The echo process: a fresh interpreter rather than a fork (the harness and the test run
# may hold threads, and forking those is unsafe). It echoes each message until the other
# end is closed; spinning, it polls a non-blocking socket instead of sleeping in recv().
_ECHO = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
sock.setblocking(sys.argv[2] != "spin")
while True:
    try:
        data = sock.recv(64)
    except BlockingIOError:
        continue
    if not data:
        break
    sock.sendall(data)
"""


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
    """(wall us, this process's CPU us) per round trip with an echo process."""
    parent, child = socket.socketpair()
    try:
        with child:
            echo = subprocess.Popen(
                [sys.executable, "-c", _ECHO, str(child.fileno()), "spin" if spin else "sleep"],
                pass_fds=(child.fileno(),),
            )
    except BaseException:
        parent.close()
        raise
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
        parent.close()  # the echo process sees the end and exits
        try:
            echo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait()
    return wall / rounds * 1e6, cpu / rounds * 1e6


def round_trip_cost(rounds: int = 5000) -> dict[str, float | None]:
    """One measurement of each way to wait (well under a second here); run it while quiet:
    with the CPUs busy a sleeping process is woken far more cheaply (bench/README.md).

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
        + "; a statement or request pays the first where a core goes idle"
    )
