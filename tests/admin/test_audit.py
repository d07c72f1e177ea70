"""Admin API: audit events, filtered, newest first, paged by cursor while events arrive."""

from __future__ import annotations

import base64
import logging
from datetime import timedelta

from sqlalchemy import text

from keyservice.audit.models import AuditEvent
from keyservice.database import utcnow
from tests.admin.support import admin_request, admin_token, create_device, create_device_key
from tests.factories import (
    add_scope,
    audit_events,
    bearer,
    create_key,
    create_principal,
    exchange,
    login,
    user_token,
)

FIELDS = {"id", "at", "type", "actor", "principal_id", "key_id", "ip", "outcome", "reason"}


async def _write(context, count, *, type="test.event", **values):
    async with context.database.sessionmaker() as session:
        for n in range(count):
            session.add(AuditEvent(type=type, reason=f"{type} {n}", **values))
            await session.flush()  # one seq after the other, as requests would write them
        await session.commit()


async def _page(client, admin, **params):
    response = await admin_request(client, admin, "GET", "/admin/audit-events", 200, params=params)
    return response.json()


async def test_events_newest_first_with_fields(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "sensor")
    body = await _page(client, admin)
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert set(first) == FIELDS
    assert first["type"] == "device.created"
    assert first["principal_id"] == device["id"]
    assert first["outcome"] == "success"
    assert first["ip"] == "127.0.0.1"
    assert first["at"].endswith("Z") or first["at"].endswith("+00:00")
    # The admin's own login came before, and the first signing key before that.
    assert [item["type"] for item in body["items"]][1:] == ["login", "signing_key.created"]


async def test_filters(client, context):
    admin = await admin_token(context, client)
    device = await create_device(client, admin, "meter")
    key = await create_device_key(client, admin, device["id"])
    assert (await exchange(client, key["api_key"])).status_code == 200
    bad = await client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": key["client_id"],
            "client_secret": "x" * 43,
        },
    )
    assert bad.status_code == 401

    by_key = await _page(client, admin, key_id=key["id"])
    assert [item["type"] for item in by_key["items"]] == [
        "token.exchange",
        "token.exchange",
        "api_key.created",
    ]
    assert [item["outcome"] for item in by_key["items"]][:2] == ["failure", "success"]
    assert by_key["items"][0]["reason"] == "wrong secret"

    by_principal = await _page(client, admin, principal_id=device["id"])
    assert {item["principal_id"] for item in by_principal["items"]} == {device["id"]}
    assert len(by_principal["items"]) == 4  # device.created, api_key.created, 2 exchanges

    by_type = await _page(client, admin, type="device.created")
    assert [item["principal_id"] for item in by_type["items"]] == [device["id"]]
    both = await _page(client, admin, type="token.exchange", key_id=key["id"])
    assert len(both["items"]) == 2

    await _write(context, 3, type="old.event", at=utcnow() - timedelta(days=3))
    recent = await _page(client, admin, since=(utcnow() - timedelta(days=1)).isoformat())
    assert "old.event" not in {item["type"] for item in recent["items"]}
    older = await _page(client, admin, since=(utcnow() - timedelta(days=4)).isoformat())
    assert sum(item["type"] == "old.event" for item in older["items"]) == 3
    assert (await _page(client, admin, type="no.such.type"))["items"] == []


async def test_cursor_paging_stays_correct_while_events_are_written(client, context):
    admin = await admin_token(context, client)
    await _write(context, 25)
    # + the login, and the first signing key the app made at start-up.
    first_key = f"first signing key {context.keyring.current_kid}; signs at once"
    expected = [f"test.event {n}" for n in reversed(range(25))] + [None, first_key]

    seen = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 10} if cursor is None else {"limit": 10, "cursor": cursor}
        body = await _page(client, admin, **params)
        seen += [item["reason"] for item in body["items"]]
        pages += 1
        # Newer events arrive between pages: they do not shift what the next page shows.
        await _write(context, 4, type="newer.event")
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == expected

    # A fresh listing starts with the newest events.
    top = await _page(client, admin, limit=3)
    assert [item["type"] for item in top["items"]] == ["newer.event"] * 3


async def test_limit_is_clamped_and_cursor_checked(client, context):
    admin = await admin_token(context, client)
    await _write(context, 505)
    body = await _page(client, admin, limit=1000)
    assert len(body["items"]) == 500
    assert body["next_cursor"] is not None
    rest = await _page(client, admin, limit=1000, cursor=body["next_cursor"])
    assert len(rest["items"]) == 7 and rest["next_cursor"] is None  # + login, first key
    default = await _page(client, admin)
    assert len(default["items"]) == 100

    for params in (
        {"cursor": "garbled!!"},
        {"cursor": base64.urlsafe_b64encode(b"seq:abc").decode()},
        {"cursor": base64.urlsafe_b64encode(b"offset:10").decode()},
        {"cursor": base64.urlsafe_b64encode(b"seq:9223372036854775808").decode()},  # 2**63
        {"cursor": base64.urlsafe_b64encode(b"seq:" + b"9" * 40).decode()},
        {"cursor": "\u00e9t\u00e9"},
        {"limit": 0},
        {"limit": "many"},
        {"since": "yesterday"},
    ):
        response = await admin_request(
            client, admin, "GET", "/admin/audit-events", 422, params=params
        )
        assert response.json()["error"] == "validation_error", params


async def test_since_takes_rfc3339_with_an_offset_only(client, context):
    admin = await admin_token(context, client)
    day_ago = utcnow() - timedelta(days=1)
    for since, fragment in (
        (day_ago.date().isoformat(), "RFC 3339"),
        (str(int(day_ago.timestamp())), "RFC 3339"),
        (day_ago.replace(tzinfo=None).isoformat(), "needs a time-zone offset"),
        (day_ago.isoformat().replace("+", " "), "write + as %2B"),
        # Valid RFC 3339, but before year 1 (after 9999) in UTC: it overflowed, a 500.
        ("0001-01-01T00:00:00+14:00", "out of range"),
        ("9999-12-31T23:59:59-14:00", "out of range"),
        # pydantic said "unexpected extra characters at the end of the input" to these.
        ("2027-06-30T23:59:60Z", "has second 60 (a leap second, not accepted): seconds must"),
        ("2027-06-30T23:00:00+24:00", "has an offset out of range: it must be within ±23:59"),
    ):
        response = await admin_request(
            client, admin, "GET", "/admin/audit-events", 422, params={"since": since}
        )
        body = response.json()
        assert body["error"] == "validation_error"
        assert body["error_description"].startswith("query.since: "), body
        assert fragment in body["error_description"], body
    for since in (day_ago.isoformat(), day_ago.strftime("%Y-%m-%dT%H:%M:%SZ")):
        assert (await _page(client, admin, since=since))["items"]


async def test_no_secret_in_any_event(client, context):
    admin = await admin_token(context, client)
    password = "the user's own passphrase"
    created = await admin_request(
        client,
        admin,
        "POST",
        "/admin/users",
        201,
        json={"username": "nina", "password": password, "permissions": ["api_keys:manage"]},
    )
    new_password = "another secret passphrase"
    await admin_request(
        client,
        admin,
        "PATCH",
        f"/admin/users/{created.json()['id']}",
        200,
        json={"password": new_password},
    )
    session = await login(client, "nina", new_password)
    key = await create_key(client, session["access_token"], name="ci")
    issued = (await exchange(client, key["api_key"])).json()
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    )
    assert refreshed.status_code == 200
    rotated = await client.post(
        f"/api-keys/{key['id']}/rotate",
        json={"grace_seconds": 0},
        headers=bearer(session["access_token"]),
    )
    assert rotated.status_code == 201
    secrets = [
        password,
        new_password,
        key["api_key"],
        key["client_secret"],
        rotated.json()["client_secret"],
        issued["access_token"],
        issued["refresh_token"],
        refreshed.json()["refresh_token"],
        session["refresh_token"],
    ]
    everything = str(await _page(client, admin, limit=500))
    assert "user.updated" in everything and "api_key.rotated" in everything
    for secret in secrets:
        assert secret not in everything


def _fields(event):
    return {name: getattr(event, name) for name in ("actor", "principal_id", "key_id", "ip")}


async def test_refused_admin_writes_are_audited(client, context):
    admin = await admin_token(context, client)
    root = (await admin_request(client, admin, "GET", "/me", 200)).json()
    mallory = await user_token(context, client, "mallory")
    device = await create_device(client, admin, "sensor")
    key = await create_device_key(client, admin, device["id"])
    before = len(await audit_events(context))

    # Not an admin: 403, in the name of who tried.
    await admin_request(
        client, mallory, "POST", "/admin/users", 403,
        json={"username": "eve", "password": "a long password", "permissions": ["admin"]},
    )  # fmt: skip
    # An admin refused: 409, 404, 422 (the service's and the body's checks).
    await admin_request(
        client, admin, "PATCH", f"/admin/users/{root['id']}", 409, json={"disabled": True}
    )
    unknown = "00000000-0000-7000-8000-000000000000"
    await admin_request(client, admin, "DELETE", f"/admin/devices/{unknown}", 404)
    await admin_request(
        client, admin, "POST", "/admin/devices", 422, json={"name": "a b", "permissions": []}
    )
    await admin_request(
        client, admin, "POST", f"/admin/devices/{device['id']}/api-keys/{key['id']}/rotate",
        422, json={"grace_seconds": -1},
    )  # fmt: skip
    # A key string pasted where an id goes is not copied into the event.
    await admin_request(client, admin, "DELETE", f"/admin/api-keys/{key['api_key']}", 404)
    # Nobody authenticated: nothing to attribute, nothing recorded.
    anonymous = await client.post("/admin/scopes", json={"name": "x", "description": ""})
    assert anonymous.status_code == 401

    refused = (await audit_events(context))[before:]
    assert [(e.type, e.outcome) for e in refused] == [
        ("user.created", "failure"),
        ("user.updated", "failure"),
        ("device.deleted", "failure"),
        ("device.created", "failure"),
        ("api_key.rotated", "failure"),
        ("api_key.deleted", "failure"),
    ]
    forbidden, last_admin, gone, bad_name, bad_grace, pasted = refused
    assert _fields(forbidden) == {
        "actor": "user:mallory", "principal_id": None, "key_id": None, "ip": "127.0.0.1"
    }  # fmt: skip
    assert forbidden.reason.startswith("refused (403): This needs the permission 'admin'")
    assert _fields(last_admin) == {
        "actor": "user:root", "principal_id": root["id"], "key_id": None, "ip": "127.0.0.1"
    }  # fmt: skip
    assert last_admin.reason.startswith("refused (409): ")
    assert (gone.principal_id, gone.reason) == (unknown, "refused (404): No device with this id.")
    assert bad_name.reason.startswith("refused (422): name: may hold only letters")
    assert (bad_grace.principal_id, bad_grace.key_id) == (device["id"], key["id"])
    assert bad_grace.reason.startswith("refused (422): grace_seconds: ")
    assert (pasted.actor, pasted.key_id) == ("user:root", None)
    everything = str((await _page(client, admin, limit=500))["items"])
    assert key["api_key"] not in everything and key["client_secret"] not in everything
    # Readable through the API and its filters.
    by_type = await _page(client, admin, type="user.updated")
    assert by_type["items"][0]["outcome"] == "failure"
    assert by_type["items"][0]["reason"] == last_admin.reason
    assert [e["id"] for e in (await _page(client, admin, key_id=key["id"]))["items"]][0] == (
        bad_grace.id
    )


async def test_refused_self_service_writes_are_audited(client, context):
    owner = await user_token(context, client, "olga")
    other = await user_token(context, client, "oscar")
    olgas = await create_key(client, owner, name="ci")
    oscar_id = (await client.get("/me", headers=bearer(other))).json()["id"]
    before = len(await audit_events(context))

    # Another user's key id: 404, as for an unknown id; the probe is on record.
    probe = await client.delete(f"/api-keys/{olgas['id']}", headers=bearer(other))
    assert probe.status_code == 404
    edit = await client.patch(
        f"/api-keys/{olgas['id']}", json={"scopes": ["admin"]}, headers=bearer(owner)
    )
    assert edit.status_code == 422
    # Reads are not recorded.
    assert (await client.get(f"/api-keys/{olgas['id']}", headers=bearer(other))).status_code == 404

    refused = (await audit_events(context))[before:]
    assert [(e.type, e.outcome, e.actor, e.principal_id, e.key_id) for e in refused] == [
        ("api_key.deleted", "failure", "user:oscar", oscar_id, olgas["id"]),
        ("api_key.updated", "failure", "user:olga", olgas["owner_id"], olgas["id"]),
    ]
    assert refused[0].reason == "refused (404): No API key with this id."
    assert refused[1].reason.startswith("refused (422): ")


async def test_a_secret_pasted_into_a_name_is_not_recorded(client, context):
    """Names are quoted in events (`user:<name>`, `device <name>`, `scope <name>`); a key
    string, refresh token or client secret pasted as one must not be.

    The API refuses such names now (test_secret_shaped_names.py), so they are put in the
    database directly, as names given before that, or imported, still are.
    """
    admin = await admin_token(context, client)
    owner = await user_token(context, client, "paula")
    key = await create_key(client, owner, name="ci")
    session = await login(client, "paula")
    names = [key["api_key"], session["refresh_token"], key["client_secret"]]
    for name in names:
        device = await create_principal(context, name, kind="device", permissions=[])
        await admin_request(client, admin, "DELETE", f"/admin/devices/{device.id}", 204)
        await add_scope(context, name, "pasted")
        await admin_request(client, admin, "DELETE", f"/admin/scopes/{name}", 204)
    await create_principal(context, key["api_key"], password="a long password", permissions=[])
    pasted = await login(client, key["api_key"], "a long password")
    assert (await exchange(client, key["api_key"])).status_code == 200

    everything = str((await _page(client, admin, limit=500))["items"])
    for secret in [*names, pasted["refresh_token"]]:
        assert secret not in everything
        assert secret[:24] not in everything and secret[-24:] not in everything
    deleted = await audit_events(context, "device.deleted")
    assert [e.reason for e in deleted] == ["device (secret not recorded); 0 key(s) revoked"] * 3
    assert {e.reason for e in await audit_events(context, "scope.deleted")} == {
        "scope (secret not recorded)"
    }
    [signed_in] = [e for e in await audit_events(context, "login") if e.principal_id and
                   e.actor and "secret" in e.actor]  # fmt: skip
    assert signed_in.actor == "user:(secret not recorded)"
    # Client ids and ordinary names as they are.
    assert f"'actor': 'key:{key['client_id']}'" in everything
    assert "'actor': 'user:paula'" in everything and "'actor': 'user:root'" in everything


async def test_a_refusal_whose_event_cannot_be_written_is_answered_all_the_same(
    client, context, caplog
):
    # The audit table unwritable (here: not there): the refusal is the answer it was, and
    # the lost event is a warning in the log, not a 500.
    admin = await admin_token(context, client)
    async with context.database.sessionmaker() as session:
        await session.execute(text("ALTER TABLE audit_event RENAME TO audit_event_away"))
        await session.commit()
    try:
        with caplog.at_level(logging.WARNING, logger="keyservice.audit.refusals"):
            refused = await admin_request(
                client, admin, "POST", "/admin/devices", 422, json={"name": "a b"}
            )
    finally:
        async with context.database.sessionmaker() as session:
            await session.execute(text("ALTER TABLE audit_event_away RENAME TO audit_event"))
            await session.commit()
    assert refused.json()["error"] == "validation_error", refused.text
    said = [r.getMessage() for r in caplog.records if r.name == "keyservice.audit.refusals"]
    assert len(said) == 1 and said[0].startswith("could not record a refused device.created: ")
    assert "\n" not in said[0] and "INSERT" not in said[0], said  # one line, no statement
