"""`keyservice backup` of a serving embedded database, and the README's restore from it."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading

import httpx
import pytest

from tests.e2e.test_server import Server, admin_credentials, base_env, free_port

pytestmark = pytest.mark.e2e


def exchange(server: Server, api_key: str) -> httpx.Response:
    return httpx.post(
        server.url + "/token",
        data={"grant_type": "client_credentials", "api_key": api_key},
        timeout=10,
    )


def test_a_backup_taken_while_serving_restores_to_a_working_service(tmp_path):
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    server = Server(live_dir, base_env(), free_port())
    stop = threading.Event()
    writes: list[int] = []
    try:
        username, password = admin_credentials(server)
        token = httpx.post(
            server.url + "/token",
            data={"grant_type": "password", "username": username, "password": password},
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}

        def create_key(name: str) -> str:
            made = httpx.post(server.url + "/api-keys", headers=auth, json={"name": name})
            assert made.status_code == 201, made.text
            return str(made.json()["api_key"])

        before = create_key("before the backup")

        def keep_writing() -> None:  # each exchange commits a refresh token and an event
            while not stop.is_set():
                writes.append(exchange(server, before).status_code)

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            while len(writes) < 5:  # the backup runs amid the writes, not before them
                stop.wait(0.05)
            made = server.cli("backup", str(tmp_path / "copy.db"))
            during = len(writes)
            while len(writes) < during + 5:
                stop.wait(0.05)
        finally:
            stop.set()
            writer.join()
        assert made.returncode == 0, made.stderr
        assert set(writes) == {200}  # the server went on answering
        secret_file = live_dir / ".keyservice" / "secret_key"
        assert f"keep a copy of {secret_file}" in made.stdout
        assert secret_file.read_text().strip() not in made.stdout
        after = create_key("after the backup")
        assert exchange(server, after).status_code == 200
    finally:
        stop.set()
        server.stop()

    copy = tmp_path / "copy.db"
    assert copy.stat().st_mode & 0o777 == 0o600
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    # README, "Backups": a new data folder holding the copy and the same secret.
    restored_dir = tmp_path / "restored"
    data = restored_dir / ".keyservice"
    data.mkdir(parents=True, mode=0o700)
    shutil.copyfile(copy, data / "keyservice.db")
    shutil.copyfile(live_dir / ".keyservice" / "secret_key", data / "secret_key")
    (data / "secret_key").chmod(0o600)
    restored = Server(restored_dir, base_env(), free_port())
    try:
        assert exchange(restored, before).status_code == 200
        refused = exchange(restored, after)  # made after the backup: not in it
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        signed_in = httpx.post(
            restored.url + "/token",
            data={"grant_type": "password", "username": username, "password": password},
        )
        assert signed_in.status_code == 200
        assert "Created the first admin" not in restored.output()  # the data is there
    finally:
        restored.stop()
