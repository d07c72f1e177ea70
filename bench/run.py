"""Benchmark keyservice at its token endpoint and a Bearer read, against its own ceiling.

Creates a throwaway PostgreSQL database, starts `keyservice serve` with production-like
settings, seeds users and API keys through the public interface, then drives wrk (with the
Lua scripts in bench/lua) through four scenarios at each connection count:

  healthz   GET /healthz: no auth, no database, the framework's ceiling      (d)
  exchange  POST /token client_credentials, rotating over the API keys      (a)
  refresh   POST /token refresh_token, one single-use chain per connection  (b)
  read      GET /me/token (--read-path) with a Bearer JWT                   (c)

With --peer it also runs node-oidc-provider 9 (bench/peer) with the same exchange load.
It prints a table and ratios and writes everything as JSON to bench/results/. See
bench/README.md.

--seed-rows N first writes N refresh tokens and N audit events straight into the database
(is the token path flat as the tables grow?); --flat N answers that in one run, with a
second service on a database of N rows measured in pairs with the first; --soak SECONDS
instead runs one scenario for that long and watches each worker's resident memory (does it
stay flat?).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import compare
import httpx
from ksbench import bulk, peer, pg, procs, seed, wake, wrk

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
ADMIN_USERNAME = "admin"

# (key, label in the table, letter used in the ratios)
SCENARIOS = [
    ("healthz", "GET /healthz (ceiling)", "d"),
    ("exchange", "POST /token client_credentials", "a"),
    ("refresh", "POST /token refresh_token chains", "b"),
    ("read", "GET {read_path} Bearer", "c"),
]
DEFAULT_SCENARIOS = "healthz,exchange,refresh,read"
SOAK_SCENARIO = "exchange"
# node-oidc-provider's own default is one process (node is single-threaded), the set-up behind
# the reference figure; --peer also measures it as a cluster of --workers processes.
DEFAULT_PEER_WORKERS = 1
SOAK_SAMPLE_S = 10  # seconds between two readings of each worker's VmRSS
SOAK_WARMUP_S = 30  # readings before this are shown but not judged
SOAK_TOLERANCE = 0.10  # "stable": last / first reading after the warm-up within +-10%
MAIN_TARGET = "keyservice"
FLAT_TARGET = "keyservice_rows"  # --flat: the second service, on the database with the rows
FLAT_TOLERANCE = compare.DEFAULT_TOLERANCE  # "flat" as bench/compare.py judges it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--connections",
        default="8,32",
        help="comma-separated connection counts (default 8,32)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each measurement, interleaved; the table shows medians (default 3)",
    )
    p.add_argument(
        "--workers", type=int, default=cpus, help=f"keyservice serve --workers (default {cpus})"
    )
    p.add_argument(
        "--wrk-threads",
        type=int,
        default=1,
        help="wrk threads for every run, at most one per connection (default 1)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="seconds of discarded load per scenario before measuring (default 3; 0 = none)",
    )
    p.add_argument(
        "--quiet-below",
        type=float,
        default=0,
        metavar="PCT",
        help="before each run, wait until other processes use less than PCT%% of the "
        "machine's CPU (measured over 1 s), for at most --quiet-wait seconds (default: off)",
    )
    p.add_argument(
        "--quiet-wait",
        type=int,
        default=60,
        help="the most seconds to wait for quiet before each run (default 60)",
    )
    p.add_argument(
        "--read-path",
        default="/me/token",
        help="path of the Bearer read (default /me/token: the token checked, no database "
        "work; /me also reads the caller's keys for its warnings, a database round trip)",
    )
    p.add_argument(
        "--users", type=int, default=20, help="users to seed, 5 API keys each (default 20)"
    )
    p.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated subset of {DEFAULT_SCENARIOS} (default: all; with --soak: "
        f"one, default {SOAK_SCENARIO})",
    )
    p.add_argument(
        "--seed-rows",
        type=int,
        default=0,
        metavar="N",
        help="after seeding through the API, insert N refresh tokens and N audit events "
        "directly (INSERT ... SELECT FROM generate_series), then VACUUM ANALYZE them "
        "(default 0)",
    )
    p.add_argument(
        "--seed-rebuild-indexes",
        action="store_true",
        help="with --seed-rows: drop the tables' indexes and foreign keys and build them "
        "again after the inserts (about 2.5x faster, but the indexes come out densely "
        "packed, unlike grown ones, and the first inserts then split pages everywhere: "
        "the c32 exchange p99 doubled that way, not with grown indexes)",
    )
    p.add_argument(
        "--soak",
        type=int,
        default=0,
        metavar="SECONDS",
        help=f"soak mode: one scenario at the first --connections value for SECONDS "
        f"(>= {SOAK_WARMUP_S + SOAK_SAMPLE_S}) in one wrk run, reading each worker's VmRSS "
        f"every {SOAK_SAMPLE_S} s; passes when the last reading is within "
        f"+-{SOAK_TOLERANCE:.0%}% of the first after {SOAK_WARMUP_S} s (default 0: off; "
        "--duration, --repeat and --warmup do not apply)",
    )
    p.add_argument(
        "--flat",
        type=int,
        default=0,
        metavar="N",
        help="flatness in one run: a second service on a second database holding N refresh "
        "tokens and N audit events (as --seed-rows N), every run of the first followed by the "
        "same run of the second (B-A on every second repeat: use an even --repeat); prints "
        "the with-rows / empty ratios pair by pair and exits 1 unless the median pair keeps "
        f"req/s within -{FLAT_TOLERANCE:.0%}% and p99 within +{FLAT_TOLERANCE:.0%}% "
        "everywhere (default 0: off)",
    )
    p.add_argument("--peer", action="store_true", help="also run node-oidc-provider (bench/peer)")
    p.add_argument(
        "--peer-workers",
        default=None,
        help="comma-separated process counts of the peer, each measured as a peer of its own "
        f"(node cluster above 1); default: {DEFAULT_PEER_WORKERS} (node-oidc-provider's own "
        "set-up, the issue's reference) and --workers",
    )
    p.add_argument(
        "--pg-admin-dsn",
        default=os.environ.get("BENCH_PG_ADMIN_DSN", pg.DEFAULT_ADMIN_DSN),
        help=f"where to CREATE/DROP the throwaway database (default {pg.DEFAULT_ADMIN_DSN})",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="KEYSERVICE_REDIS_URL for the service (shared throttle store), e.g. "
        "redis://127.0.0.1:6379/15; default: none (the service's own choice)",
    )
    p.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra KEYSERVICE_* setting for the service (repeat); KEYSERVICE_* variables "
        "of the calling environment are not passed on",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CI check: 1 s per scenario, 8 connections, 2 users, no peer, no warm-up, one "
        "run; exits "
        "non-zero on any error or zero throughput",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.duration, args.connections, args.repeat, args.warmup = 1, "8", 1, 0
        args.users, args.peer = 2, False
    args.connections = [int(c) for c in str(args.connections).split(",") if c.strip()]
    if args.scenarios is None:
        args.scenarios = SOAK_SCENARIO if args.soak else DEFAULT_SCENARIOS
    args.scenarios = [s.strip() for s in str(args.scenarios).split(",") if s.strip()]
    known = {key for key, _, _ in SCENARIOS}
    if unknown := set(args.scenarios) - known:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    for name in ("duration", "repeat", "workers", "wrk_threads", "users"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.peer_workers is None:
        args.peer_workers = f"{DEFAULT_PEER_WORKERS},{args.workers}"
    try:
        args.peer_workers = sorted({int(n) for n in str(args.peer_workers).split(",") if n.strip()})
    except ValueError:
        p.error("--peer-workers wants process counts such as 1,2")
    if not args.peer_workers or not 1 <= min(args.peer_workers) <= max(args.peer_workers) <= 64:
        p.error("--peer-workers must be process counts between 1 and 64")
    if not args.connections or min(args.connections) < 1 or max(args.connections) > 1024:
        p.error("--connections must be between 1 and 1024")
    if args.redis_url and not args.redis_url.startswith(
        ("redis://127.0.0.1", "redis://localhost", "redis://[::1]")
    ):
        p.error("--redis-url must point at loopback")
    for item in args.service_env:
        if not item.startswith("KEYSERVICE_") or "=" not in item:
            p.error(f"--service-env wants KEYSERVICE_NAME=VALUE, got {item!r}")
    if not 0 <= args.quiet_wait <= 600 or not 0 <= args.quiet_below <= 100:
        p.error("--quiet-wait must be 0..600 and --quiet-below 0..100")
    if args.warmup < 0 or args.warmup > 60:
        p.error("--warmup must be between 0 and 60")
    if args.duration > 600 or args.repeat > 20 or args.users > 200:
        p.error("--duration <= 600, --repeat <= 20 and --users <= 200, please")
    if not 0 <= args.seed_rows <= 20_000_000:
        p.error("--seed-rows must be between 0 and 20,000,000")
    if not 0 <= args.flat <= 20_000_000:
        p.error("--flat must be between 0 and 20,000,000")
    if args.flat and (args.seed_rows or args.soak or args.peer):
        p.error(
            "--flat compares an empty database with one of N rows: not with --seed-rows, "
            "--soak or --peer"
        )
    if args.soak:
        if not SOAK_WARMUP_S + SOAK_SAMPLE_S <= args.soak <= 7200:
            p.error(f"--soak must be 0 (off) or {SOAK_WARMUP_S + SOAK_SAMPLE_S}..7200 seconds")
        if len(args.scenarios) != 1:
            p.error("--soak runs one scenario: pick it with --scenarios")
        if args.peer:
            p.error("--soak does not run the peer")
    return args


class Interrupted(Exception):
    pass


def _stop_on_signals() -> None:
    """Turn the first SIGINT or SIGTERM into an exception, so that the cleanup runs.

    Later ones are ignored: the cleanup (stopping process groups, dropping the database)
    is bounded in time and must not itself be cut short. SIGINT is handled explicitly
    because a shell starts background jobs with it ignored.
    """

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _keyservice_cli() -> list[str]:
    # BENCH_KEYSERVICE_CMD runs another build of the command (e.g. an installed wheel).
    if override := os.environ.get("BENCH_KEYSERVICE_CMD"):
        return shlex.split(override)
    local = Path(sys.executable).parent / "keyservice"
    found = str(local) if local.exists() else shutil.which("keyservice")
    if not found:
        raise SystemExit("the keyservice command is not installed (make bench installs it)")
    return [found]


def _git(*argv: str) -> str:
    out = subprocess.run(["git", *argv], cwd=BENCH_DIR, capture_output=True, text=True, timeout=10)
    return out.stdout.strip() if out.returncode == 0 else ""


def _git_commit() -> str | None:
    """The commit measured, with "+dirty" when src/ or migrations/ have local changes."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    dirty = _git("status", "--porcelain", "--", "../src", "../migrations")
    return f"{commit}+dirty" if dirty else commit


@contextmanager
def throwaway_database(admin_dsn: str) -> Iterator[str]:
    name = pg.new_name()
    pg.create(admin_dsn, name)
    print(f"created database {name}")
    try:
        yield name
    finally:
        pg.drop(admin_dsn, name)
        print(f"dropped database {name}")


@contextmanager
def running(service: procs.Service) -> Iterator[procs.Service]:
    try:
        yield service
    finally:
        service.stop()


def wait_ready(service: procs.Service, base_url: str, timeout: float = 120.0) -> float:
    """Poll GET /readyz until 200; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if not service.running():
                raise SystemExit(f"keyservice serve exited early:\n{service.log_tail()}")
            try:
                r = client.get("/readyz")
                if r.status_code == 200:
                    return time.monotonic() - started
                last = f"{r.status_code} {r.text[:100]}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            time.sleep(0.25)
    raise SystemExit(
        f"/readyz not 200 within {timeout:.0f} s (last: {last}):\n{service.log_tail()}"
    )


def scan_log(path: Path) -> dict[str, Any]:
    """Count the tracebacks in a server log, keyed by the line logged just before each."""
    kinds: dict[str, int] = {}
    previous = ""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"tracebacks": None, "kinds": {}}
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            key = previous.strip()[:160] or "(no message)"
            kinds[key] = kinds.get(key, 0) + 1
        previous = line
    return {"tracebacks": sum(kinds.values()), "kinds": kinds}


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    path.chmod(0o600)
    return path


@dataclass
class Measure:
    key: str
    label: str
    letter: str
    target: str  # MAIN_TARGET, FLAT_TARGET or a peer's scenario key
    run: Callable[[int, int], wrk.WrkResult]  # (connections, seconds)
    rss_root: int
    database: str  # whose PostgreSQL backends count as "PostgreSQL" in the CPU column


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def wait_for_quiet(roots: list[int], database: str, below: float, limit: float) -> float:
    """Wait until foreign CPU over one second is below `below` %; return the last reading."""
    deadline = time.monotonic() + limit
    while True:
        with procs.CpuAccount(roots, database) as cpu:
            time.sleep(1.0)
        if cpu.foreign_pct < below or time.monotonic() >= deadline:
            return cpu.foreign_pct


def measure_all(measures: list[Measure], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every measure at every connection count, `repeat` times, interleaved.

    With --flat the measures come in pairs (one scenario without and with the rows), and
    every second repeat runs each pair the other way round (A-B, then B-A), so that neither
    side always runs first.
    """
    roots = sorted({m.rss_root for m in measures})
    rows: list[dict[str, Any]] = []
    total = args.repeat * len(args.connections) * len(measures)
    done = 0
    if args.warmup:
        # Discarded: lets the JITs (V8's, the database's plans), caches and pools settle.
        print(f"warming up: {args.warmup} s per scenario at c{args.connections[0]}", flush=True)
        for m in measures:
            m.run(args.connections[0], args.warmup)
    for rep in range(1, args.repeat + 1):
        order = measures
        if args.flat and rep % 2 == 0:
            order = [m for pair in zip(measures[1::2], measures[0::2], strict=True) for m in pair]
        for conns in args.connections:
            for m in order:
                done += 1
                if args.quiet_below:
                    quiet = wait_for_quiet(roots, m.database, args.quiet_below, args.quiet_wait)
                    if quiet >= args.quiet_below:
                        print(f"  (not quiet after {args.quiet_wait} s: foreign CPU {quiet}%)")
                with (
                    procs.CpuAccount(roots, m.database) as cpu,
                    procs.RssSampler(m.rss_root) as sampler,
                ):
                    result = m.run(conns, args.duration)
                rows.append(_row(m, conns, rep, result, sampler.peak_kb.values(), cpu))
                _print_run(f"[{done}/{total}]", m, conns, result, cpu)
    return rows


def _row(
    m: Measure,
    conns: int,
    rep: int,
    result: wrk.WrkResult,
    peaks_kb: Iterable[int],
    cpu: procs.CpuAccount,
) -> dict[str, Any]:
    return {
        "target": m.target,
        "scenario": m.key,
        "label": m.label,
        "letter": m.letter,
        "connections": conns,
        "run": rep,
        **result.as_dict(),
        "peak_rss_mb_per_worker": [_mb(kb) for kb in sorted(peaks_kb, reverse=True)],
        "machine_busy_pct": cpu.machine_busy_pct,
        "foreign_cpu_pct": cpu.foreign_pct,
        "cpu_us_per_request": _cpu_per_request(m, result, cpu),
    }


def _cpu_per_request(m: Measure, result: wrk.WrkResult, cpu: procs.CpuAccount) -> dict[str, float]:
    """CPU time per completed request: the measured server's processes, PostgreSQL, wrk."""
    per = 1e6 / max(result.requests, 1)
    return {
        "server": round(cpu.cpu_s.get(str(m.rss_root), 0.0) * per, 1),
        "postgres": round(cpu.cpu_s.get("postgres", 0.0) * per, 1),
        "load": round(cpu.cpu_s.get("load", 0.0) * per, 1),
    }


def _print_run(
    tag: str, m: Measure, conns: int, result: wrk.WrkResult, cpu: procs.CpuAccount
) -> None:
    extra = f" statuses {result.statuses}" if result.errors else ""
    if result.chain_breaks:
        extra += f" chain breaks {result.chain_breaks}"
    per = "/".join(f"{us:.0f}" for us in _cpu_per_request(m, result, cpu).values())
    print(
        f"{tag} {m.key:<13} c{conns:<3} {result.rps:9.1f} req/s  "
        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
        f"errors {result.errors}  foreign CPU {cpu.foreign_pct:4.1f}%  "
        f"CPU us/req {per}{extra}",
        flush=True,
    )


def soak(
    m: Measure, args: argparse.Namespace, *, database: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One long run of `m` while each worker's VmRSS is read every SOAK_SAMPLE_S seconds.

    Returns the run's row (as measure_all's) and the soak report: every reading, and per
    worker the first reading at or after SOAK_WARMUP_S, the last, the largest and
    last / first; it passes when every worker's ratio is within 1 +- SOAK_TOLERANCE.
    """
    conns = args.connections[0]
    if args.quiet_below:
        quiet = wait_for_quiet([m.rss_root], database, args.quiet_below, args.quiet_wait)
        if quiet >= args.quiet_below:
            print(f"  (not quiet after {args.quiet_wait} s: foreign CPU {quiet}%)")
    print(
        f"soaking: {m.key} at c{conns} for {args.soak} s; worker RSS every {SOAK_SAMPLE_S} s, "
        f"judged from {SOAK_WARMUP_S} s on",
        flush=True,
    )
    with (
        procs.CpuAccount([m.rss_root], database) as cpu,
        procs.RssSeries(m.rss_root, SOAK_SAMPLE_S) as series,
    ):
        result = m.run(conns, args.soak)
    peaks: dict[int, int] = {}
    for _, rss in series.samples:
        for pid, kb in rss.items():
            peaks[pid] = max(kb, peaks.get(pid, 0))
    row = _row(m, conns, 1, result, peaks.values(), cpu)
    _print_run("[soak]", m, conns, result, cpu)
    report = soak_report(series.samples)
    report.update(scenario=m.key, connections=conns, seconds=args.soak)
    return row, report


def soak_report(samples: list[tuple[float, dict[int, int]]]) -> dict[str, Any]:
    pids = sorted({pid for _, rss in samples for pid in rss})
    judged = [(t, rss) for t, rss in samples if t >= SOAK_WARMUP_S - 1]
    workers: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for pid in pids:
        series = [(t, rss[pid]) for t, rss in judged if pid in rss]
        if len(series) < 2:
            problems.append(f"worker {pid}: fewer than 2 readings after the warm-up")
            workers[str(pid)] = {"readings": len(series)}
            continue
        if len(series) < len(judged):
            problems.append(f"worker {pid}: missing from some readings (restarted?)")
        (t_first, first), (t_last, last) = series[0], series[-1]
        ratio = last / first
        workers[str(pid)] = {
            "first_s": round(t_first, 1),
            "first_mb": _mb(first),
            "last_s": round(t_last, 1),
            "last_mb": _mb(last),
            "max_mb": _mb(max(kb for _, kb in series)),
            "last_over_first": round(ratio, 3),
            "within_tolerance": abs(ratio - 1) <= SOAK_TOLERANCE,
        }
        if abs(ratio - 1) > SOAK_TOLERANCE:
            problems.append(f"worker {pid}: last/first {ratio:.3f}")
    if not pids:
        problems.append("no worker readings")
    return {
        "sample_every_s": SOAK_SAMPLE_S,
        "warmup_s": SOAK_WARMUP_S,
        "tolerance": SOAK_TOLERANCE,
        "samples": [
            {"t_s": round(t, 1), "rss_mb": {str(pid): _mb(kb) for pid, kb in sorted(rss.items())}}
            for t, rss in samples
        ],
        "workers": workers,
        "problems": problems,
        "verdict": "FAIL" if problems else "PASS",
    }


def print_soak(report: dict[str, Any]) -> None:
    pids = list(report["workers"])
    print(
        f"\nSoak: {report['scenario']} at c{report['connections']} for {report['seconds']} s; "
        "resident memory (VmRSS) of each worker, MB\n"
    )
    head = f"{'t s':>7}" + "".join(f"{'pid ' + pid:>12}" for pid in pids)
    print(head)
    print("-" * len(head))
    for sample in report["samples"]:
        mark = " " if sample["t_s"] >= report["warmup_s"] - 1 else "*"
        cells = "".join(
            f"{sample['rss_mb'][pid]:>12.1f}" if pid in sample["rss_mb"] else f"{'-':>12}"
            for pid in pids
        )
        print(f"{sample['t_s']:>6.0f}{mark}{cells}")
    print("(* = warm-up, not judged)\n")
    head = f"{'worker':>10} {'first MB':>9} {'(at s)':>7} {'last MB':>8} {'max MB':>7}"
    print(f"{head} {'last/first':>11}")
    for pid, w in report["workers"].items():
        if "first_mb" not in w:
            print(f"{pid:>10}  (too few readings)")
            continue
        print(
            f"{pid:>10} {w['first_mb']:>9.1f} {w['first_s']:>7.0f} {w['last_mb']:>8.1f} "
            f"{w['max_mb']:>7.1f} {w['last_over_first']:>11.3f}"
        )
    tol = f"{report['tolerance']:.0%}"
    print(f"\n{report['verdict']}: worker memory stable within +-{tol} after the warm-up", end="")
    print(f" ({'; '.join(report['problems'])})" if report["problems"] else "")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over repeated runs of each (target, scenario, connections)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["scenario"], row["connections"]), []).append(row)
    summary = []
    for (target, scenario, conns), runs in groups.items():
        width = max(len(r["peak_rss_mb_per_worker"]) for r in runs)
        rss = [
            max(
                r["peak_rss_mb_per_worker"][i] for r in runs if i < len(r["peak_rss_mb_per_worker"])
            )
            for i in range(width)
        ]
        summary.append(
            {
                "target": target,
                "scenario": scenario,
                "label": runs[0]["label"],
                "letter": runs[0]["letter"],
                "connections": conns,
                "runs": len(runs),
                "rps": round(statistics.median(r["rps"] for r in runs), 1),
                "rps_all": [r["rps"] for r in runs],
                "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
                "errors": sum(r["errors"] for r in runs),
                "requests": sum(r["requests"] for r in runs),
                "chain_breaks": sum(r["chain_breaks"] for r in runs),
                "peak_rss_mb_per_worker": rss,
                "foreign_cpu_pct_max": max(r["foreign_cpu_pct"] for r in runs),
                "cpu_us_per_request": {
                    part: round(statistics.median(r["cpu_us_per_request"][part] for r in runs), 1)
                    for part in runs[0]["cpu_us_per_request"]
                },
            }
        )
    return summary


def peer_scenario(processes: int) -> tuple[str, str, str]:
    """(key, label, letter) of the peer's exchange with `processes` processes."""
    return (
        f"peer_{processes}proc",
        f"peer: oidc-provider client_credentials, {processes} process(es)",
        f"p{processes}",
    )


def ratios(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(s["letter"], s["connections"]): s["rps"] for s in summary if s["target"] != FLAT_TARGET}
    peers = sorted({s["letter"] for s in summary if s["letter"].startswith("p")}, key=_peer_size)
    out = []
    for conns in sorted({s["connections"] for s in summary}):
        for num, den, meaning in [
            ("a", "d", "exchange / ceiling"),
            ("b", "a", "refresh / exchange"),
            ("c", "d", "Bearer read / ceiling"),
            *[("a", p, f"our exchange / peer, {_peer_size(p)} process(es)") for p in peers],
        ]:
            n, d = by.get((num, conns)), by.get((den, conns))
            if n is not None and d:
                out.append(
                    {
                        "ratio": f"({num})/({den})",
                        "meaning": meaning,
                        "connections": conns,
                        "value": round(n / d, 3),
                    }
                )
    return out


def _peer_size(letter: str) -> int:
    return int(letter[1:])


def flat_report(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """--flat: per scenario and connections, the with-rows / empty ratios of each pair.

    A pair is one run of each service back to back, so the machine's drift over a run
    (often far more than 10 % here) mostly cancels in its ratios; the verdict is on the
    median pair: flat when req/s fell by at most FLAT_TOLERANCE and p99 rose by at most it,
    with no errors.
    """
    pairs: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        key = (row["scenario"], row["connections"], row["run"])
        pairs.setdefault(key, {})[row["target"]] = row
    groups: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    for (scenario, conns, _), pair in pairs.items():
        empty, full = pair.get(MAIN_TARGET), pair.get(FLAT_TARGET)
        if empty is None or full is None:
            continue
        groups.setdefault((scenario, conns), []).append(
            (
                full["rps"] / empty["rps"] if empty["rps"] else float("nan"),
                full["p99_ms"] / empty["p99_ms"] if empty["p99_ms"] else float("nan"),
                empty["errors"] + full["errors"],
            )
        )
    out = []
    for (scenario, conns), ratios_ in groups.items():
        rps = statistics.median(r[0] for r in ratios_)
        p99 = statistics.median(r[1] for r in ratios_)
        errors = sum(r[2] for r in ratios_)
        out.append(
            {
                "scenario": scenario,
                "connections": conns,
                "rps_ratios": [round(r[0], 3) for r in ratios_],
                "p99_ratios": [round(r[1], 3) for r in ratios_],
                "rps_ratio": round(rps, 3),
                "p99_ratio": round(p99, 3),
                "errors": errors,
                "flat": compare.is_flat(rps, p99, FLAT_TOLERANCE) and not errors,
            }
        )
    return out


def print_flat(report: list[dict[str, Any]], seed_rows: int) -> None:
    tol = f"{FLAT_TOLERANCE:.0%}"
    print(
        f"Flat? with {seed_rows:,} refresh tokens and audit events stored / without, each pair "
        "run back to back;\n"
        f"flat = the median pair's req/s down by at most {tol}, its p99 up by at most {tol}, "
        "no errors\n"
    )
    head = f"{'scenario':<10} {'conns':>5}  {'req/s ratio (pairs)':<32} "
    head += f"{'p99 ratio (pairs)':<32} verdict"
    print(head)
    print("-" * len(head))
    for r in report:
        rps = f"{r['rps_ratio']:.3f} ({' '.join(f'{x:.2f}' for x in r['rps_ratios'])})"
        p99 = f"{r['p99_ratio']:.3f} ({' '.join(f'{x:.2f}' for x in r['p99_ratios'])})"
        verdict = "flat" if r["flat"] else "NOT FLAT"
        if r["errors"]:
            verdict += f" ({r['errors']} errors)"
        print(f"{r['scenario']:<10} {r['connections']:>5}  {rps:<32} {p99:<32} {verdict}")
    bad = [r for r in report if not r["flat"]]
    print(f"\n{'FAIL' if bad else 'PASS'}: {len(report) - len(bad)} of {len(report)} rows flat\n")


def print_table(summary: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> None:
    runs = max((s["runs"] for s in summary), default=1)
    head = f"median of {runs} runs" if runs > 1 else "one run each"
    print(f"\nResults ({head}; RSS = peak resident memory of each worker, MB;")
    print("foreign = the largest share of the machine's CPU used by other processes in a run;")
    print("CPU us/req = CPU time per request of the server's processes / PostgreSQL / wrk)\n")
    width = max([44] + [len(s["label"]) + 4 for s in summary])
    cols = f"{'scenario':<{width}} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
    cols += f"{'errors':>7} {'foreign':>8} {'CPU us/req':>15}  {'peak RSS MB/worker'}"
    print(cols)
    print("-" * len(cols))
    for s in summary:
        rss = "/".join(f"{mb:.0f}" for mb in s["peak_rss_mb_per_worker"]) or "-"
        label = f"({s['letter']}) {s['label']}"
        cpu = "/".join(f"{us:.0f}" for us in s["cpu_us_per_request"].values())
        print(
            f"{label:<{width}} {s['connections']:>5} {s['rps']:>9.1f} {s['p50_ms']:>8.2f} "
            f"{s['p99_ms']:>8.2f} {s['errors']:>7} {s['foreign_cpu_pct_max']:>7.0f}% "
            f"{cpu:>15}  {rss}"
        )
    if ratio_rows:
        print("\nRatios of throughput (req/s)\n")
        for r in ratio_rows:
            print(f"  {r['ratio']:<8} {r['meaning']:<38} c{r['connections']:<4} {r['value']:.3f}")
    print()


def _threads(args: argparse.Namespace, conns: int) -> int:
    """wrk threads for a run: --wrk-threads, at most one per connection."""
    return min(args.wrk_threads, conns)


def _exchange_runner(
    wrk_bin: str, args: argparse.Namespace, url: str, keys_file: Path
) -> Callable[[int, int], wrk.WrkResult]:
    """The exchange scenario (a) against `url`, with the credentials in `keys_file`."""

    def run(conns: int, duration: int) -> wrk.WrkResult:
        return _load(wrk_bin, args, "exchange.lua", url, conns, duration, str(keys_file))

    return run


def _load(
    wrk_bin: str,
    args: argparse.Namespace,
    script: str,
    url: str,
    conns: int,
    duration: int,
    *extra: str,
) -> wrk.WrkResult:
    """One wrk run of `script` with `_threads()` threads."""
    return wrk.run(
        wrk_bin,
        script=script,
        url=url,
        threads=_threads(args, conns),
        connections=conns,
        duration=duration,
        args=extra,
    )


@dataclass
class Served:
    """One running keyservice: its database, its server, and wrk runs of each scenario."""

    name: str
    database: str
    server: procs.Service
    server_log: Path
    runners: dict[str, Callable[[int, int], wrk.WrkResult]]
    meta: dict[str, Any]


def start_service(
    stack: ExitStack,
    args: argparse.Namespace,
    *,
    wrk_bin: str,
    cli: list[str],
    tmp: Path,
    stamp: str,
    name: str,
    seed_rows: int,
) -> Served:
    """Create a database, start `keyservice serve` on it, seed keys (and `seed_rows` rows).

    Everything it starts is stopped, and the database dropped, when `stack` closes.
    """
    tag = "" if name == MAIN_TARGET else f"{name}: "
    tmp = tmp / name
    tmp.mkdir()
    port = procs.free_port()
    base = f"http://{procs.LOOPBACK}:{port}"
    meta: dict[str, Any] = {}
    db = stack.enter_context(throwaway_database(args.pg_admin_dsn))
    admin_password = secrets.token_urlsafe(24)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYSERVICE_")},
        "KEYSERVICE_DATABASE_URL": pg.sqlalchemy_url(args.pg_admin_dsn, db),
        "KEYSERVICE_SECRET_KEY": secrets.token_urlsafe(36),
        "KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USERNAME,
        "KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
        "KEYSERVICE_ISSUER": base,
        "KEYSERVICE_THROTTLE_CLIENT_FAILURES": "1000000",
        "KEYSERVICE_THROTTLE_IP_FAILURES": "1000000",
    }
    if args.redis_url:
        env["KEYSERVICE_REDIS_URL"] = args.redis_url
    env.update(item.split("=", 1) for item in args.service_env)
    serve = [*cli, "serve", "--host", procs.LOOPBACK, "--port", str(port)]
    serve += ["--workers", str(args.workers)]
    server_log = RESULTS_DIR / f"{stamp}-{'' if name == MAIN_TARGET else name + '-'}server.log"
    print(f"{tag}starting: {' '.join(serve[1:])} (log {server_log.relative_to(BENCH_DIR)})")
    server = stack.enter_context(running(procs.Service(name, serve, env=env, log_path=server_log)))
    meta["ready_after_s"] = round(wait_ready(server, base), 2)
    workers = procs.worker_pids(server.pid)
    print(f"{tag}ready after {meta['ready_after_s']} s; {len(workers)} worker process(es)")

    seeded = seed.seed(
        base,
        admin_username=ADMIN_USERNAME,
        admin_password=admin_password,
        users=args.users,
        cli=cli,
        env=env,
    )
    print(
        f"{tag}seeded {len(seeded.keys)} API keys for {args.users} users in "
        f"{seeded.seconds:.1f} s (users via {seeded.user_creation}; "
        f"scope {seed.BENCH_SCOPE}: {seeded.scope_creation})"
    )
    for note in seeded.notes:
        print(f"  note: {note}")
    meta["seed"] = {
        "keys": len(seeded.keys),
        "users": args.users,
        "user_creation": seeded.user_creation,
        "scope_creation": seeded.scope_creation,
        "permissions": list(seeded.permissions),
        "notes": seeded.notes,
        "seconds": round(seeded.seconds, 2),
    }
    keys_file = _write_lines(
        tmp / "keys.txt", [f"{k.client_id} {k.client_secret}" for k in seeded.keys]
    )
    first = seed.exchanges(base, seeded.keys, len(seeded.keys))
    header = seed.jwt_header(first[0]["access_token"])
    meta["access_token_header"] = header
    print(f"{tag}our access tokens: alg {header.get('alg')}, typ {header.get('typ')}")
    jwt_file = _write_lines(tmp / "jwts.txt", [t["access_token"] for t in first])

    meta["seed_rows"] = seed_rows
    if seed_rows:
        print(
            f"{tag}seeding {seed_rows:,} refresh tokens and {seed_rows:,} audit events "
            "directly into the database ...",
            flush=True,
        )
        service_env = {k: v for k, v in env.items() if k.startswith("KEYSERVICE_")}
        bulk_result = bulk.seed_rows(
            pg.dsn(args.pg_admin_dsn, db),
            seed_rows,
            bulk.Settings.from_service_env(service_env),
            rebuild_indexes=args.seed_rebuild_indexes,
        )
        meta["bulk_seed"] = bulk_result.as_dict()
        c = bulk_result.counts
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in bulk_result.phases.items())
        print(
            f"{tag}seeded {seed_rows:,} rows each in {bulk_result.seconds:.1f} s ({phases})\n"
            f"  now: refresh_token {c['refresh_tokens']:,} rows ({c['used']:,} used, "
            f"{c['expired']:,} expired, {c['families']:,} families); audit_event "
            f"{c['audit_events']:,} rows ({c['failures']:,} failures, oldest "
            f"{c['oldest_event']})",
            flush=True,
        )

    def run_healthz(conns: int, duration: int) -> wrk.WrkResult:
        return _load(wrk_bin, args, "healthz.lua", f"{base}/healthz", conns, duration)

    def run_refresh(conns: int, duration: int) -> wrk.WrkResult:
        # Fresh chains for every run: one per connection plus two spares each.
        tokens = seed.exchanges(base, seeded.keys, 3 * conns)
        chains = _write_lines(tmp / "refresh.txt", [t["refresh_token"] for t in tokens])
        refresh = (str(chains), str(conns), str(_threads(args, conns)))
        return _load(wrk_bin, args, "refresh.lua", f"{base}/token", conns, duration, *refresh)

    def run_read(conns: int, duration: int) -> wrk.WrkResult:
        url = f"{base}{args.read_path}"
        return _load(wrk_bin, args, "read.lua", url, conns, duration, str(jwt_file))

    runners: dict[str, Callable[[int, int], wrk.WrkResult]] = {
        "healthz": run_healthz,
        "exchange": _exchange_runner(wrk_bin, args, f"{base}/token", keys_file),
        "refresh": run_refresh,
        "read": run_read,
    }

    return Served(name, db, server, server_log, runners, meta)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    wrk_bin = wrk.ensure_wrk()
    cli = _keyservice_cli()
    meta: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "python": platform.python_version(),
        "wrk": wrk.version(wrk_bin),
        "args": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("service_env", "redis_url")
        },
        # Names only: values may be secrets.
        "service_env": [item.split("=", 1)[0] for item in args.service_env],
        # Except this one: whether a token waits for its WAL flush changes every figure.
        "token_commit": dict(item.split("=", 1) for item in args.service_env).get(
            "KEYSERVICE_TOKEN_COMMIT", "durable"
        ),
        "redis": bool(args.redis_url),
    }
    if args.peer:
        meta["node"] = peer.node_version()
        meta["oidc_provider"] = peer.ensure_installed()

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ks-bench-")))
        inherited = sorted(k for k in os.environ if k.startswith("KEYSERVICE_"))
        if inherited:
            print(f"not passing on from the environment: {', '.join(inherited)}")
        meta["machine_round_trip"] = wake.round_trip_cost()  # before anything else runs
        print(f"machine: {wake.describe(meta['machine_round_trip'])}")
        print(f"token commits: {meta['token_commit']} (KEYSERVICE_TOKEN_COMMIT)")
        start: dict[str, Any] = {"wrk_bin": wrk_bin, "cli": cli, "tmp": tmp, "stamp": stamp}
        main_service = start_service(
            stack, args, **start, name=MAIN_TARGET, seed_rows=args.seed_rows
        )
        meta.update(main_service.meta)
        db = main_service.database
        services = [main_service]
        if args.flat:
            # The same service on a database holding the rows, measured alternately with it.
            services.append(
                start_service(stack, args, **start, name=FLAT_TARGET, seed_rows=args.flat)
            )
        measures = [
            Measure(
                key,
                label.format(read_path=args.read_path)
                + (f" [{svc.meta['seed_rows']:,} rows]" if svc is not main_service else ""),
                letter,
                svc.name,
                svc.runners[key],
                svc.server.pid,
                svc.database,
            )
            for key, label, letter in SCENARIOS
            if key in args.scenarios
            for svc in services
        ]

        peers: list[tuple[str, procs.Service]] = []
        if args.peer:
            clients = peer.make_clients(100)
            clients_file = tmp / "peer-clients.json"
            clients_file.write_text(json.dumps(clients))
            peer_keys = _write_lines(
                tmp / "peer-keys.txt", [f"{c['client_id']} {c['client_secret']}" for c in clients]
            )
            meta["peer"] = {}
            for processes in args.peer_workers:
                key, label, letter = peer_scenario(processes)
                port = procs.free_port()
                peer_base = peer.url(port)
                node = stack.enter_context(
                    running(
                        peer.start(
                            port=port,
                            workers=processes,
                            clients_file=clients_file,
                            log_path=RESULTS_DIR / f"{stamp}-{key}.log",
                        )
                    )
                )
                peer.wait_ready(node, peer_base)
                body = peer.token(peer_base, clients[0])
                peer_header = seed.jwt_header(body["access_token"])
                meta["peer"][key] = {
                    "processes": processes,
                    "access_token_header": peer_header,
                    "token_type": body.get("token_type"),
                }
                print(
                    f"peer: oidc-provider {meta['oidc_provider']} on node {meta['node']}, "
                    f"{processes} process(es); access tokens: alg {peer_header.get('alg')}, "
                    f"typ {peer_header.get('typ')}"
                )
                if peer_header.get("alg") != "ES256":
                    raise SystemExit(f"the peer does not issue ES256 JWTs: {peer_header}")
                run_peer = _exchange_runner(wrk_bin, args, f"{peer_base}/token", peer_keys)
                measures.append(Measure(key, label, letter, key, run_peer, node.pid, db))
                peers.append((key, node))

        soak_result: dict[str, Any] | None = None
        if args.soak:
            row, soak_result = soak(measures[0], args, database=db)
            rows = [row]
        else:
            print(
                f"measuring: {len(measures)} scenario(s) x connections {args.connections} x "
                f"{args.repeat} run(s) x {args.duration} s"
            )
            rows = measure_all(measures, args)
        meta["worker_memory"] = {
            svc.name: {str(k): v for k, v in procs.high_water_marks(svc.server.pid).items()}
            for svc in services
        }
        for key, node in peers:
            meta["worker_memory"][key] = {
                str(k): v for k, v in procs.high_water_marks(node.pid).items()
            }

    for svc in services:
        log = scan_log(svc.server_log)
        if svc is main_service:
            meta["server_log"] = log
        else:
            meta["flat"] = {"service": svc.meta, "server_log": log}
        if log["tracebacks"]:
            print(f"the server logged {log['tracebacks']} traceback(s) ({svc.server_log}):")
            for kind, count in log["kinds"].items():
                print(f"  {count:>5} x {kind}")
    summary = summarize(rows)
    ratio_rows = ratios(summary)
    print_table(summary, ratio_rows)
    result = {"meta": meta, "summary": summary, "ratios": ratio_rows, "runs": rows}
    if soak_result is not None:
        print_soak(soak_result)
        result["soak"] = soak_result
    flat: list[dict[str, Any]] | None = None
    if args.flat:
        flat = flat_report(rows)
        print_flat(flat, args.flat)
        result["flat"] = flat
    out = RESULTS_DIR / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(BENCH_DIR.parent)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")

    bad = [s for s in summary if s["errors"] or s["rps"] <= 0]
    for s in bad:
        print(
            f"PROBLEM: {s['scenario']} c{s['connections']}: {s['errors']} errors, {s['rps']} req/s"
        )
    if args.smoke and bad:
        return 1
    if soak_result is not None and soak_result["verdict"] != "PASS":
        return 1
    # A smoke run's 1 s runs check that the mode works, not what it measures.
    if flat is not None and not args.smoke and not all(r["flat"] for r in flat):
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Interrupted as exc:
        print(f"stopped by {exc}; the server, the peer and the database were cleaned up")
        sys.exit(130)
