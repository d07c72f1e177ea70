"""CI runs the benchmark only as a smoke: `bench/run.py --smoke` (1 s per scenario).

It keeps `make bench` working (server start on PostgreSQL, seeding through the API, wrk,
the result JSON); the figures themselves are never asserted: benchmarks are not timed tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_bench_database_urls_keep_the_admin_dsns_server_and_query() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from ksbench import pg
    finally:
        sys.path.remove(str(ROOT / "bench"))
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
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from ksbench import wake
    finally:
        sys.path.remove(str(ROOT / "bench"))
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
