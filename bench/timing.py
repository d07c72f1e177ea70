"""Is "unknown client id" distinguishable from "wrong secret" by response time at /token?

A statistical test, not a timed unit test. It sends thousands of failing client
authentications of two kinds, interleaved in random order so that drift (CPU frequency,
GC, cache warmth, other load) hits both alike:

  unknown  a well-formed client id that does not exist, any secret
  wrong    the client id of a real key, a wrong secret

and compares the two latency samples: medians, percentiles, the Mann-Whitney U test
(normal approximation; rank-based, so robust to the long right tail of latencies) and the
two-sample Kolmogorov-Smirnov statistic with its asymptotic p-value. Stdlib only.

By default it runs the app in process (httpx ASGITransport) on a throwaway SQLite
database, which removes network noise and so is the stricter setting. With --base-url it
measures a running server over loopback instead (start it with
KEYSERVICE_THROTTLE_CLIENT_FAILURES and KEYSERVICE_THROTTLE_IP_FAILURES set high, or the
throttle answers 429 quickly and the test measures the throttle) and needs --client-id of a
real key. See bench/TIMING.md for how to read the output.

    .venv/bin/python bench/timing.py --samples 3000
    .venv/bin/python bench/timing.py --database-url postgresql+asyncpg://postgres@127.0.0.1/x
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SECRET = "timing-bench-secret-" + "t" * 40
ADMIN = "timing-admin"
ADMIN_PASSWORD = "timing-admin-password-" + "p" * 16
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def random_client_id() -> str:
    return "kc_" + "".join(secrets.choice(_BASE62) for _ in range(16))


def random_secret() -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(43))


# Statistics ------------------------------------------------------------------------------


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def mann_whitney(a: list[float], b: list[float]) -> dict[str, float]:
    """Two-sided Mann-Whitney U test, normal approximation with tie correction."""
    n1, n2 = len(a), len(b)
    labelled = sorted([(value, 0) for value in a] + [(value, 1) for value in b])
    ranks = [0.0] * len(labelled)
    tie_term = 0.0
    i = 0
    while i < len(labelled):
        j = i
        while j + 1 < len(labelled) and labelled[j + 1][0] == labelled[i][0]:
            j += 1
        average = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[k] = average
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    rank_sum_a = sum(rank for rank, (_, group) in zip(ranks, labelled, strict=True) if group == 0)
    u1 = rank_sum_a - n1 * (n1 + 1) / 2
    n = n1 + n2
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    z = (u1 - mean) / math.sqrt(variance)
    return {
        "U": u1,
        "z": z,
        "p": 2 * _normal_sf(abs(z)),
        # Probability that a random "unknown" sample is slower than a random "wrong" one.
        "common_language_effect": u1 / (n1 * n2),
    }


def kolmogorov_smirnov(a: list[float], b: list[float]) -> dict[str, float]:
    """Two-sample KS statistic D and its asymptotic two-sided p-value."""
    xs, ys = sorted(a), sorted(b)
    n1, n2 = len(xs), len(ys)
    i = j = 0
    d = 0.0
    while i < n1 and j < n2:
        value = min(xs[i], ys[j])
        while i < n1 and xs[i] == value:
            i += 1
        while j < n2 and ys[j] == value:
            j += 1
        d = max(d, abs(i / n1 - j / n2))
    effective = math.sqrt(n1 * n2 / (n1 + n2))
    lam = (effective + 0.12 + 0.11 / effective) * d
    # Q_KS(lambda) = 2 sum (-1)^(k-1) exp(-2 k^2 lambda^2)
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return {"D": d, "p": min(1.0, max(0.0, p))}


def summary(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=20)
    return {
        "n": len(values),
        "median_us": statistics.median(values),
        "mean_us": statistics.fmean(values),
        "p10_us": q[1],
        "p90_us": q[17],
    }


# Measurement -----------------------------------------------------------------------------


async def measure(
    http: httpx.AsyncClient, *, client_id: str, samples: int, warmup: int
) -> dict[str, list[float]]:
    kinds = ["unknown", "wrong"]
    times: dict[str, list[float]] = {"unknown": [], "wrong": []}
    for index in range(warmup + samples):
        random.shuffle(kinds)  # interleaved, in random order within each pair
        for kind in kinds:
            form = {
                "grant_type": "client_credentials",
                "client_id": random_client_id() if kind == "unknown" else client_id,
                "client_secret": random_secret(),
            }
            started = time.perf_counter_ns()
            response = await http.post("/token", data=form)
            elapsed = (time.perf_counter_ns() - started) / 1000
            if response.status_code != 401:
                raise SystemExit(
                    f"expected 401 invalid_client, got {response.status_code}: {response.text}"
                    " (is the throttle limit high enough?)"
                )
            if index >= warmup:
                times[kind].append(elapsed)
    return times


async def in_process(args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    from keyservice import migrations
    from keyservice.config import Settings
    from keyservice.context import AppContext
    from keyservice.main import create_app

    with tempfile.TemporaryDirectory(prefix="ks-timing-") as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'keyservice.db'}"
        await asyncio.to_thread(migrations.upgrade, url)
        settings = Settings(
            database_url=url,
            secret_key=SECRET,
            data_dir=Path(tmp),
            bootstrap_admin_username=ADMIN,
            bootstrap_admin_password=ADMIN_PASSWORD,
            throttle_client_failures=10**9,
            throttle_ip_failures=10**9,
            log_level="WARNING",
        )
        context = AppContext(settings)
        app = create_app(context=context)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://timing.test") as http,
        ):
            login = await http.post(
                "/token",
                data={"grant_type": "password", "username": ADMIN, "password": ADMIN_PASSWORD},
            )
            login.raise_for_status()
            bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
            key = await http.post("/api-keys", json={"name": "timing"}, headers=bearer)
            key.raise_for_status()
            times = await measure(
                http,
                client_id=key.json()["client_id"],
                samples=args.samples,
                warmup=args.warmup,
            )
        await context.database.dispose()
    return times, "in-process ASGI, " + url.split(":", 1)[0]


async def over_loopback(args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    if not args.client_id:
        raise SystemExit("--base-url needs --client-id of a real key")
    async with httpx.AsyncClient(base_url=args.base_url, timeout=30) as http:
        times = await measure(
            http, client_id=args.client_id, samples=args.samples, warmup=args.warmup
        )
    return times, f"HTTP {args.base_url}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--samples", type=int, default=3000, help="per kind (default 3000)")
    parser.add_argument("--warmup", type=int, default=200, help="pairs discarded first")
    parser.add_argument("--database-url", help="in process: a migrated-or-empty database")
    parser.add_argument("--base-url", help="measure a running server instead (loopback)")
    parser.add_argument("--client-id", help="with --base-url: the client id of a real key")
    parser.add_argument("--alpha", type=float, default=0.001, help="significance level")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    runner = over_loopback if args.base_url else in_process
    times, where = asyncio.run(runner(args))
    unknown, wrong = times["unknown"], times["wrong"]
    mw = mann_whitney(unknown, wrong)
    ks = kolmogorov_smirnov(unknown, wrong)
    su, sw = summary(unknown), summary(wrong)
    median_gap = su["median_us"] - sw["median_us"]
    figures: dict[str, Any] = {
        "where": where,
        "unknown_client": su,
        "wrong_secret": sw,
        "median_difference_us": median_gap,
        "median_difference_pct": 100 * median_gap / sw["median_us"],
        "mann_whitney": mw,
        "kolmogorov_smirnov": ks,
        "alpha": args.alpha,
    }
    distinguishable = mw["p"] < args.alpha or ks["p"] < args.alpha
    figures["verdict"] = "DISTINGUISHABLE" if distinguishable else "indistinguishable"

    print(f"timing of failed client authentication at /token ({where})")
    print(f"{'':16}{'n':>7}{'median':>10}{'mean':>10}{'p10':>10}{'p90':>10}   (µs)")
    for label, s in (("unknown client", su), ("wrong secret", sw)):
        print(
            f"{label:16}{s['n']:>7}{s['median_us']:>10.0f}{s['mean_us']:>10.0f}"
            f"{s['p10_us']:>10.0f}{s['p90_us']:>10.0f}"
        )
    print(f"median difference: {median_gap:+.0f} µs ({figures['median_difference_pct']:+.2f} %)")
    print(
        f"Mann-Whitney U: U={mw['U']:.0f} z={mw['z']:+.2f} p={mw['p']:.3g} "
        f"P(unknown slower)={mw['common_language_effect']:.3f}"
    )
    print(f"Kolmogorov-Smirnov: D={ks['D']:.4f} p={ks['p']:.3g}")
    print(f"verdict at alpha={args.alpha}: {figures['verdict']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if distinguishable else 0


if __name__ == "__main__":
    sys.exit(main())
