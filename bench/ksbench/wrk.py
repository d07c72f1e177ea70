"""Run wrk with one of the bench/lua scripts and read the JSON its done() prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"


def ensure_wrk() -> str:
    """Return the path of wrk, installing Debian's package first if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing and we are not root: install it (apt-get install wrk)")
    print("wrk is missing: installing it from Debian (apt-get install -y wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, timeout=600, check=True)
        subprocess.run(install, env=env, timeout=600, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk but it is not on PATH")
    return found


def version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else ""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    non_2xx_3xx: int
    statuses: dict[str, int]
    chain_breaks: int
    raw: dict[str, Any] = field(repr=False)

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx_3xx

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "errors": self.errors,
            "socket_errors": self.socket_errors,
            "non_2xx_3xx": self.non_2xx_3xx,
            "statuses": self.statuses,
            "chain_breaks": self.chain_breaks,
        }


def parse(stdout: str) -> WrkResult:
    """Read the BENCH_RESULT line that bench/lua/common.lua's done() prints."""
    line = next((x for x in stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no BENCH_RESULT line:\n{stdout[-2000:]}")
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    statuses = {str(k): int(v) for k, v in raw.get("statuses", {}).items()}
    if raw.get("statuses_counted"):
        bad = sum(n for code, n in statuses.items() if not 200 <= int(code) < 400)
    else:
        # wrk's own counter: responses with a status above 399.
        bad = int(raw.get("status_errors", 0))
    sock = sum(int(v) for v in raw.get("socket_errors", {}).values())
    duration = float(raw["duration_s"])
    requests = int(raw["requests"])
    lat = raw["latency_ms"]
    return WrkResult(
        requests=requests,
        duration_s=duration,
        rps=requests / duration if duration > 0 else 0.0,
        p50_ms=float(lat["p50"]),
        p90_ms=float(lat["p90"]),
        p99_ms=float(lat["p99"]),
        max_ms=float(lat["max"]),
        socket_errors=sock,
        non_2xx_3xx=bad,
        statuses=statuses,
        chain_breaks=int(raw.get("chain_breaks", 0)),
        raw=raw,
    )


def run(
    wrk: str,
    *,
    script: str,
    url: str,
    threads: int,
    connections: int,
    duration: int,
    args: tuple[str, ...] = (),
) -> WrkResult:
    """Run wrk once against a loopback URL and return its parsed result."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"refusing to load anything but loopback: {url}")
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(LUA_DIR / script),
        url,
    ]
    if args:
        argv += ["--", *args]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 60, start_new_session=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    return parse(out.stdout)
