"""How the suite itself starts: the parts of `make test` that are not the service's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_unreachable_postgresql_stops_the_run_in_one_line() -> None:
    # make test runs the suite on pytest-xdist workers; an exit raised inside a worker
    # reached the console as an INTERNALERROR trace naming a "crashed" test instead.
    env = {
        **os.environ,
        "KEYSERVICE_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/test",
    }
    env.pop("KEYSERVICE_TEST_SKIP_POSTGRES", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider"]
        + ["tests/test_ids.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 3, output
    assert "PostgreSQL at postgresql://postgres@127.0.0.1:1/test is unreachable" in output
    assert "KEYSERVICE_TEST_SKIP_POSTGRES=1" in output
    assert "INTERNALERROR" not in output and "crashed" not in output, output
