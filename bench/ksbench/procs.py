"""Child processes in their own session, free ports, and resident memory read from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Service:
    """A server process started in a new session, so that its whole group can be stopped."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after `grace` seconds."""
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(self.pid):
            self.proc.poll()
            time.sleep(0.1)
        if _group_alive(self.pid):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; fields follow the last ")".
    return raw.rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """Return the pids of all live descendants of `root`, read from /proc."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(pid)
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in kB; empty if it is gone."""
    result: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    result[key] = int(value.split()[0])
    except OSError:
        return {}
    return result


def worker_pids(root: int) -> list[int]:
    """The processes that serve requests under `root`: its descendants, or itself if none.

    Helpers that serve nothing (multiprocessing's resource tracker) are left out.
    """
    pids = [pid for pid in descendants(root) if "resource_tracker" not in cmdline(pid)]
    return pids or [root]


class RssSampler:
    """Poll VmRSS of the workers under a root pid in a thread; keep the maximum per pid."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root = root
        self.interval = interval
        self.peak_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pids = worker_pids(self.root)
        last_scan = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_scan > 1.0:
                pids = worker_pids(self.root)
                last_scan = time.monotonic()
            for pid in pids:
                rss = memory_kb(pid).get("VmRSS")
                if rss is not None and rss > self.peak_kb.get(pid, 0):
                    self.peak_kb[pid] = rss
            self._stop.wait(self.interval)


class RssSeries:
    """Read VmRSS of each worker under a root pid every `interval` seconds, in a thread.

    `samples` holds (seconds since start, {pid: kB}); the first is taken at 0 s, and on
    leaving one more is taken unless the last is less than a second old, so that the
    series ends when the load did.
    """

    def __init__(self, root: int, interval: float = 10.0) -> None:
        self.root = root
        self.interval = interval
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-series", daemon=True)

    def __enter__(self) -> RssSeries:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.samples or time.monotonic() - self._t0 - self.samples[-1][0] >= 1.0:
            self._sample()

    def _sample(self) -> None:
        at = time.monotonic() - self._t0
        rss = {}
        for pid in worker_pids(self.root):
            kb = memory_kb(pid).get("VmRSS")
            if kb is not None:
                rss[pid] = kb
        self.samples.append((at, rss))

    def _run(self) -> None:
        tick = 0
        while True:
            self._sample()
            tick += 1
            # On a fixed schedule (0, 10, 20 s ...): a slow /proc scan does not add drift.
            delay = max(0.0, self._t0 + tick * self.interval - time.monotonic())
            if self._stop.wait(delay):
                return


def high_water_marks(root: int) -> dict[int, dict[str, object]]:
    """VmHWM (the kernel's peak RSS since start) and VmRSS of each worker under `root`."""
    marks: dict[int, dict[str, object]] = {}
    for pid in worker_pids(root):
        mem = memory_kb(pid)
        if mem:
            marks[pid] = {
                "vm_hwm_mb": round(mem.get("VmHWM", 0) / 1024, 1),
                "vm_rss_mb": round(mem.get("VmRSS", 0) / 1024, 1),
                "cmdline": cmdline(pid)[:120],
            }
    return marks


def _cpu_jiffies(pid: int) -> int:
    fields = _stat_fields(pid)
    # After the command name: state is fields[0], utime fields[11], stime fields[12].
    return int(fields[11]) + int(fields[12]) if fields else 0


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


class CpuAccount:
    """How much of the machine's CPU went to processes that are not part of the benchmark.

    The machine is shared: a test suite running next to the benchmark takes CPU from the
    server and wrk and lowers the figures. Over one run this compares the CPU time of all
    processes (/proc/stat) with that of ours: the process trees under `roots` (server,
    peer), this process and its reaped children (wrk), and the PostgreSQL backends whose
    command line names `database`. The difference, as a share of the machine, is
    "foreign CPU"; a run with much of it is suspect.
    """

    def __init__(self, roots: list[int], database: str) -> None:
        self.roots = roots
        self.database = database

    def _ours(self) -> dict[int, tuple[str, int]]:
        """Our processes: pid -> (group, CPU jiffies); groups are root pids and "postgres"."""
        groups: dict[int, str] = {}
        for root in self.roots:
            for pid in (root, *descendants(root)):
                groups[pid] = str(root)
        for pid in _all_pids():
            if self.database in cmdline(pid) and cmdline(pid).startswith("postgres"):
                groups[pid] = "postgres"
        return {pid: (group, _cpu_jiffies(pid)) for pid, group in groups.items()}

    def __enter__(self) -> CpuAccount:
        self._t0 = time.monotonic()
        self._busy0, self._total0 = _machine_jiffies()
        self._ours0 = self._ours()
        t = os.times()
        self._self0 = t.user + t.system + t.children_user + t.children_system
        return self

    def __exit__(self, *_exc: object) -> None:
        busy1, total1 = _machine_jiffies()
        ours1 = self._ours()
        t = os.times()
        self_s = t.user + t.system + t.children_user + t.children_system - self._self0
        hz = os.sysconf("SC_CLK_TCK")
        # CPU seconds per group: each process tree under a root (by the root's pid),
        # "postgres" (the throwaway database's backends) and "load" (wrk and this harness).
        self.cpu_s: dict[str, float] = {"load": self_s}
        for pid, (group, jiffies) in ours1.items():
            used = jiffies - self._ours0.get(pid, (group, 0))[1]
            self.cpu_s[group] = self.cpu_s.get(group, 0.0) + used / hz
        ours_j = round(sum(self.cpu_s.values()) * hz)
        span = max(total1 - self._total0, 1)
        self.machine_busy_pct = round(100 * (busy1 - self._busy0) / span, 1)
        self.ours_pct = round(100 * ours_j / span, 1)
        self.foreign_pct = round(max(0.0, self.machine_busy_pct - self.ours_pct), 1)
