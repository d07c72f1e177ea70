"""bench/compare.py: the verdicts it gives two result files, and its exit status.

Plain data in, no server: the result files are written here in the shape bench/run.py
writes them (`summary` rows), so every verdict can be set up exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "bench" / "compare.py"


def _row(scenario: str, conns: int, rps: float, p99: float, **extra: Any) -> dict[str, Any]:
    row = {
        "target": "keyservice",
        "scenario": scenario,
        "connections": conns,
        "rps": rps,
        "p99_ms": p99,
        "errors": 0,
        "foreign_cpu_pct_max": 1.0,
    }
    row.update(extra)
    return row


def _result(
    path: Path,
    rows: list[dict[str, Any]],
    commit: str = "abc1234",
    token_commit: str | None = None,
    **args: Any,
) -> Path:
    meta: dict[str, Any] = {
        "started_at": "2026-12-05T09:00:00Z",
        "git_commit": commit,
        "args": args,
    }
    if token_commit is not None:
        meta["token_commit"] = token_commit
    path.write_text(json.dumps({"meta": meta, "summary": rows, "runs": []}))
    return path


def _compare(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPARE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


BASE_ROWS = [_row("exchange", 8, 2000.0, 10.0), _row("exchange", 32, 3000.0, 20.0)]


@pytest.mark.parametrize(
    ("rps_ratio", "p99_ratio", "flat"),
    [
        (1.0, 1.0, True),
        (0.90, 1.10, True),  # both at the tolerance: still flat
        (0.899, 1.0, False),
        (1.0, 1.101, False),
        (1.5, 0.5, True),  # faster and quicker is flat too
        (float("nan"), 1.0, False),  # no throughput in BASE: no ratio, no verdict of flat
        (1.0, float("nan"), False),
    ],
)
def test_is_flat_holds_at_the_tolerance_and_not_beyond(
    rps_ratio: float, p99_ratio: float, flat: bool
) -> None:
    sys.path.insert(0, str(COMPARE.parent))
    try:
        import compare
    finally:
        sys.path.remove(str(COMPARE.parent))
    assert compare.is_flat(rps_ratio, p99_ratio, 0.10) is flat


def test_the_same_figures_are_flat_and_exit_0(tmp_path: Path) -> None:
    base = _result(tmp_path / "base.json", BASE_ROWS, seed_rows=0, repeat=3, duration=10)
    other = _result(
        tmp_path / "other.json",
        [_row("exchange", 8, 1900.0, 10.5), _row("exchange", 32, 3100.0, 19.0)],
        seed_rows=1_000_000,
        repeat=3,
        duration=10,
    )
    result = _compare(base, other)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: 2 of 2 rows flat" in result.stdout
    assert "0.950" in result.stdout and "1.050" in result.stdout  # the c8 row's two ratios
    assert "different commits" not in result.stdout
    assert "seed_rows 1,000,000, 3 x 10 s" in result.stdout


def test_a_slower_row_is_not_flat_and_exits_1(tmp_path: Path) -> None:
    base = _result(tmp_path / "base.json", BASE_ROWS)
    other = _result(
        tmp_path / "other.json",
        [_row("exchange", 8, 1700.0, 10.0), _row("exchange", 32, 3000.0, 20.0)],
        commit="def5678",
    )
    result = _compare(base, other)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("exchange")]
    assert len(lines) == 2
    assert "0.850" in lines[0] and "NOT FLAT" in lines[0]
    assert lines[1].rstrip().endswith("flat") and "NOT" not in lines[1]
    assert "FAIL: 1 of 2 rows flat" in result.stdout
    assert "measured at different commits" in result.stdout


def test_a_wider_tolerance_accepts_what_the_default_refuses(tmp_path: Path) -> None:
    base = _result(tmp_path / "base.json", BASE_ROWS)
    other = _result(
        tmp_path / "other.json",
        [_row("exchange", 8, 1700.0, 11.5), _row("exchange", 32, 3000.0, 20.0)],
    )
    assert _compare(base, other).returncode == 1
    assert _compare(base, other, "--tolerance", "0.2").returncode == 0


def test_errors_in_either_run_make_the_row_not_flat(tmp_path: Path) -> None:
    # The same throughput and p99, but requests failed: as bench/run.py --flat judges it.
    base = _result(tmp_path / "base.json", BASE_ROWS)
    other = _result(
        tmp_path / "other.json",
        [_row("exchange", 8, 2000.0, 10.0, errors=4), _row("exchange", 32, 3000.0, 20.0)],
    )
    result = _compare(base, other)
    assert result.returncode == 1, result.stdout
    assert "NOT FLAT (errors)" in result.stdout and " 0/4 " in result.stdout
    assert _compare(other, base).returncode == 1  # errors in BASE count as well


def test_no_throughput_in_base_is_not_flat(tmp_path: Path) -> None:
    base = _result(tmp_path / "base.json", [_row("exchange", 8, 0.0, 0.0)])
    other = _result(tmp_path / "other.json", [_row("exchange", 8, 2000.0, 10.0)])
    result = _compare(base, other)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOT FLAT" in result.stdout


def test_rows_in_one_file_only_are_named_and_noisy_rows_marked(tmp_path: Path) -> None:
    base = _result(tmp_path / "base.json", [*BASE_ROWS, _row("refresh", 8, 1800.0, 11.0)])
    other = _result(
        tmp_path / "other.json",
        [
            _row("exchange", 8, 2000.0, 10.0, foreign_cpu_pct_max=25.0),
            _row("exchange", 32, 3000.0, 20.0),
            _row("read", 8, 9000.0, 1.0),
        ],
    )
    result = _compare(base, other)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(keyservice/refresh/8 only in BASE)" in result.stdout
    assert "(keyservice/read/8 only in OTHER)" in result.stdout
    lines = result.stdout.splitlines()
    (c8,) = [line for line in lines if line.startswith("exchange") and " 8 " in line]
    assert c8.endswith("flat (noisy)")
    assert "measure again when it is quiet" in result.stdout


def test_nothing_in_common_exits_2(tmp_path: Path) -> None:
    base = _result(tmp_path / "base.json", BASE_ROWS)
    other = _result(tmp_path / "other.json", [_row("refresh", 8, 1800.0, 11.0)])
    result = _compare(base, other)
    assert result.returncode == 2
    assert "no (scenario, connections) in common" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file or directory"),
        ("{not json", "Expecting property name"),
        ("[1, 2]", "not a bench/run.py result (no summary)"),
        ('{"runs": []}', "not a bench/run.py result (no summary)"),
        ('{"summary": [{"target": "keyservice"}]}', "summary row 0 has no usable scenario"),
        (
            json.dumps({"summary": [_row("exchange", 8, "fast", 10.0)]}),
            "summary row 0 has no usable rps",
        ),
    ],
)
def test_unusable_input_exits_2_with_the_reason(
    tmp_path: Path, content: str | None, message: str
) -> None:
    good = _result(tmp_path / "good.json", BASE_ROWS)
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    for args in ((good, bad), (bad, good)):
        result = _compare(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and str(bad) in result.stderr
        assert "Traceback" not in result.stderr


def test_runs_with_different_token_commits_are_told_apart(tmp_path: Path) -> None:
    # A file from before KEYSERVICE_TOKEN_COMMIT existed measured durable commits.
    old = _result(tmp_path / "old.json", BASE_ROWS)
    durable = _result(tmp_path / "durable.json", BASE_ROWS, token_commit="durable")
    fast = _result(tmp_path / "async.json", BASE_ROWS, token_commit="async")
    same = _compare(old, durable)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "token commits differ" not in same.stdout
    assert same.stdout.count("token commits durable") == 2
    differ = _compare(durable, fast)
    assert differ.returncode == 0, differ.stdout + differ.stderr
    assert "token commits differ" in differ.stdout
    assert "token commits async" in differ.stdout
