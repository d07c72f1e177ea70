"""CI runs the benchmark only as a smoke: `bench/run.py --smoke` (1 s per scenario).

It keeps `make bench` working (server start on PostgreSQL, seeding through the API, wrk,
the result JSON); the figures themselves are never asserted: benchmarks are not timed tests.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run bench/<script> as `make bench` would: without the caller's KEYSERVICE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVICE_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bench_smoke_runs_every_scenario_without_errors(tmp_path: Path) -> None:
    if os.environ.get("KEYSERVICE_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("the benchmark runs on PostgreSQL, which this run was told to skip")
    out = tmp_path / "smoke.json"
    result = _bench("run.py", "--smoke", "--json", str(out), timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    scenarios = {run["scenario"] for run in runs}
    assert {"healthz", "exchange", "refresh", "read"} <= scenarios, scenarios
    for run in runs:
        assert run["requests"] > 0, run
        assert run["rps"] > 0, run
        assert run["errors"] == 0, run
    machine = report["meta"]["machine_round_trip"]
    assert machine["sleeping_round_trip_us"] > 0 and machine["sleeping_cpu_per_side_us"] > 0
    assert "machine: a round trip between two processes takes" in result.stdout


def _bench_module(name: str) -> ModuleType:
    """A module of bench/ (its directory first on the path, as when bench/run.py runs)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_bench_database_urls_keep_the_admin_dsns_server_and_query() -> None:
    pg = _bench_module("ksbench.pg")
    tcp = "postgresql://postgres@127.0.0.1:5432/test"
    assert pg.dsn(tcp, "ks_bench_1") == "postgresql://postgres@127.0.0.1:5432/ks_bench_1"
    assert pg.sqlalchemy_url(tcp, "ks_bench_1") == (
        "postgresql+asyncpg://postgres@127.0.0.1:5432/ks_bench_1"
    )
    socket = "postgresql://postgres@/test?host=/var/run/postgresql"
    assert (
        pg.dsn(socket, "ks_bench_1") == "postgresql://postgres@/ks_bench_1?host=/var/run/postgresql"
    )
    assert pg.sqlalchemy_url(socket, "ks_bench_1") == (
        "postgresql+asyncpg://postgres@/ks_bench_1?host=/var/run/postgresql"
    )


def test_the_in_process_bench_runs_and_checks_every_answer() -> None:
    paths = "healthz,me_token,not_found,missing_token"
    result = _bench(
        "inprocess.py", "--rounds", "1", "--requests", "20", "--paths", paths, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split()[0] for line in result.stdout.splitlines()[2:]}
    assert rows == set(paths.split(",")), result.stdout
    # A path it does not know is a usage error, not an empty table.
    bad = _bench("inprocess.py", "--paths", "nope", timeout=60)
    assert bad.returncode == 2 and "unknown path(s) nope" in bad.stderr


def test_the_machine_probe_measures_both_ways_of_waiting_and_reaps_its_children() -> None:
    wake = _bench_module("ksbench.wake")
    before = _children()
    cost = wake.round_trip_cost(rounds=200)
    assert cost["sleeping_round_trip_us"] > 0 and cost["sleeping_cpu_per_side_us"] > 0
    if (os.cpu_count() or 1) >= 2:
        assert cost["spinning_round_trip_us"] is not None and cost["spinning_round_trip_us"] > 0
    assert _children() <= before  # each echo process was waited for, none left behind
    assert "us when both sleep" in wake.describe(cost)
    with pytest.raises(ValueError):
        wake.round_trip_cost(rounds=0)


def _children() -> set[int]:
    """This process's children (exited but not waited for included), from /proc."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


def test_bench_flat_mode_measures_both_databases_in_pairs(tmp_path: Path) -> None:
    if os.environ.get("KEYSERVICE_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("the benchmark runs on PostgreSQL, which this run was told to skip")
    out = tmp_path / "flat.json"
    result = _bench(
        "run.py",
        *("--smoke", "--flat", "500", "--scenarios", "exchange,refresh", "--json", str(out)),
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    # Every scenario ran on both services, and only the second holds the seeded rows.
    targets = {(s["target"], s["scenario"]) for s in report["summary"]}
    assert targets == {
        (target, scenario)
        for target in ("keyservice", "keyservice_rows")
        for scenario in ("exchange", "refresh")
    }
    assert report["meta"]["seed_rows"] == 0
    second = report["meta"]["flat"]["service"]
    assert second["seed_rows"] == 500
    assert second["bulk_seed"]["counts"]["refresh_tokens"] >= 500
    assert report["meta"]["flat"]["server_log"]["tracebacks"] == 0
    for run in report["runs"]:
        assert run["errors"] == 0 and run["rps"] > 0, run
    # One pair per scenario in a smoke run; the verdict is printed and kept.
    flat = {(r["scenario"], r["connections"]): r for r in report["flat"]}
    assert set(flat) == {("exchange", 8), ("refresh", 8)}
    for row in flat.values():
        assert len(row["rps_ratios"]) == 1 and row["rps_ratio"] > 0, row
    assert "Flat? with 500 refresh tokens and audit events stored / without" in result.stdout
    # The ratios between scenarios are the first service's alone, one of each.
    assert [r["ratio"] for r in report["ratios"]] == ["(b)/(a)"]


def _row(
    target: str, scenario: str, run: int, rps: float, p99: float, errors: int = 0
) -> dict[str, Any]:
    return {
        "target": target,
        "scenario": scenario,
        "connections": 8,
        "run": run,
        "rps": rps,
        "p99_ms": p99,
        "errors": errors,
    }


def test_flat_report_judges_the_median_pair_not_the_medians() -> None:
    run = _bench_module("run")
    # The machine slows down over the run: the medians of each side would differ by 25 %,
    # but within every pair the side with rows is as fast as the empty one.
    rows = [
        *(
            _row("keyservice", "exchange", i, rps, 10.0)
            for i, rps in [(1, 4000), (2, 3000), (3, 2000)]
        ),
        *(
            _row("keyservice_rows", "exchange", i, rps, 10.5)
            for i, rps in [(1, 3900), (2, 2950), (3, 1500)]
        ),
    ]
    (only,) = run.flat_report(rows)
    assert only["rps_ratios"] == [0.975, 0.983, 0.75]
    assert only["rps_ratio"] == 0.975 and only["p99_ratio"] == 1.05 and only["flat"]

    slower = [*rows[:3], *(dict(r, rps=r["rps"] * 0.85) for r in rows[3:])]
    assert not run.flat_report(slower)[0]["flat"]  # req/s down 15 % in the median pair
    later = [*rows[:3], *(dict(r, p99_ms=12.0) for r in rows[3:])]
    assert not run.flat_report(later)[0]["flat"]  # p99 up 20 %
    failing = [*rows[:5], dict(rows[5], errors=3)]
    assert run.flat_report(failing)[0] == dict(run.flat_report(failing)[0], flat=False, errors=3)
    dead = [dict(r, rps=0.0) if r["target"] == "keyservice" else r for r in rows]
    assert not run.flat_report(dead)[0]["flat"]  # no throughput on one side: no verdict of flat
    # A run with no partner (one side only) makes no pair.
    assert run.flat_report(rows[:3]) == []


def test_flat_mode_swaps_each_pair_on_every_second_repeat() -> None:
    run = _bench_module("run")
    wrk = _bench_module("ksbench.wrk")

    calls: list[tuple[str, int]] = []

    def runner(name: str) -> Callable[[int, int], Any]:
        def go(conns: int, seconds: int) -> Any:
            calls.append((name, conns))
            return wrk.WrkResult(1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0, 0, {}, 0, raw={})

        return go

    me = os.getpid()
    measures = [
        run.Measure("exchange", "x", "a", target, runner(f"exchange/{target}"), me, "ks_none")
        for target in ("keyservice", "keyservice_rows")
    ] + [
        run.Measure("refresh", "r", "b", target, runner(f"refresh/{target}"), me, "ks_none")
        for target in ("keyservice", "keyservice_rows")
    ]
    args = run.parse_args(["--flat", "10", "--repeat", "3", "--connections", "8", "--warmup", "0"])
    args.duration = 0
    rows = run.measure_all(measures, args)
    e, f = "keyservice", "keyservice_rows"
    assert [name for name, _ in calls] == [
        f"exchange/{e}", f"exchange/{f}", f"refresh/{e}", f"refresh/{f}",
        f"exchange/{f}", f"exchange/{e}", f"refresh/{f}", f"refresh/{e}",
        f"exchange/{e}", f"exchange/{f}", f"refresh/{e}", f"refresh/{f}",
    ]  # fmt: skip
    assert [(r["target"], r["run"]) for r in rows][4:6] == [(f, 2), (e, 2)]


def test_bench_flat_refuses_what_it_cannot_compare() -> None:
    usage = _bench("run.py", "--help", timeout=60)
    assert usage.returncode == 0, usage.stderr
    assert "--flat N" in usage.stdout and "within -10% and p99 within +10%" in usage.stdout
    for extra in (["--peer"], ["--seed-rows", "10"], ["--soak", "60"]):
        bad = _bench("run.py", "--flat", "10", *extra, timeout=60)
        assert bad.returncode == 2, bad.stderr
        assert "--flat compares an empty database with one of N rows" in bad.stderr
    bad = _bench("run.py", "--flat", "-1", timeout=60)
    assert bad.returncode == 2 and "--flat must be between 0 and 20,000,000" in bad.stderr


def test_refresh_script_sends_every_token_once_and_keeps_every_chain_going(tmp_path: Path) -> None:
    # bench/lua/refresh.lua against a stand-in token endpoint that issues a successor for
    # every token and answers 400 to any token sent twice, as a refresh-token family would.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs

    wrk = _bench_module("ksbench.wrk")
    lock = threading.Lock()
    sent: dict[str, int] = {}

    class Endpoint(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            token = parse_qs(body)["refresh_token"][0]
            with lock:
                sent[token] = sent.get(token, 0) + 1
                reused = sent[token] > 1
            answer = (
                b'{"error": "invalid_grant"}'
                if reused
                else json.dumps({"access_token": "x", "refresh_token": f"{token}.n"}).encode()
            )
            self.send_response(400 if reused else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # wrk resets its connections when its time is up; a handler thread still
            # reading printed that reset's trace to stderr, after the test had ended.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        connections, threads = 6, 2
        tokens = tmp_path / "tokens.txt"
        tokens.write_text("".join(f"t{i}\n" for i in range(1, 3 * connections + 1)))
        result = wrk.run(
            wrk.ensure_wrk(),
            script="refresh.lua",
            url=f"http://127.0.0.1:{server.server_address[1]}/token",
            threads=threads,
            connections=connections,
            duration=2,
            args=(str(tokens), str(connections), str(threads)),
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.errors == 0 and result.chain_breaks == 0, result
    assert result.statuses == {"200": result.requests}, result.statuses
    assert all(n == 1 for n in sent.values()), {t: n for t, n in sent.items() if n > 1}
    # Exactly the first C lines started chains (none lost to wrk's check of the first
    # thread's request()), no spare was needed, and every chain went on.
    starts = {token.split(".")[0] for token in sent}
    assert starts == {f"t{i}" for i in range(1, connections + 1)}, starts
    for start in starts:
        assert f"{start}.n.n" in sent, start
    assert len(sent) >= result.requests


def test_peer_workers_default_to_one_process_and_the_cluster() -> None:
    run = _bench_module("run")
    assert run.parse_args(["--workers", "2"]).peer_workers == [1, 2]
    assert run.parse_args(["--workers", "1"]).peer_workers == [1]
    assert run.parse_args(["--peer-workers", "4,1,4"]).peer_workers == [1, 4]
    for bad in ("0", "x", "1,65", ","):
        refused = _bench("run.py", "--peer", "--peer-workers", bad, timeout=60)
        assert refused.returncode == 2, (bad, refused.stderr)
        assert "--peer-workers" in refused.stderr

    def row(letter: str, conns: int, rps: float) -> dict[str, Any]:
        return {"target": "t", "letter": letter, "connections": conns, "rps": rps}

    summary = [row("a", 8, 2000.0), row("p1", 8, 2500.0), row("p2", 8, 4000.0), row("d", 8, 1e4)]
    by_ratio = {r["ratio"]: r for r in run.ratios(summary)}
    assert by_ratio["(a)/(p1)"]["value"] == 0.8
    assert by_ratio["(a)/(p2)"]["value"] == 0.5
    assert "1 process" in by_ratio["(a)/(p1)"]["meaning"]
    assert by_ratio["(a)/(d)"]["value"] == 0.2
