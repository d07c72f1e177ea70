"""Editing one's own key (PATCH /api-keys/{id}): what changes, when it applies, refusals."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import pytest

from keyservice.api_keys import service as api_keys
from keyservice.database import utcnow
from keyservice.exceptions import NotFound
from keyservice.principals.models import Principal
from tests.conftest import client_for
from tests.factories import (
    add_scope,
    audit_events,
    bearer,
    create_key,
    exchange,
    login,
    set_key,
    user_token,
)

PERMS = ["api_keys:manage", "projects:read", "projects:write"]
BOTH = ["projects:read", "projects:write"]


async def patch(client, token: str, key_id: str, expect: int = 200, **body):
    response = await client.patch(f"/api-keys/{key_id}", json=body, headers=bearer(token))
    assert response.status_code == expect, response.text
    return response


async def shown(client, token: str, key_id: str) -> dict:
    response = await client.get(f"/api-keys/{key_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def owner(client, context) -> str:
    for scope in BOTH:
        await add_scope(context, scope)
    return await user_token(context, client, "alice", PERMS)


async def test_name_and_description_change_and_the_secret_stays(client, context, owner):
    key = await create_key(client, owner, name="ci", description="old", scopes=BOTH)
    edited = (await patch(client, owner, key["id"], name="  deploy ", description="CD")).json()
    assert edited == await shown(client, owner, key["id"])
    assert (edited["name"], edited["description"]) == ("deploy", "CD")
    assert "client_secret" not in edited and "api_key" not in edited
    assert key["client_secret"] not in str(edited)
    # Everything else is as it was, and the key string given out still works.
    kept = set(edited) - {"name", "description"}
    assert {k: edited[k] for k in kept} == {k: key[k] for k in kept}
    assert (await exchange(client, key["api_key"])).status_code == 200


async def test_scopes_change_at_the_next_exchange(client, context, owner):
    key = await create_key(client, owner, name="ci", scopes=BOTH)
    assert (await exchange(client, key["api_key"])).json()[
        "scope"
    ] == "projects:read projects:write"

    narrowed = (await patch(client, owner, key["id"], scopes=["projects:read"])).json()
    assert narrowed["scopes"] == ["projects:read"] and narrowed["inherits_permissions"] is False
    assert (await exchange(client, key["api_key"])).json()["scope"] == "projects:read"
    refused = await exchange(client, key["api_key"], scope="projects:write")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"

    inheriting = (await patch(client, owner, key["id"], scopes=None)).json()
    assert inheriting["scopes"] is None and inheriting["inherits_permissions"] is True
    assert (await exchange(client, key["api_key"])).json()["scope"] == " ".join(sorted(PERMS))


async def test_an_edit_keeps_a_secret_no_longer_than_the_longest_key_lifetime(
    client, context, owner
):
    # At most 365 days ahead at each edit would keep one secret for good, edit after edit;
    # the limit is the secret's: 365 days from the key's creation, then a rotation.
    key = await create_key(client, owner, name="old")
    created = utcnow().replace(microsecond=0) - timedelta(days=300)
    await set_key(context, key["id"], created_at=created)
    latest = created + timedelta(days=365)
    refused = await patch(
        client, owner, key["id"], 422, expires_at=_rfc3339(latest + timedelta(days=1))
    )
    description = refused.json()["error_description"]
    assert "at most 365 days after the key was created" in description
    assert _rfc3339(latest) in description and "Rotate the key" in description
    assert (await shown(client, owner, key["id"]))["expires_at"] == key["expires_at"]
    edited = (await patch(client, owner, key["id"], expires_at=_rfc3339(latest))).json()
    assert _at(edited["expires_at"]) == latest
    # A new key (a rotation's too) starts its own 365 days.
    rotated = await client.post(
        f"/api-keys/{key['id']}/rotate", json={"grace_seconds": 0}, headers=bearer(owner)
    )
    assert rotated.status_code == 201, rotated.text
    far = utcnow().replace(microsecond=0) + timedelta(days=360)
    moved = await patch(client, owner, rotated.json()["id"], expires_at=_rfc3339(far))
    assert _at(moved.json()["expires_at"]) == far


async def test_expiry_moves_earlier_and_later_at_exchange_and_refresh(client, context, owner):
    key = await create_key(client, owner, name="ci")
    first = await exchange(client, key["api_key"])
    assert "sunset" not in first.headers

    soon = utcnow().replace(microsecond=0) + timedelta(days=3)
    edited = (await patch(client, owner, key["id"], expires_at=_rfc3339(soon))).json()
    assert _at(edited["expires_at"]) == soon and edited["expires_soon"] is True
    # The next exchange, and a refresh of a token issued before the edit, read the new expiry.
    assert parsedate_to_datetime((await exchange(client, key["api_key"])).headers["sunset"]) == soon
    refreshed = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"]},
    )
    assert refreshed.status_code == 200, refreshed.text
    assert parsedate_to_datetime(refreshed.headers["sunset"]) == soon
    me = (await client.get("/me", headers=bearer(owner))).json()
    assert [w["key_id"] for w in me["warnings"]] == [key["id"]]

    later = soon + timedelta(days=200)
    edited = (await patch(client, owner, key["id"], expires_at=_rfc3339(later))).json()
    assert _at(edited["expires_at"]) == later and edited["expires_soon"] is False
    assert "sunset" not in (await exchange(client, key["api_key"])).headers
    assert (await client.get("/me", headers=bearer(owner))).json()["warnings"] == []


async def test_allowed_ips_apply_at_the_next_exchange_and_refresh(app, client, context, owner):
    key = await create_key(client, owner, name="server")
    async with (
        client_for(app, ip="198.51.100.9") as moved,
        client_for(app, ip="203.0.113.1") as old_address,
    ):
        before = (await exchange(old_address, key["api_key"])).json()
        edited = (await patch(client, owner, key["id"], allowed_ips=["198.51.100.0/24"])).json()
        assert edited["allowed_ips"] == ["198.51.100.0/24"]

        assert (await exchange(old_address, key["api_key"])).status_code == 401
        assert (await exchange(moved, key["api_key"])).status_code == 200
        refused = await old_address.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": before["refresh_token"]}
        )
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        reasons = [e.reason for e in await audit_events(context) if e.outcome == "failure"]
        assert reasons == ["ip not allowed", "ip not allowed"]

        # [] is any address again, as at creation; the refused refresh token still works.
        assert (await patch(client, owner, key["id"], allowed_ips=[])).json()["allowed_ips"] == []
        assert (await exchange(old_address, key["api_key"])).status_code == 200
        again = await old_address.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": before["refresh_token"]}
        )
        assert again.status_code == 200, again.text


async def test_tokens_carrying_a_removed_scope_are_refused(client, context, owner):
    root = await user_token(context, client, "root", ["admin"])
    key = await create_key(client, owner, name="ci", scopes=BOTH)
    both = (await exchange(client, key["api_key"])).json()
    narrow = (await exchange(client, key["api_key"], scope="projects:read")).json()

    await patch(client, owner, key["id"], scopes=["projects:read"])
    refused = await client.get("/me", headers=bearer(both["access_token"]))
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert "no longer has a scope" in refused.json()["error_description"]
    assert (await client.get("/me", headers=bearer(narrow["access_token"]))).status_code == 200

    async def introspect(token: str) -> dict:
        answer = await client.post("/introspect", data={"token": token}, headers=bearer(root))
        return answer.json()

    assert await introspect(both["access_token"]) == {"active": False}
    assert (await introspect(narrow["access_token"]))["active"] is True
    # The refresh token is still good, for what the key has now: introspection says so.
    described = await introspect(both["refresh_token"])
    assert described["active"] is True and described["scope"] == "projects:read"

    # A refresh carries what the key has now, never more.
    refreshed = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": both["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["scope"] == "projects:read"
    wider = await client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refreshed.json()["refresh_token"],
            "scope": "projects:write",
        },
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"

    # Widened again, new tokens carry it and are honoured; inheriting restricts nothing.
    await patch(client, owner, key["id"], scopes=BOTH)
    fresh = (await exchange(client, key["api_key"])).json()
    assert fresh["scope"] == "projects:read projects:write"
    assert (await client.get("/me", headers=bearer(fresh["access_token"]))).status_code == 200
    await patch(client, owner, key["id"], scopes=["projects:write"])
    assert (await client.get("/me", headers=bearer(fresh["access_token"]))).status_code == 401
    await patch(client, owner, key["id"], scopes=None)
    assert (await client.get("/me", headers=bearer(fresh["access_token"]))).status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "Nothing to change"),
        ({"owner_id": "someone-else"}, "owner_id"),
        ({"name": "x", "secret": "x"}, "secret"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "blank"),
        ({"name": None}, "cannot be null"),
        ({"description": "x" * 1001}, "description"),
        ({"scopes": []}, "at least one scope"),
        ({"scopes": ["no:such-scope"]}, "no:such-scope"),
        ({"scopes": ["billing:write"]}, "billing:write"),
        ({"scopes": ["admin"]}, "admin"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "future"),
        ({"expires_at": "2099-01-01T00:00:00Z"}, "365 days"),
        ({"expires_at": "2027-06-01T00:00:00"}, "offset"),
        ({"expires_at": None}, "cannot be null"),
        ({"allowed_ips": ["not-an-ip"]}, "not-an-ip"),
        ({"allowed_ips": ["10.0.0.1/8"]}, "10.0.0.0/8"),
        ({"allowed_ips": None}, "cannot be null"),
        # One bad field refuses the whole edit: the valid name is not kept either.
        ({"name": "renamed", "scopes": ["billing:write"]}, "billing:write"),
    ],
)
async def test_bad_input_is_422_and_changes_nothing(client, context, owner, body, fragment):
    await add_scope(context, "billing:write")
    key = await create_key(client, owner, name="ci", scopes=BOTH, allowed_ips=["192.0.2.0/24"])
    before = await shown(client, owner, key["id"])
    response = await patch(client, owner, key["id"], 422, **body)
    assert fragment in response.text
    assert key["client_secret"] not in response.text
    assert await shown(client, owner, key["id"]) == before
    assert await audit_events(context, "api_key.updated", outcome="success") == []


async def test_a_body_that_is_not_an_object_is_refused(client, context, owner):
    key = await create_key(client, owner, name="ci")
    for body in ("[]", "null", '"name"'):
        response = await client.patch(
            f"/api-keys/{key['id']}",
            content=body,
            headers={**bearer(owner), "Content-Type": "application/json"},
        )
        assert response.status_code == 422, (body, response.text)


async def test_an_expired_key_cannot_be_edited_back_into_use(client, context, owner):
    key = await create_key(client, owner, name="old")
    await set_key(context, key["id"], expires_at=utcnow() - timedelta(minutes=1))
    later = _rfc3339(utcnow() + timedelta(days=30))
    for body in ({"expires_at": later}, {"name": "renamed"}):
        response = await patch(client, owner, key["id"], 409, **body)
        assert "expired" in response.json()["error_description"]
        assert "Create a new key" in response.json()["error_description"]
    assert (await shown(client, owner, key["id"]))["name"] == "old"
    assert (await shown(client, owner, key["id"]))["status"] == "expired"
    assert await audit_events(context, "api_key.updated", outcome="success") == []


async def test_a_key_in_its_rotation_grace_keeps_its_expiry(client, context, owner):
    old = await create_key(client, owner, name="ci")
    rotated = await client.post(
        f"/api-keys/{old['id']}/rotate", json={"grace_seconds": 3600}, headers=bearer(owner)
    )
    new = rotated.json()
    grace_end = (await shown(client, owner, old["id"]))["expires_at"]
    later = _rfc3339(utcnow() + timedelta(days=30))
    sooner = _rfc3339(utcnow() + timedelta(minutes=10))
    until = _rfc3339(datetime.fromisoformat(grace_end))  # in UTC, to the second
    for moved in (later, sooner):
        refused = await patch(client, owner, old["id"], 409, expires_at=moved)
        description = refused.json()["error_description"]
        assert "being replaced" in description and new["client_id"] in description
        assert f"stays valid only until {until}, the end of its grace period" in description
    assert (await shown(client, owner, old["id"]))["expires_at"] == grace_end
    # Its other settings may change, and its expiry sent back unchanged is no change.
    renamed = await patch(client, owner, old["id"], name="ci (old)", expires_at=grace_end)
    assert renamed.json()["name"] == "ci (old)" and renamed.json()["expires_at"] == grace_end
    # The replacement is an ordinary key.
    assert (await patch(client, owner, new["id"], expires_at=later)).json()["expires_at"] == later


async def test_other_principals_and_revoked_keys_are_404(client, context, owner):
    bob = await user_token(context, client, "bob", PERMS)
    key = await create_key(client, owner, name="mine")
    for caller, key_id in ((bob, key["id"]), (owner, "no-such-key")):
        response = await patch(client, caller, key_id, 404, name="taken")
        assert response.json()["error_description"] == "No API key with this id."
    assert (await shown(client, owner, key["id"]))["name"] == "mine"

    assert (await client.delete(f"/api-keys/{key['id']}", headers=bearer(owner))).status_code == 204
    assert (await client.get(f"/api-keys/{key['id']}", headers=bearer(owner))).status_code == 404
    await patch(client, owner, key["id"], 404, name="back")
    assert await audit_events(context, "api_key.updated", outcome="success") == []


async def test_callers_without_api_keys_manage_are_403(client, context, owner):
    key = await create_key(client, owner, name="ci")
    await user_token(context, client, "viewer", ["projects:read"])
    viewer = (await login(client, "viewer"))["access_token"]
    await patch(client, viewer, key["id"], 403, name="x")
    # A token of the owner's narrowed to a scope other than api_keys:manage is 403 too.
    narrowed = (await login(client, "alice", scope="projects:read"))["access_token"]
    await patch(client, narrowed, key["id"], 403, name="x")


async def test_an_edit_is_one_audit_event_naming_the_fields_changed(client, context, owner):
    key = await create_key(client, owner, name="ci", description="same", scopes=BOTH)
    # What the key may reach is on record from its creation, edit after edit: an auditor
    # reads what a leaked key could do, and when that changed, without asking the key.
    [created] = await audit_events(context, "api_key.created", outcome="success")
    made_until = _rfc3339(datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00")))
    assert created.reason == (
        f"scopes: projects:read projects:write; allowed_ips: any; expires_at: {made_until}"
    )
    await patch(
        client,
        owner,
        key["id"],
        allowed_ips=["192.0.2.1"],
        scopes=["projects:read"],
        description="same",  # sent, but not a change
        name="deploy",
    )
    [event] = await audit_events(context, "api_key.updated", outcome="success")
    assert (event.actor, event.principal_id, event.key_id, event.ip, event.outcome) == (
        "user:alice",
        key["owner_id"],
        key["id"],
        "127.0.0.1",
        "success",
    )
    assert event.reason == "changed: name, scopes (projects:read), allowed_ips (192.0.2.1/32)"
    assert key["client_secret"] not in str(vars(event))

    # Values sent as they are stored change nothing and record nothing.
    same = await patch(client, owner, key["id"], name="deploy", scopes=["projects:read"])
    assert same.json() == await shown(client, owner, key["id"])
    assert len(await audit_events(context, "api_key.updated", outcome="success")) == 1

    # Done with a token from an API key, the event names that key, as create does.
    automation = await create_key(client, owner, name="automation")
    key_token = (await exchange(client, automation["api_key"])).json()["access_token"]
    until = _rfc3339(utcnow() + timedelta(days=9))
    await patch(client, key_token, key["id"], expires_at=until)
    events = await audit_events(context, "api_key.updated", outcome="success")
    assert (events[-1].actor, events[-1].reason) == (
        f"key:{automation['client_id']}",
        f"changed: expires_at ({until})",
    )
    # Back to inheriting the owner's permissions, from any address.
    await patch(client, owner, key["id"], scopes=None, allowed_ips=[])
    events = await audit_events(context, "api_key.updated", outcome="success")
    assert events[-1].reason == "changed: scopes (inherited), allowed_ips (any)"


async def test_concurrent_edits_each_apply(client, context, owner):
    key = await create_key(client, owner, name="ci", scopes=BOTH)
    bodies = [
        {"name": "renamed"},
        {"description": "described"},
        {"allowed_ips": ["192.0.2.0/24"]},
        {"scopes": ["projects:read"]},
    ]
    answers = await asyncio.gather(
        *(client.patch(f"/api-keys/{key['id']}", json=b, headers=bearer(owner)) for b in bodies)
    )
    assert [answer.status_code for answer in answers] == [200] * len(bodies)
    final = await shown(client, owner, key["id"])
    assert (final["name"], final["description"], final["allowed_ips"], final["scopes"]) == (
        "renamed",
        "described",
        ["192.0.2.0/24"],
        ["projects:read"],
    )
    assert len(await audit_events(context, "api_key.updated", outcome="success")) == len(bodies)


async def test_an_edit_racing_a_rotation_does_not_outlive_the_grace(client, context, owner):
    # Whichever commits first, the replaced key ends with its grace period: an edit applied
    # after the rotation is refused (409), one applied before is cut short by the rotation.
    for round_ in range(3):
        key = await create_key(client, owner, name=f"ci{round_}")
        far = _rfc3339(utcnow() + timedelta(days=300))
        rotation, edit = await asyncio.gather(
            client.post(
                f"/api-keys/{key['id']}/rotate", json={"grace_seconds": 60}, headers=bearer(owner)
            ),
            client.patch(f"/api-keys/{key['id']}", json={"expires_at": far}, headers=bearer(owner)),
        )
        assert rotation.status_code == 201, rotation.text
        assert edit.status_code in (200, 409), edit.text
        expires = _at((await shown(client, owner, key["id"]))["expires_at"])
        assert expires <= utcnow() + timedelta(seconds=60)
        await client.delete(f"/api-keys/{rotation.json()['id']}", headers=bearer(owner))


@pytest.mark.postgresql_only
async def test_a_rotation_that_read_the_key_before_an_edit_rotates_the_edited_key(
    client, context, owner
):
    # The rotate route reads the key before the rotation writes it; an edit or a deletion
    # can commit in between (PostgreSQL: no lock is held yet; SQLite serialises the two).
    key = await create_key(client, owner, name="ci", scopes=BOTH)
    soon = utcnow().replace(microsecond=0) + timedelta(hours=1)
    async with context.database.sessionmaker() as rotating:
        alice = await rotating.get(Principal, key["owner_id"])
        assert alice is not None
        read = await api_keys.get_owned(rotating, key_id=key["id"], owner_id=alice.id)
        await patch(client, owner, key["id"], expires_at=_rfc3339(soon), scopes=["projects:read"])
        new = await api_keys.rotate(
            context, rotating, key=read, owner=alice, grace_seconds=86400, actor="t", ip=None
        )
    # The edit's earlier expiry stands (the grace period never extends a key) and the
    # replacement has the edited scopes.
    assert _at((await shown(client, owner, key["id"]))["expires_at"]) == soon
    assert new.scopes == ["projects:read"]


@pytest.mark.postgresql_only
async def test_a_rotation_that_read_the_key_before_its_deletion_is_404(client, context, owner):
    gone = await create_key(client, owner, name="leaked")
    async with context.database.sessionmaker() as rotating:
        alice = await rotating.get(Principal, gone["owner_id"])
        assert alice is not None
        read = await api_keys.get_owned(rotating, key_id=gone["id"], owner_id=alice.id)
        deleted = await client.delete(f"/api-keys/{gone['id']}", headers=bearer(owner))
        assert deleted.status_code == 204
        with pytest.raises(NotFound):
            await api_keys.rotate(
                context, rotating, key=read, owner=alice, grace_seconds=60, actor="t", ip=None
            )
    listed = (await client.get("/api-keys", headers=bearer(owner))).json()["items"]
    assert listed == []


async def test_many_long_scopes_are_saved_past_the_notify_payload_limit(client, context):
    # The key-scopes message for ~90 scope names of ~96 characters is longer than the 8000
    # bytes PostgreSQL takes for a NOTIFY payload: the edit failed with a 500. It is saved,
    # this process refuses the key's wider tokens at once, other replicas at their reload.
    long = [f"scope{i:02d}:" + "x" * 88 for i in range(90)]
    for scope in [*BOTH, *long]:
        await add_scope(context, scope)
    token = await user_token(context, client, "alice", [*PERMS, *long])
    key = await create_key(client, token, name="ci", scopes=BOTH)
    issued = (await exchange(client, key["api_key"])).json()["access_token"]

    edited = (await patch(client, token, key["id"], scopes=long)).json()
    assert edited["scopes"] == sorted(long)
    me = await client.get("/me", headers=bearer(issued))
    assert me.status_code == 401, me.text


async def test_a_scope_the_owner_lost_may_stay_while_others_change(client, context, owner):
    # The whole new list was checked against the owner's permissions, so once alice lost
    # projects:write, dropping projects:read from a key that had both was refused ("not
    # held: projects:write"); a scope the key keeps grants nothing the owner lacks anyway.
    root = await user_token(context, client, "root", ["admin"])
    key = await create_key(client, owner, name="ci", scopes=BOTH)
    alice = (await client.get("/me", headers=bearer(owner))).json()["id"]
    taken = await client.patch(
        f"/admin/users/{alice}",
        json={"permissions": ["api_keys:manage", "projects:read"]},
        headers=bearer(root),
    )
    assert taken.status_code == 200, taken.text
    owner = (await login(client, "alice"))["access_token"]

    kept = (await patch(client, owner, key["id"], scopes=["projects:write"])).json()
    assert kept["scopes"] == ["projects:write"]
    # Adding one the owner does not hold is still refused.
    refused = await patch(client, owner, key["id"], 422, scopes=["projects:write", "admin"])
    assert "not held: admin." in refused.text, refused.text
    # And the kept scope gives nothing while the owner lacks it.
    assert (await exchange(client, key["api_key"], scope="projects:write")).status_code == 400


async def test_an_expiry_sent_with_an_offset_is_answered_in_utc_as_the_key_is_read(client, owner):
    # The create and edit answers gave expires_at back with the offset it was sent with,
    # while GET (the stored moment) gives it in UTC: one key, two spellings of its expiry.
    moment = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    east = moment.astimezone(timezone(timedelta(hours=5))).isoformat()
    key = await create_key(client, owner, name="ci", expires_at=east)
    assert key["expires_at"] == _rfc3339(moment)
    assert (await shown(client, owner, key["id"]))["expires_at"] == _rfc3339(moment)
    later = moment + timedelta(days=1)
    west = later.astimezone(timezone(timedelta(hours=-7, minutes=-30))).isoformat()
    edited = (await patch(client, owner, key["id"], expires_at=west)).json()
    assert edited["expires_at"] == _rfc3339(later)
    assert (await shown(client, owner, key["id"]))["expires_at"] == _rfc3339(later)


LOOKS_LIKE_A_SECRET = (
    "looks like a secret (an API key, client secret, refresh token or access token): "
    "names and descriptions are shown to others, so keep secrets out of them"
)


async def test_a_secret_pasted_as_a_name_or_description_is_refused(client, context, owner):
    """Lists and the console show names and descriptions to everyone who reads them (only
    audit events hid a credential in one): a key string, client secret, refresh token or
    JWT there is a 422 in words, at creation and at an edit, and nothing is stored."""
    key = await create_key(client, owner, name="ci", description="old")
    session = await login(client, "alice")
    shorter = [
        key["api_key"],
        key["client_secret"],
        session["refresh_token"],
        f"prod {key['api_key'][:28]}",  # cut short, after a word
    ]
    pasted = [
        *[("name", value) for value in shorter],
        *[("description", value) for value in shorter],
        ("description", session["access_token"]),  # longer than a name may be
        ("description", f"use Authorization: Bearer {owner}"),
    ]
    for field, value in pasted:
        for response in (
            await client.post("/api-keys", json={"name": "k", field: value}, headers=bearer(owner)),
            await patch(client, owner, key["id"], 422, **{field: value}),
        ):
            assert response.status_code == 422, (field, response.text)
            answer = response.json()
            assert answer["error_description"] == f"{field}: {LOOKS_LIKE_A_SECRET}"
            assert [(d["loc"], d["type"]) for d in answer["details"]] == [
                (["body", field], "looks_like_secret")
            ]
            assert value[8:40] not in response.text
    listed = (await client.get("/api-keys", headers=bearer(owner))).json()["items"]
    assert [(item["name"], item["description"]) for item in listed] == [("ci", "old")]
    assert await audit_events(context, "api_key.updated", outcome="success") == []
    # Public values and words that only look alike are names like any other.
    fine = {
        "name": f"ci for {key['client_id']}",
        "description": f"key {key['id']} of the surveyJobs runner",
    }
    created = await client.post("/api-keys", json=fine, headers=bearer(owner))
    assert created.status_code == 201, created.text
    edited = await patch(client, owner, key["id"], **fine)
    assert (edited.json()["name"], edited.json()["description"]) == tuple(fine.values())
