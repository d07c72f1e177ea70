"""Two replicas of one deployment started at the same moment on an empty PostgreSQL database.

Each `serve` migrates the database, makes the first signing key and the bootstrap admin;
the replicas must not trip over each other doing so (migrations.py, security/jwt.py).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.reliability.support import ADMIN, ADMIN_PASSWORD, Server

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]


def test_replicas_started_together_on_an_empty_database(database, tmp_path):
    # All but one replica died at start with a traceback (duplicate "alembic_version").
    start = time.time() + 8  # both past their imports by then, then migrating at once
    preamble = (
        "import time, keyservice.cli, keyservice.migrations\n"
        f"time.sleep(max(0, {start} - time.time()))"
    )
    replicas = [
        Server(
            database_url=database,
            data_dir=tmp_path / name,
            workers=workers,
            preamble=preamble,
            issuer="http://keys.test",  # one deployment: the same issuer on every replica
        )
        for name, workers in (("a", 2), ("b", 1))
    ]
    try:
        with ThreadPoolExecutor(len(replicas)) as pool:
            for started in [pool.submit(replica.start, 60) for replica in replicas]:
                started.result()
        a, b = (httpx.Client(base_url=replica.base_url, timeout=10) for replica in replicas)
        with a, b:
            login = a.post(
                "/token",
                data={"grant_type": "password", "username": ADMIN, "password": ADMIN_PASSWORD},
            )
            assert login.status_code == 200, login.text
            bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
            users = b.get("/admin/users", headers=bearer)  # A's token, verified by B
            assert users.status_code == 200, users.text
            assert [user["username"] for user in users.json()["items"]] == [ADMIN]
            jwks = [client.get("/.well-known/jwks.json").json()["keys"] for client in (a, b)]
            assert len(jwks[0]) == 1 and jwks[0] == jwks[1]
    finally:
        for replica in replicas:
            replica.terminate()
    for replica in replicas:
        assert "Traceback" not in replica.log_path.read_text(), replica.log()
