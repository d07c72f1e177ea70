"""KEYSERVICE_AUDIT_LOG: every committed audit event is also a log line, and only those."""

from __future__ import annotations

import json
import logging

import pytest

from keyservice.audit import service as audit
from keyservice.logbuffer import JsonFormatter
from tests.admin.support import admin_token, create_device
from tests.factories import audit_events, bearer, create_key, exchange, user_token


def logged(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.audit for r in caplog.records if r.name == "keyservice.audit"]


@pytest.mark.parametrize("settings_overrides", [{"audit_log": True}])
async def test_each_committed_event_is_one_log_line(client, context, caplog):
    caplog.set_level(logging.INFO, logger="keyservice.audit")
    admin = await admin_token(context, client)  # a sign-in: the token path's batch writer
    await create_device(client, admin, "sensor")  # an admin change, through a session
    user = await user_token(context, client, "quinn", ["api_keys:manage"])
    key = await create_key(client, user, name="k")
    assert (await exchange(client, key["api_key"])).status_code == 200
    refused = await client.post("/admin/users", json={"username": "x"}, headers=bearer(user))
    assert refused.status_code == 403  # a refused change is an event too
    async with context.database.sessionmaker() as session:  # never committed: never logged
        audit.record(session, type="test.rolled_back", actor="test")
        await session.flush()
        await session.rollback()

    # The app's start recorded its first signing key before the test could capture it.
    stored = [e for e in await audit_events(context) if e.type != "signing_key.created"]
    lines = logged(caplog)
    assert sorted(line["id"] for line in lines) == sorted(event.id for event in stored)
    assert "test.rolled_back" not in {line["type"] for line in lines}
    by_id = {line["id"]: line for line in lines}
    for event in stored:
        line = by_id[event.id]
        assert (line["type"], line["outcome"], line["actor"], line["ip"], line["reason"]) == (
            event.type,
            event.outcome,
            event.actor,
            event.ip,
            event.reason,
        )
        assert (line["principal_id"], line["key_id"]) == (event.principal_id, event.key_id)
    assert {"token.exchange", "device.created", "api_key.created"} <= {
        by_id[e.id]["type"] for e in stored
    }

    # One line each in either format, the fields as JSON; no secret in any of them.
    record = next(r for r in caplog.records if r.name == "keyservice.audit")
    assert json.loads(record.getMessage().removeprefix("audit event ")) == record.audit
    as_json = json.loads(JsonFormatter().format(record))
    assert as_json["audit"] == record.audit and as_json["message"].startswith("audit event ")
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "keyservice.audit")
    assert key["api_key"] not in text and key["client_secret"] not in text and user not in text


async def test_off_by_default(client, context, caplog):
    caplog.set_level(logging.INFO, logger="keyservice.audit")
    admin = await admin_token(context, client)
    await create_device(client, admin, "sensor")
    assert await audit_events(context)
    assert logged(caplog) == []
