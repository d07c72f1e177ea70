"""FastAPI's native OpenTelemetry stays off, even when a global provider appears.

FastAPI (0.165) switches its telemetry on by itself as soon as any library or wrapper
(`opentelemetry-instrument`, a vendor agent) sets a global provider. It then hands span
processors the request body of a failed validation and the validation errors with their
`input` (client secrets, passwords, refresh tokens travel in those bodies) and records
query strings redacted only for names it knows. Nothing here redacts what it exports, so
the app turns it off (src/keyservice/main.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import TEST_SECRET

SCRIPT = r"""
import asyncio, json, sys
from opentelemetry import trace

calls = []

class RecordingTracer(trace.NoOpTracer):
    def start_span(self, name, *args, **kwargs):
        calls.append(name)
        return super().start_span(name, *args, **kwargs)

    def start_as_current_span(self, name, *args, **kwargs):
        calls.append(name)
        return super().start_as_current_span(name, *args, **kwargs)

class RecordingProvider(trace.TracerProvider):
    def get_tracer(self, *args, **kwargs):
        calls.append("get_tracer")
        return RecordingTracer()

trace.set_tracer_provider(RecordingProvider())

import httpx
from keyservice.config import Settings
from keyservice.main import create_app

async def main():
    database_url, secret, data_dir = sys.argv[1:4]
    app = create_app(Settings(database_url=database_url, secret_key=secret, data_dir=data_dir))
    statuses = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            login = {"grant_type": "password", "username": "u", "password": "hunter2-secret"}
            for method, path, body in (
                ("GET", "/healthz", None),
                ("POST", "/revoke", {"data": {"token": "rt_not-a-real-one"}}),
                ("POST", "/token", {"data": login}),
                ("POST", "/users", {"json": {"password": "hunter2-secret"}}),
            ):
                response = await http.request(method, path, **(body or {}))
                statuses.append(response.status_code)
    print(json.dumps({"statuses": statuses, "calls": calls}))

asyncio.run(main())
"""


def test_no_spans_are_started_when_a_global_tracer_provider_is_set(database_url, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, database_url, TEST_SECRET, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["statuses"][0] == 200 and all(status < 500 for status in seen["statuses"])
    assert seen["calls"] == []
