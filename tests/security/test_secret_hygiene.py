"""No secret ever lands in a log line, an audit event or any table, with logging at DEBUG.

A real server (uvicorn, SQLAlchemy and our loggers all at DEBUG) serves a broad traffic
script; then its whole log output, every audit event and a text dump of every table are
searched for every secret the script created or sent: API key strings, client secrets,
refresh tokens, access tokens, passwords (right and wrong). Hash columns hold HMACs and
password hashes, which are fine; the search is for the raw values.
"""

from __future__ import annotations

import asyncio
import base64
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SKIP_POSTGRES, create_postgres_database, drop_postgres_database
from tests.reliability.support import ADMIN, ADMIN_PASSWORD, Server

pytestmark = pytest.mark.e2e

USER_PASSWORD = "user-password-Zq8v!x%+:" + "u" * 12
NEW_PASSWORD = "changed-password-Wm3k" + "n" * 12
WRONG_PASSWORD = "wrong-password-Hy7t" + "w" * 12
WRONG_SECRET = "WrongSecret" + "9" * 32


class Secrets:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, label: str, value: Any) -> None:
        if isinstance(value, str) and value:
            self.values[f"{label}#{len(self.values)}"] = value

    def needles(self) -> dict[str, str]:
        """Each secret whole, and a middle slice of it (a truncated leak is a leak too)."""
        found: dict[str, str] = {}
        for label, value in self.values.items():
            found[label] = value
            if len(value) >= 32:
                middle = len(value) // 2
                found[label + ":middle"] = value[middle - 12 : middle + 12]
        return found


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def traffic(base_url: str, secrets: Secrets) -> int:
    """Exercise every credential path; return the number of requests sent."""
    sent = 0

    def call(http: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
        nonlocal sent
        sent += 1
        response = http.request(method, url, **kwargs)
        assert response.status_code < 500, (url, response.text)
        body = (
            response.json()
            if response.content and "json" in response.headers.get("content-type", "")
            else {}
        )
        if isinstance(body, dict):
            for field in ("access_token", "refresh_token", "client_secret", "api_key"):
                secrets.add(field, body.get(field))
        return response

    for value in (ADMIN_PASSWORD, USER_PASSWORD, NEW_PASSWORD, WRONG_PASSWORD, WRONG_SECRET):
        secrets.add("password", value)
    with httpx.Client(base_url=base_url, timeout=30) as http:
        token = lambda: {"grant_type": "password", "username": ADMIN, "password": ADMIN_PASSWORD}  # noqa: E731
        admin = call(http, "POST", "/token", data=token()).json()
        auth = {"Authorization": f"Bearer {admin['access_token']}"}
        user = call(
            http,
            "POST",
            "/admin/users",
            json={
                "username": "hygiene",
                "password": USER_PASSWORD,
                "permissions": ["api_keys:manage"],
            },
            headers=auth,
        ).json()
        call(
            http,
            "POST",
            "/token",
            data={"grant_type": "password", "username": "hygiene", "password": WRONG_PASSWORD},
        )
        # The password typed into the username box: a lookup of it as a username.
        call(
            http,
            "POST",
            "/token",
            data={"grant_type": "password", "username": USER_PASSWORD, "password": "x" * 12},
        )
        login = call(
            http,
            "POST",
            "/token",
            data={"grant_type": "password", "username": "hygiene", "password": USER_PASSWORD},
        ).json()
        user_auth = {"Authorization": f"Bearer {login['access_token']}"}
        key = call(http, "POST", "/api-keys", json={"name": "hyg"}, headers=user_auth).json()
        device = call(
            http, "POST", "/admin/devices", json={"name": "dev1", "permissions": []}, headers=auth
        ).json()
        device_key = call(
            http,
            "POST",
            f"/admin/devices/{device['id']}/api-keys",
            json={"name": "dk"},
            headers=auth,
        ).json()
        cc = {"grant_type": "client_credentials"}
        by_basic = call(
            http, "POST", "/token", data=cc, headers=basic(key["client_id"], key["client_secret"])
        ).json()
        by_post = call(
            http,
            "POST",
            "/token",
            data={**cc, "client_id": key["client_id"], "client_secret": key["client_secret"]},
        ).json()
        call(http, "POST", "/token", data={**cc, "api_key": device_key["api_key"]})
        refreshed = call(
            http,
            "POST",
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": by_basic["refresh_token"]},
        )
        assert refreshed.status_code == 200
        reuse = call(
            http,
            "POST",
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": by_basic["refresh_token"]},
        )
        assert reuse.status_code == 400
        call(http, "POST", "/revoke", data={"token": by_post["refresh_token"]})
        call(http, "POST", "/introspect", data={"token": by_post["access_token"]}, headers=auth)
        call(http, "POST", "/introspect", data={"token": login["access_token"]}, headers=auth)
        for data in (
            {**cc, "client_id": key["client_id"], "client_secret": WRONG_SECRET},
            {**cc, "client_id": "kc_" + "Z" * 16, "client_secret": WRONG_SECRET},
            {**cc, "api_key": key["api_key"][:-3] + "abc"},
            {"grant_type": "refresh_token", "refresh_token": by_post["refresh_token"] + "x"},
        ):
            secrets.add(
                "attempt",
                data.get("client_secret") or data.get("api_key") or data.get("refresh_token"),
            )
            call(http, "POST", "/token", data=data)
        call(http, "GET", "/me", headers=user_auth)
        call(http, "GET", "/me", headers={"Authorization": f"Bearer {key['api_key']}"})
        call(http, "GET", "/api-keys", headers=user_auth)
        call(
            http,
            "POST",
            f"/api-keys/{key['id']}/rotate",
            json={"grace_seconds": 0},
            headers=user_auth,
        )
        call(http, "GET", "/admin/api-keys", headers=auth)
        call(http, "GET", "/admin/users", headers=auth)
        call(
            http,
            "PATCH",
            f"/admin/users/{user['id']}",
            json={"password": NEW_PASSWORD},
            headers=auth,
        )
        call(http, "GET", "/admin/audit-events?limit=500", headers=auth)
        call(http, "DELETE", f"/admin/api-keys/{device_key['id']}", headers=auth)
        call(http, "GET", f"/admin/api-keys?q={key['client_secret']}", headers=auth)
        # A key string or secret where an id goes: refused, and not in the access log.
        call(http, "DELETE", f"/api-keys/{key['api_key']}", headers=user_auth)
        call(http, "GET", f"/admin/users/{key['client_secret']}", headers=auth)
        call(http, "GET", f"/console/keys/{key['client_secret']}/delete")
    with httpx.Client(base_url=base_url, timeout=30) as browser:
        # The console: its session cookies and CSRF tokens are secrets too.
        page = call(browser, "GET", "/console/login")
        form = {"username": "hygiene", "password": NEW_PASSWORD, "csrf_token": csrf_of(page.text)}
        secrets.add("csrf", form["csrf_token"])
        call(browser, "POST", "/console/login", data={**form, "password": WRONG_PASSWORD})
        call(browser, "POST", "/console/login", data={**form, "username": NEW_PASSWORD})
        assert call(browser, "POST", "/console/login", data=form).status_code == 303
        keys = call(browser, "GET", "/console/keys")
        assert keys.status_code == 200, keys.text
        secrets.add("csrf", csrf_of(keys.text))
        for cookie in browser.cookies.jar:
            secrets.add("cookie", cookie.value)
        call(browser, "POST", "/console/logout", data={"csrf_token": csrf_of(keys.text)})
    return sent


# What the tables keep of secrets: password hashes (argon2, crackable offline if leaked)
# and peppered HMACs of key secrets and refresh tokens. Fine in the tables, not in a log.
HASHES = (
    "SELECT password_hash FROM principal WHERE password_hash IS NOT NULL "
    "UNION ALL SELECT secret_hash FROM api_key WHERE secret_hash IS NOT NULL "
    "UNION ALL SELECT token_hash FROM refresh_token"
)


def dump_sqlite(path: Path) -> tuple[str, list[str]]:
    """A text dump of every table, and the stored hashes."""
    connection = sqlite3.connect(path)
    try:
        tables = [
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        dump = "\n".join(
            f"{table}: {row!r}"
            for table in tables
            for row in connection.execute(f"SELECT * FROM {table}")
        )
        return dump, [row[0] for row in connection.execute(HASHES)]
    finally:
        connection.close()


async def dump_postgres(url: str) -> tuple[str, list[str]]:
    """A text dump of every table, and the stored hashes."""
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = [
            r["tablename"]
            for r in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        ]
        lines = []
        for table in tables:
            for row in await connection.fetch(f'SELECT * FROM "{table}"'):
                lines.append(f"{table}: {dict(row)!r}")
        return "\n".join(lines), [row[0] for row in await connection.fetch(HASHES)]
    finally:
        await connection.close()


BACKEND_NAMES = ["sqlite"] + ([] if SKIP_POSTGRES else ["postgresql"])


@dataclass
class Run:
    exit_code: int | None
    log: str
    dump: str
    hashes: list[str]
    secrets: Secrets
    sent: int


def serve_traffic(backend_name: str, tmp_path: Path, preamble: str = "") -> Run:
    """Run the traffic script against a real server logging at DEBUG; collect everything."""
    url = create_postgres_database("ks_hygiene") if backend_name == "postgresql" else None
    server = Server(
        database_url=url,
        data_dir=tmp_path / "data",
        workers=1,
        log_level="DEBUG",
        preamble=preamble,
    )
    server.start()
    secrets = Secrets()
    try:
        sent = traffic(server.base_url, secrets)
    finally:
        code = server.terminate()
    try:
        log = server.log_path.read_text(errors="replace")
        if url is None:
            dump, hashes = dump_sqlite(tmp_path / "data" / "keyservice.db")
        else:
            dump, hashes = asyncio.run(dump_postgres(url))
    finally:
        if url is not None:
            drop_postgres_database(url)
    # uvicorn re-raises SIGTERM after a clean single-process shutdown.
    assert code in (0, -15), server.log()
    assert "Started server process" in log and "keyservice.access" in log
    return Run(code, log, dump, hashes, secrets, sent)


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_no_secret_in_logs_audit_or_tables(backend_name, tmp_path):
    # SQLAlchemy holds its own loggers at WARNING unless told otherwise: tell it, so that
    # every statement (and each row read) is in the capture too.
    preamble = "import logging; logging.getLogger('sqlalchemy').setLevel(logging.DEBUG)"
    run = serve_traffic(backend_name, tmp_path, preamble)
    log, dump = run.log, run.dump
    # The capture really is at DEBUG and covers every layer.
    assert "DEBUG sqlalchemy.engine" in log, log[:2000]
    assert "audit_event: " in dump and "refresh_token: " in dump
    needles = run.secrets.needles()
    assert len(run.secrets.values) >= 25
    leaks = {
        label: where
        for label, needle in needles.items()
        for where, text in (("log", log), ("tables", dump))
        if needle in text
    }
    print(
        f"\nsecret hygiene ({backend_name}): {run.sent} requests, "
        f"{len(run.secrets.values)} secrets, {len(log)} log chars, {len(dump)} dump chars, "
        f"leaks: {leaks}"
    )
    assert leaks == {}


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_no_stored_hash_in_the_log_at_the_services_own_debug_level(backend_name, tmp_path):
    """KEYSERVICE_LOG_LEVEL=DEBUG and nothing else: no hash the tables hold is in the log.

    (SQLAlchemy's own DEBUG, which the test above switches on besides, logs each row read,
    hashes included: a choice beyond the service's settings, for debugging SQLAlchemy.)
    """
    run = serve_traffic(backend_name, tmp_path)
    assert " DEBUG " in run.log and len(run.hashes) >= 8
    assert "$argon2" not in run.log
    leaked = [value for value in run.hashes if value in run.log]
    assert leaked == []
