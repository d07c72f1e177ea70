"""Prometheus metrics (keyservice/metrics.py), in process: what is counted, under which
labels, on which listener; never a secret, an id or a name. The served process with
several workers: tests/e2e/test_metrics.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyservice.audit import refusals
from tests.auth.test_token_endpoint import PERMS, basic
from tests.factories import bearer, create_key, exchange, user_token
from tests.reliability.support import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"metrics_port": free_port(23000), "throttle_client_failures": 3}


def scrape_text(context) -> str:
    port = context.settings.metrics_port
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def tokens(samples: Samples, grant: str, outcome: str, error: str = "") -> float:
    key = frozenset({"grant_type": grant, "outcome": outcome, "error": error}.items())
    return samples.get(("keyservice_token_requests_total", key), 0.0)


def token_count(samples: Samples, grant: str) -> float:
    key = frozenset({"grant_type": grant}.items())
    return samples[("keyservice_token_request_duration_seconds_count", key)]


def http(samples: Samples, route: str, status: str) -> float:
    key = frozenset({"route": route, "status": status}.items())
    return samples.get(("keyservice_http_requests_total", key), 0.0)


@pytest.fixture
async def key(client, context):
    token = await user_token(context, client, "alice", PERMS)
    return await create_key(client, token, name="ci", scopes=["projects:read"])


async def test_token_requests_are_counted_by_grant_and_outcome(client, context, key):
    for _ in range(3):
        assert (await exchange(client, key["api_key"])).status_code == 200
    wrong = basic(key["client_id"], "ksk_" + "x" * 40)
    for _ in range(2):
        refused = await client.post(
            "/token", data={"grant_type": "client_credentials"}, headers=wrong
        )
        assert refused.status_code == 401
    assert (await client.post("/token", data={"grant_type": "nope"})).status_code == 400
    assert (await client.post("/token", data={"scope": "x"})).status_code == 400  # no grant
    bogus = {"grant_type": "refresh_token", "refresh_token": "ksr_" + "y" * 40}
    assert (await client.post("/token", data=bogus)).status_code == 400

    samples = parse(scrape_text(context))
    assert tokens(samples, "client_credentials", "issued") == 3
    assert tokens(samples, "client_credentials", "refused", "invalid_client") == 2
    assert tokens(samples, "other", "refused", "unsupported_grant_type") == 1
    assert tokens(samples, "other", "refused", "invalid_request") == 1
    assert tokens(samples, "refresh_token", "refused", "invalid_grant") == 1
    assert tokens(samples, "password", "issued") == 1  # alice's sign-in (user_token)
    # Every answer is timed, refused or not, under its grant.
    assert token_count(samples, "client_credentials") == 5
    assert token_count(samples, "other") == 2
    assert token_count(samples, "refresh_token") == 1
    assert http(samples, "/token", "2xx") == 4 and http(samples, "/token", "4xx") == 5


async def test_a_throttled_client_is_counted_as_throttled(client, context, key):
    wrong = basic(key["client_id"], "ksk_" + "x" * 40)
    answers = [
        (await client.post("/token", data={"grant_type": "client_credentials"}, headers=wrong))
        for _ in range(5)
    ]
    assert [a.status_code for a in answers] == [401, 401, 401, 429, 429]

    samples = parse(scrape_text(context))
    assert tokens(samples, "client_credentials", "refused", "invalid_client") == 3
    assert tokens(samples, "client_credentials", "throttled", "slow_down") == 2


async def test_routes_are_labelled_by_template_and_nothing_secret_is_shown(client, context, key):
    admin = await user_token(context, client, "root-operator", ["admin"])
    issued = (await exchange(client, key["api_key"])).json()
    refreshed = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]},
    )
    assert refreshed.status_code == 200
    users = (await client.get("/admin/users", headers=bearer(admin))).json()
    user_id = users["items"][0]["id"]
    assert (await client.get(f"/admin/users/{user_id}", headers=bearer(admin))).status_code == 200
    assert (await client.get(f"/api-keys/{key['id']}")).status_code == 401
    # A credential pasted into a path that does not exist, and one in a query string.
    assert (await client.get(f"/nothing/{key['api_key']}")).status_code == 404
    assert (await client.get(f"/healthz?api_key={key['api_key']}")).status_code == 200
    # A HEAD (served as a GET) is counted under its route too.
    assert (await client.head(f"/admin/users/{user_id}", headers=bearer(admin))).status_code == 200

    text = scrape_text(context)
    samples = parse(text)
    assert http(samples, "/admin/users/{user_id}", "2xx") == 2
    assert http(samples, "/api-keys/{key_id}", "4xx") == 1
    assert http(samples, "unmatched", "4xx") == 1
    assert http(samples, "/healthz", "2xx") == 1
    assert tokens(samples, "refresh_token", "issued") == 1
    routes = {dict(labels)["route"] for name, labels in samples if "route" in dict(labels)}
    assert all(route == "unmatched" or route.startswith("/") for route in routes), routes
    for value in (
        key["api_key"],
        key["client_secret"],
        key["client_id"],
        key["id"],
        user_id,
        "alice",
        "root-operator",
        issued["access_token"],
        issued["refresh_token"],
        refreshed.json()["refresh_token"],
        "127.0.0.1",
    ):
        assert value not in text, value


async def test_the_metrics_have_a_listener_of_their_own(client, context):
    port = context.settings.metrics_port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as metrics:
        assert (await metrics.get("/metrics")).status_code == 200
        elsewhere = await metrics.get("/token")
        assert elsewhere.status_code == 404 and "/metrics" in elsewhere.text
        assert (await metrics.post("/metrics")).status_code == 405
    # The API's port does not serve them.
    assert (await client.get("/metrics")).status_code == 404


async def test_the_metrics_listener_answers_head_as_get_without_a_body(client, context):
    """HEAD /metrics was a 405 (prometheus_client's app takes GET only), where the API's
    edge answers HEAD wherever it answers GET (RFC 9110 §9.1)."""
    port = context.settings.metrics_port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as metrics:
        got = await metrics.get("/metrics")
        head = await metrics.head("/metrics")
        assert head.status_code == 200, head.text
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert int(head.headers["content-length"]) > 0  # the GET's length, give or take
        refused = await metrics.post("/metrics")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "OPTIONS, GET, HEAD"
        assert (await metrics.head("/token")).status_code == 404


async def test_an_audit_event_that_could_not_be_written_is_counted(
    client, context, monkeypatch, caplog
):
    token = await user_token(context, client, "mallory", PERMS)  # no admin

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the audit table is gone")

    monkeypatch.setattr(refusals.audit, "record", broken)
    refused = await client.post(
        "/admin/users",
        json={"username": "eve", "password": "eve-password-123456"},
        headers=bearer(token),
    )
    assert refused.status_code == 403  # answered all the same
    assert "could not record a refused user.created" in caplog.text
    samples = parse(scrape_text(context))
    assert samples[("keyservice_audit_write_failures_total", frozenset())] == 1


async def test_a_failed_revocation_reload_is_counted(app, context, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="keyservice.auth.revocation")

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("database restarting")

    monkeypatch.setattr(context.revocation, "reload", broken)
    key = ("keyservice_background_failures_total", frozenset({"task": "revocation_reload"}.items()))
    deadline = time.monotonic() + 10  # the view polls every 0.2 s here
    while (failed := parse(scrape_text(context))[key]) < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert failed >= 1
    # Logged too, by the exception's type alone (its text may hold a database URL).
    logged = [r.getMessage() for r in caplog.records if r.name == "keyservice.auth.revocation"]
    assert "revocation view reload failed: ConnectionError" in logged
    assert not any("restarting" in line for line in logged)


@pytest.mark.parametrize("settings_overrides", [{}])
async def test_metrics_are_off_unless_a_port_is_given(client, context, app):
    assert context.settings.metrics_port is None and context.metrics is None
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/metrics")).status_code == 404


async def test_answers_of_the_edge_are_logged_and_counted_as_every_other(client, context, caplog):
    # Refused on their head alone, before any route: they were answered, but no access-log
    # line and no count said so (a client sending two Authorization headers, or a proxy
    # adding a header too many, showed nowhere).
    import logging

    caplog.set_level(logging.INFO, logger="keyservice.access")
    huge = {f"x-h{n}": "v" for n in range(120)}
    answers = [
        await client.get("/healthz", headers=huge),
        await client.post("/token", headers=huge, data={"grant_type": "client_credentials"}),
        await client.post("/api-keys", headers={"content-length": str(2 << 20)}),
        await client.post("/token", content=b"x", headers={"content-length": str(2 << 20)}),
        await client.get(
            "/me", headers=[("authorization", "Bearer a"), ("authorization", "Bearer b")]
        ),
        await client.get("/healthz?x=%00"),
    ]
    assert [a.status_code for a in answers] == [431, 431, 413, 413, 400, 400]

    samples = parse(scrape_text(context))
    assert http(samples, "edge", "4xx") == 4
    assert http(samples, "/token", "4xx") == 2
    assert tokens(samples, "other", "refused", "request_header_fields_too_large") == 1
    assert tokens(samples, "other", "refused", "request_too_large") == 1
    assert token_count(samples, "other") == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "keyservice.access"]
    said = [" ".join(line.split()[:3]) for line in lines]
    assert said == [
        "GET /healthz 431",
        "POST /token 431",
        "POST /api-keys 413",
        "POST /token 413",
        "GET /me 400",
        "GET /healthz 400",
    ]
