"""Compare two bench/run.py result files: throughput and p99 per scenario and connections.

    .venv/bin/python bench/compare.py BASE.json OTHER.json [--tolerance 0.10]

For each (target, scenario, connections) in both files it prints req/s and p99 of each,
OTHER / BASE, and "flat" when throughput fell by at most the tolerance, p99 rose by at
most the tolerance and neither run had errors (as `bench/run.py --flat` judges). The usual
use: BASE run with --seed-rows 0, OTHER with --seed-rows 1000000, same options otherwise.
Exits 1 when a row is not flat, 2 on unusable input (a file that is not a bench/run.py
result, or two with no row in common).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NOISY_FOREIGN_PCT = 10.0
DEFAULT_TOLERANCE = 0.10
_SUMMARY_FIELDS = {
    "target": (str,),
    "scenario": (str,),
    "connections": (int,),
    "rps": (int, float),
    "p99_ms": (int, float),
    "errors": (int,),
}


class Unusable(Exception):
    """An input that cannot be compared; the message names the file and what is wrong."""


def is_flat(rps_ratio: float, p99_ratio: float, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Throughput fell by at most `tolerance` and p99 rose by at most it (NaN: not flat)."""
    return rps_ratio >= 1 - tolerance and p99_ratio <= 1 + tolerance


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Unusable(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), list):
        raise Unusable(f"{path}: not a bench/run.py result (no summary)")
    for i, row in enumerate(data["summary"]):
        bad = [
            field
            for field, types in _SUMMARY_FIELDS.items()
            if not isinstance(row, dict)
            or isinstance(row.get(field), bool)
            or not isinstance(row.get(field), types)
        ]
        if bad:
            raise Unusable(f"{path}: summary row {i} has no usable {', '.join(bad)}")
    return data


def describe(name: str, path: Path, data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    args = meta.get("args", {})
    runs = (
        f"soak {args['soak']} s"
        if args.get("soak")
        else f"{args.get('repeat', '?')} x {args.get('duration', '?')} s"
    )
    return (
        f"{name}: {path} ({meta.get('started_at', '?')}, commit {meta.get('git_commit')}, "
        f"seed_rows {meta.get('seed_rows', args.get('seed_rows', 0)):,}, {runs}, "
        f"token commits {meta.get('token_commit', 'durable')})"
    )


def compare(
    base: dict[str, Any], other: dict[str, Any], tolerance: float
) -> tuple[list[dict[str, Any]], list[str]]:
    def key(s: dict[str, Any]) -> tuple[str, str, int]:
        return (s["target"], s["scenario"], s["connections"])

    rows_b = {key(s): s for s in base["summary"]}
    rows_o = {key(s): s for s in other["summary"]}
    out = []
    for k in [k for k in rows_b if k in rows_o]:
        b, o = rows_b[k], rows_o[k]
        rps = o["rps"] / b["rps"] if b["rps"] else float("nan")
        p99 = o["p99_ms"] / b["p99_ms"] if b["p99_ms"] else float("nan")
        flat = is_flat(rps, p99, tolerance) and not (b["errors"] or o["errors"])
        foreign = max(b.get("foreign_cpu_pct_max", 0), o.get("foreign_cpu_pct_max", 0))
        out.append(
            {
                "target": k[0],
                "scenario": k[1],
                "connections": k[2],
                "rps": [b["rps"], o["rps"]],
                "rps_ratio": round(rps, 3),
                "p99_ms": [b["p99_ms"], o["p99_ms"]],
                "p99_ratio": round(p99, 3),
                "errors": [b["errors"], o["errors"]],
                "foreign_cpu_pct_max": foreign,
                "flat": flat,
            }
        )
    missing = [f"{'/'.join(map(str, k))} only in BASE" for k in rows_b if k not in rows_o]
    missing += [f"{'/'.join(map(str, k))} only in OTHER" for k in rows_o if k not in rows_b]
    return out, missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("base", type=Path, help="the reference result (e.g. --seed-rows 0)")
    p.add_argument("other", type=Path, help="the result to judge (e.g. --seed-rows 1000000)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest drop of req/s and rise of p99 still called flat (default 0.10)",
    )
    args = p.parse_args(argv)
    try:
        base, other = load(args.base), load(args.other)
    except Unusable as exc:
        print(f"compare.py: {exc}", file=sys.stderr)
        return 2
    rows, missing = compare(base, other, args.tolerance)
    print(describe("BASE ", args.base, base))
    print(describe("OTHER", args.other, other))
    commits = {d.get("meta", {}).get("git_commit") for d in (base, other)}
    if len(commits) > 1:
        print("(measured at different commits: the service changed between the two runs)")
    # Files from before the setting existed measured durable commits.
    commit_modes = {d.get("meta", {}).get("token_commit", "durable") for d in (base, other)}
    if len(commit_modes) > 1:
        print(
            "(token commits differ, KEYSERVICE_TOKEN_COMMIT: one run waited for each WAL "
            "flush, the other did not)"
        )
    if not rows:
        print("no (scenario, connections) in common")
        return 2
    tol = f"{args.tolerance:.0%}"
    print(
        f"\nOTHER / BASE; flat = req/s down by at most {tol}, p99 up by at most {tol}"
        " and no errors in either\n"
    )
    head = (
        f"{'scenario':<16} {'conns':>5} {'req/s':>17} {'ratio':>6} {'p99 ms':>17} {'ratio':>6}"
        f" {'errors':>9} {'foreign':>7}  verdict"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        name = r["scenario"] if r["target"] == "keyservice" else f"{r['target']}:{r['scenario']}"
        rps = f"{r['rps'][0]:.1f} -> {r['rps'][1]:.1f}"
        p99 = f"{r['p99_ms'][0]:.2f} -> {r['p99_ms'][1]:.2f}"
        errors = f"{r['errors'][0]}/{r['errors'][1]}"
        noisy = " (noisy)" if r["foreign_cpu_pct_max"] > NOISY_FOREIGN_PCT else ""
        verdict = "flat" if r["flat"] else "NOT FLAT"
        if any(r["errors"]):
            verdict += " (errors)"
        print(
            f"{name:<16} {r['connections']:>5} {rps:>17} {r['rps_ratio']:>6.3f} {p99:>17} "
            f"{r['p99_ratio']:>6.3f} {errors:>9} {r['foreign_cpu_pct_max']:>6.0f}%  "
            f"{verdict}{noisy}"
        )
    for line in missing:
        print(f"  ({line})")
    bad = [r for r in rows if not r["flat"]]
    if any(r["foreign_cpu_pct_max"] > NOISY_FOREIGN_PCT for r in rows):
        print(
            f"\n(noisy): another process took more than {NOISY_FOREIGN_PCT:.0f}% of the machine "
            "during a run of that row; measure again when it is quiet (--quiet-below 10)"
        )
    print(f"\n{'FAIL' if bad else 'PASS'}: {len(rows) - len(bad)} of {len(rows)} rows flat")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
