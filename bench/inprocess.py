"""Per-request cost of a few routes in process: raw ASGI calls of the app, no server.

The figures bench/README.md quotes as "in-process": no network, no uvicorn, no wrk, so a
change of a few microseconds in the app's own handling shows up that the whole-service
benchmark (`make bench`) cannot resolve on a noisy machine. The app is the real one
(`create_app()`) on a throwaway SQLite database; a bootstrap admin logs in with the
password grant once, and its access token is the Bearer of every authenticated request.

    .venv/bin/python bench/inprocess.py                      # 5 rounds x 10,000 per path
    .venv/bin/python bench/inprocess.py --requests 20000 --paths healthz,me_token,not_found
    PYTHONPATH=/tmp/other-checkout/src .venv/bin/python bench/inprocess.py   # another build

Each round runs every path in turn (interleaved, so that drift hits them alike); the table
gives each path's median over the rounds, its spread, and its ratio to `/healthz` measured
in the same run. Timings only: every answer's status is checked (a path answering otherwise
stops the run), nothing else. Settings not given here come from `KEYSERVICE_*` variables,
as they would for the service.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from keyservice import migrations
from keyservice.config import Settings
from keyservice.main import create_app

# name: (method, path, authenticated, the status it must answer)
PATHS: dict[str, tuple[str, str, bool, int]] = {
    "healthz": ("GET", "/healthz", False, 200),
    "me_token": ("GET", "/me/token", True, 200),
    # Reads the caller's keys through SQLAlchemy; on this SQLite database mostly the wait for
    # aiosqlite's thread (~2.7 ms here), so it says little about the PostgreSQL path.
    "me": ("GET", "/me", True, 200),
    "not_found": ("GET", "/nothing-here", False, 404),
    "missing_token": ("GET", "/me/token", False, 401),
}


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--paths", default="healthz,me_token", help=f"of {', '.join(PATHS)}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=10_000, help="per path and round")
    args = p.parse_args(argv)
    args.paths = [name.strip() for name in args.paths.split(",") if name.strip()]
    unknown = [name for name in args.paths if name not in PATHS]
    if unknown:
        p.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    if args.rounds < 1 or args.requests < 1:
        p.error("--rounds and --requests must be at least 1")
    return args


def _scope(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Any:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "app": app,
    }


async def _measure(app: Any, args: argparse.Namespace, password: str) -> dict[str, list[float]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench.test") as http:
        login = await http.post(
            "/token",
            data={"grant_type": "password", "username": "bench", "password": password},
        )
        if login.status_code != 200:
            raise SystemExit(f"the bootstrap admin could not log in: {login.status_code}")
        bearer = b"Bearer " + login.json()["access_token"].encode()
    base = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"inprocess")]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    results: dict[str, list[float]] = {name: [] for name in args.paths}
    for _ in range(args.rounds):
        for name in args.paths:
            method, path, authenticated, expected = PATHS[name]
            headers = [*base, (b"authorization", bearer)] if authenticated else base
            scope = _scope(app, method, path, headers)
            statuses.clear()
            started = time.perf_counter()
            for _ in range(args.requests):
                await app(dict(scope), receive, send)
            elapsed = time.perf_counter() - started
            wrong = [status for status in statuses if status != expected]
            if wrong or len(statuses) != args.requests:
                raise SystemExit(f"{name}: expected {expected}, got {sorted(set(wrong))}")
            results[name].append(elapsed / args.requests * 1e6)
    return results


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    password = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="ks-inprocess-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        migrations.upgrade(url)  # outside the event loop: Alembic runs its own
        settings = Settings(
            database_url=url,
            data_dir=Path(tmp),
            secret_key=secrets.token_urlsafe(32),
            issuer="http://bench.test",
            bootstrap_admin_username="bench",
            bootstrap_admin_password=password,
            prune_interval_seconds=0,
        )
        app = create_app(settings)

        async def run() -> dict[str, list[float]]:
            async with app.router.lifespan_context(app):
                return await _measure(app, args, password)

        results = asyncio.run(run())
    reference = statistics.median(results["healthz"]) if "healthz" in results else None
    print(f"{args.rounds} rounds x {args.requests:,} requests per path (us per request)")
    print(f"{'path':<14} {'median':>8} {'min':>8} {'max':>8} {'healthz/path':>13}")
    for name, values in results.items():
        median = statistics.median(values)
        ratio = f"{reference / median:13.3f}" if reference is not None else f"{'-':>13}"
        print(f"{name:<14} {median:8.1f} {min(values):8.1f} {max(values):8.1f} {ratio}")


if __name__ == "__main__":
    main()
