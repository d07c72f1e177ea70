"""`KEYSERVICE_LOG_FORMAT`: every line the server writes is one JSON object (`json`), or
in the one text format of our own lines, uvicorn's included (`text`)."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_server import KEYSERVICE, Server, base_env, free_port

pytestmark = pytest.mark.e2e


def serve_and_sign_in(tmp_path: Path, workers: str, password: str, **env: str) -> tuple[str, str]:
    """Start `keyservice serve` with a bootstrap admin `root`, sign in once, stop it (SIGTERM);
    return everything it wrote (stdout and stderr) and the access token it answered."""
    environment = base_env(
        KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME="root",
        KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD=password,
        **env,
    )
    server = Server(tmp_path, environment, free_port(), "--workers", workers)
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200
        signed_in = httpx.post(
            server.url + "/token",
            data={"grant_type": "password", "username": "root", "password": password},
        )
        assert signed_in.status_code == 200
        token: str = signed_in.json()["access_token"]
    finally:
        server.stop()
    return server.output(), token


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_line_of_a_json_logging_server_is_an_object(tmp_path, workers):
    password = "json-logs-password-123"
    text, token = serve_and_sign_in(tmp_path, workers, password, KEYSERVICE_LOG_FORMAT="json")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # each one parses
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    messages = [line["message"] for line in lines]
    assert "created the bootstrap admin 'root'" in messages
    assert any(line["logger"].startswith("uvicorn") for line in lines), messages  # its own too
    (health,) = [line for line in lines if line.get("path") == "/healthz"]
    assert (health["method"], health["status"]) == ("GET", 200)
    assert isinstance(health["duration_ms"], float)
    assert any(line.get("path") == "/token" and line["status"] == 200 for line in lines)
    assert password not in text and token not in text


# What configure_logging's text formatter writes: time, level, logger, then the message.
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: \S")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_line_of_a_text_logging_server_has_our_time_and_logger(tmp_path, workers):
    # uvicorn's own lines ("Started server process", "Shutting down") were its own format,
    # "INFO:     Started server process [123]": no time, among ours that have one.
    password = "text-logs-password-123"
    text, token = serve_and_sign_in(tmp_path, workers, password)
    lines = [line for line in text.splitlines() if line.strip()]
    assert [line for line in lines if not TEXT_LINE.match(line)] == [], text
    messages = [line.partition(": ")[2] for line in lines]
    assert "created the bootstrap admin 'root'" in messages, text
    uvicorn = [line for line in lines if " uvicorn.error: " in line]
    for said in ("Started server process", "Application startup complete", "Shutting down"):
        assert sum(said in line for line in uvicorn) == int(workers), text  # each worker's
    if workers == "1":  # several: the parent names the address (workers.py)
        assert any("Uvicorn running on" in line for line in uvicorn), text
    assert any(" keyservice.access: GET /healthz 200 " in line for line in lines), text
    assert password not in text and token not in text


def test_a_commands_audit_events_are_log_lines_too(tmp_path):
    env = base_env(KEYSERVICE_AUDIT_LOG="true", KEYSERVICE_LOG_FORMAT="json")
    env.pop("SUDO_USER", None)  # the actor names this account alone
    migrated = subprocess.run(
        [KEYSERVICE, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    lines = [json.loads(line) for line in migrated.stderr.splitlines() if line.strip()]
    (event,) = [line["audit"] for line in lines if line["logger"] == "keyservice.audit"]
    assert (event["type"], event["actor"]) == (
        "schema.migrated",
        f"cli:{pwd.getpwuid(os.getuid()).pw_name}",
    )
    assert event["reason"].startswith("from an empty database to ")
    created = subprocess.run(
        [KEYSERVICE, "devices", "create", "sensor-7"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    lines = [json.loads(line) for line in created.stderr.splitlines() if line.strip()]
    events = [line["audit"] for line in lines if line["logger"] == "keyservice.audit"]
    assert [(e["type"], e["actor"]) for e in events] == [
        ("device.created", f"cli:{pwd.getpwuid(os.getuid()).pw_name}")
    ]
