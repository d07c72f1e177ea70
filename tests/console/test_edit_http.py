"""Editing a key's settings in the console (own keys and device keys), over plain HTTP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest

from keyservice.api_keys.models import ApiKey
from keyservice.console.forms import expiry_limits
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from tests.conftest import client_for
from tests.console.conftest import textarea_value
from tests.console.test_admin_http import _rotate
from tests.console.test_http import field_error, signed_in
from tests.factories import (
    add_scope,
    audit_events,
    create_principal,
    exchange,
    service_key,
    set_key,
    set_principal,
)

READ, WRITE = "projects:read", "projects:write"


@pytest.fixture
async def alice(context: AppContext) -> Principal:
    await add_scope(context, READ, "Read projects")
    await add_scope(context, WRITE, "Change projects")
    return await create_principal(context, "alice", permissions=["api_keys:manage", READ, WRITE])


def odd_moment(days: int) -> datetime:
    """An expiry that is not 00:00 UTC (as the API may set it), to the second."""
    return (utcnow() + timedelta(days=days, hours=5, minutes=17)).replace(microsecond=0)


async def stored(context: AppContext, key_id: str) -> ApiKey:
    async with context.database.sessionmaker() as session:
        key = await session.get(ApiKey, key_id)
        assert key is not None
        return key


def shown_form(html: str) -> dict[str, Any]:
    """What the Edit form sends as shown (no field touched), as a browser would send it."""
    text = unescape(html)
    name = re.search(r'<input id="name" name="name"[^>]* value="([^"]*)"', text)
    description = re.search(r'<textarea id="description"[^>]*>([^<]*)</textarea>', text)
    ips = re.search(r'<textarea id="allowed_ips"[^>]*>([^<]*)</textarea>', text)
    day = re.search(r'<input id="expires_on" name="expires_on"[^>]* value="([^"]*)"', text)
    assert name and description and ips
    form: dict[str, Any] = {
        "name": name.group(1),
        "description": textarea_value(description.group(1)),
        "scopes": re.findall(r'name="scopes" value="([^"]+)" checked', text),
        "allowed_ips": textarea_value(ips.group(1)).replace("\n", "\r\n"),
    }
    if day:
        form["expires_on"] = day.group(1)
    return form


async def test_an_edit_saves_only_what_changed_and_the_next_exchange_sees_it(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    expires = odd_moment(20)
    key = await service_key(
        context,
        alice,
        "ci",
        description="line one\nline two",
        scopes=[READ],
        expires_at=expires,
        allowed_ips=["127.0.0.1"],
    )
    token = await signed_in(client, "alice")
    keys = await client.get("/console/keys")
    assert f'href="/console/keys/{key.id}/edit"' in keys.text

    page = await client.get(f"/console/keys/{key.id}/edit")
    assert page.status_code == 200 and "Edit API key" in page.text
    form = shown_form(page.text)
    assert form == {
        "name": "ci",
        "description": "line one\nline two",
        "scopes": [READ],
        "allowed_ips": "127.0.0.1/32",
        "expires_on": expires.date().isoformat(),
    }
    assert f"Now {expires.strftime('%Y-%m-%d %H:%M')} UTC." in page.text
    assert 'name="form_id"' not in page.text  # sending it twice changes nothing twice

    # The form as shown, with a browser's CRLF line breaks: nothing to save, nothing audited.
    form["description"] = form["description"].replace("\n", "\r\n")
    same = await client.post(f"/console/keys/{key.id}/edit", data={**form, "csrf_token": token})
    assert same.status_code == 303
    assert same.headers["location"] == f"/console/keys?done=unchanged&key={key.id}"
    assert await audit_events(context, "api_key.updated", outcome="success") == []

    sent = {**form, "name": "deploy", "scopes": [READ, WRITE], "csrf_token": token}
    saved = await client.post(f"/console/keys/{key.id}/edit", data=sent)
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/console/keys?done=updated&key={key.id}"
    listed = await client.get(saved.headers["location"])
    assert (
        '<p class="banner ok" role="status" id="notice" tabindex="-1">Key deploy was updated.</p>'
        in listed.text
    )
    row = await stored(context, key.id)
    assert (row.name, row.scopes) == ("deploy", [READ, WRITE])
    # Not touched: the expiry to the second (not rounded to the day shown), the rest as is.
    assert row.expires_at == expires
    assert (row.description, row.allowed_ips) == ("line one\nline two", ["127.0.0.1/32"])
    [event] = await audit_events(context, "api_key.updated", outcome="success")
    assert (event.actor, event.reason) == ("user:alice", f"changed: name, scopes ({READ} {WRITE})")
    assert (await exchange(client, key.api_key)).json()["scope"] == f"{READ} {WRITE}"

    # Another day: 00:00 UTC that day, as at creation; all unticked: the key inherits.
    day = expiry_limits(context.settings).minimum + timedelta(days=3)
    sent = {**form, "name": "deploy", "scopes": [], "expires_on": day.isoformat()}
    saved = await client.post(f"/console/keys/{key.id}/edit", data={**sent, "csrf_token": token})
    assert saved.status_code == 303
    row = await stored(context, key.id)
    assert row.scopes is None
    assert row.expires_at == datetime(day.year, day.month, day.day, tzinfo=UTC)
    events = await audit_events(context, "api_key.updated", outcome="success")
    until = f"{day.isoformat()}T00:00:00Z"
    assert events[-1].reason == f"changed: scopes (inherited), expires_at ({until})"
    scope = (await exchange(client, key.api_key)).json()["scope"].split()
    assert {READ, WRITE} <= set(scope)


async def test_a_description_that_starts_with_a_line_break_or_holds_a_cr_is_kept(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    # As the API may set it: a browser drops a line break right after <textarea>, and sends
    # a lone CR back as CRLF; renaming the key must not rewrite its description.
    text = "\nindented\rold Mac line break"
    key = await service_key(context, alice, "ci", description=text)
    token = await signed_in(client, "alice")
    page = await client.get(f"/console/keys/{key.id}/edit")
    form = shown_form(page.text)
    assert form["description"] == "\nindented\nold Mac line break"
    form["description"] = form["description"].replace("\n", "\r\n")
    url = f"/console/keys/{key.id}/edit"
    same = await client.post(url, data={**form, "csrf_token": token})
    assert same.headers["location"] == f"/console/keys?done=unchanged&key={key.id}"
    renamed = await client.post(url, data={**form, "name": "deploy", "csrf_token": token})
    assert renamed.status_code == 303
    row = await stored(context, key.id)
    assert (row.name, row.description) == ("deploy", text)
    [event] = await audit_events(context, "api_key.updated", outcome="success")
    assert event.reason == "changed: name"


async def test_a_key_being_replaced_can_be_renamed_and_its_expiry_is_shown_fixed(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    old = await service_key(context, alice, "ci", scopes=[READ])
    new_id = await _rotate(context, alice, old.id, grace=3600)
    grace_end = (await stored(context, old.id)).expires_at
    token = await signed_in(client, "alice")

    page = await client.get(f"/console/keys/{old.id}/edit")
    assert page.status_code == 200
    new = await stored(context, new_id)
    replaced_by = f'This key is being replaced by <span class="mono">{new.client_id}</span>'
    assert replaced_by in page.text
    assert 'name="expires_on"' not in page.text and " readonly " in page.text
    form = shown_form(page.text)
    assert "expires_on" not in form

    renamed = await client.post(
        f"/console/keys/{old.id}/edit", data={**form, "name": "ci (old)", "csrf_token": token}
    )
    assert renamed.status_code == 303, renamed.text
    row = await stored(context, old.id)
    assert (row.name, row.expires_at) == ("ci (old)", grace_end)
    # A day posted anyway (a tampered form) is not an edit of the expiry the page offers.
    later = (utcnow() + timedelta(days=30)).date().isoformat()
    sent = {**form, "name": "ci (older)", "expires_on": later, "csrf_token": token}
    assert (await client.post(f"/console/keys/{old.id}/edit", data=sent)).status_code == 303
    assert (await stored(context, old.id)).expires_at == grace_end

    # Its replacement's expiry may change.
    page = await client.get(f"/console/keys/{new_id}/edit")
    assert 'name="expires_on"' in page.text and "being replaced" not in page.text


async def test_refusals_show_the_form_again_with_the_input(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    await add_scope(context, "billing:write", "Change billing")
    key = await service_key(context, alice, "ci", description="kept", scopes=[READ])
    token = await signed_in(client, "alice")
    form = shown_form((await client.get(f"/console/keys/{key.id}/edit")).text)
    url = f"/console/keys/{key.id}/edit"

    typed = {**form, "description": "new words", "csrf_token": token}
    blank = await client.post(url, data={**typed, "name": "   "})
    assert blank.status_code == 422
    assert field_error(blank.text, "name") == "the name must not be blank"
    assert ">new words</textarea>" in blank.text

    ips = await client.post(url, data={**typed, "allowed_ips": "10.0.0.0/8,x"})
    assert ips.status_code == 422
    assert field_error(ips.text, "allowed_ips") == "'x' is not an IPv4 or IPv6 address or CIDR"
    assert ">10.0.0.0/8,x</textarea>" in ips.text and 'aria-invalid="true"' in ips.text

    limits = expiry_limits(context.settings)
    late = (limits.maximum + timedelta(days=1)).isoformat()
    day = await client.post(url, data={**typed, "expires_on": late})
    assert day.status_code == 422
    assert field_error(day.text, "expires_on") == (
        f"Choose a day from {limits.minimum.isoformat()} to {limits.maximum.isoformat()}."
    )
    assert f'value="{late}"' in day.text

    # The service's refusal (a scope the owner does not hold), next to the scopes.
    unheld = await client.post(url, data={**typed, "scopes": [READ, "billing:write"]})
    assert unheld.status_code == 422
    message = field_error(unheld.text, "scopes")
    assert message is not None and message.endswith("not held: billing:write.")
    assert ">new words</textarea>" in unheld.text

    row = await stored(context, key.id)
    assert (row.name, row.description, row.scopes) == ("ci", "kept", [READ])
    assert await audit_events(context, "api_key.updated", outcome="success") == []


async def test_a_secret_typed_into_the_edit_form_is_refused_with_the_input_kept(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    key = await service_key(context, alice, "ci", description="kept", scopes=[READ])
    token = await signed_in(client, "alice")
    url = f"/console/keys/{key.id}/edit"
    form = {**shown_form((await client.get(url)).text), "csrf_token": token}
    secret = "ksk_" + "Q" * 16 + "_" + "s" * 49
    for field in ("name", "description"):
        refused = await client.post(url, data={**form, field: f"prod {secret}"})
        assert refused.status_code == 422
        assert field_error(refused.text, field) == (
            "Looks like a secret (an API key, client secret, refresh token or access token): "
            "names and descriptions are shown to others, so keep secrets out of them."
        )
        assert secret in refused.text  # in the field, to be corrected
    row = await stored(context, key.id)
    assert (row.name, row.description) == ("ci", "kept")
    assert await audit_events(context, "api_key.updated", outcome="success") == []


async def test_a_scope_the_owner_lost_is_kept_until_unticked(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    key = await service_key(context, alice, "ci", scopes=[READ, WRITE])
    await set_principal(context, alice.id, permissions=["api_keys:manage", READ])
    token = await signed_in(client, "alice")
    page = await client.get(f"/console/keys/{key.id}/edit")
    assert "You no longer hold this permission" in page.text
    form = shown_form(page.text)
    assert form["scopes"] == [READ, WRITE]
    url = f"/console/keys/{key.id}/edit"
    renamed = await client.post(url, data={**form, "name": "ci2", "csrf_token": token})
    assert renamed.status_code == 303
    assert (await stored(context, key.id)).scopes == [READ, WRITE]
    dropped = await client.post(
        url, data={**form, "name": "ci2", "scopes": [READ], "csrf_token": token}
    )
    assert dropped.status_code == 303
    assert (await stored(context, key.id)).scopes == [READ]


async def test_csrf_another_users_key_and_an_expired_key_are_refused(
    client: httpx.AsyncClient, context: AppContext, alice: Principal, app: Any
) -> None:
    mine = await service_key(context, alice, "mine")
    bob = await create_principal(context, "bob")
    theirs = await service_key(context, bob, "theirs")
    token = await signed_in(client, "alice")
    form = {"name": "renamed", "csrf_token": token}

    for data in ({"name": "renamed"}, {**form, "csrf_token": "forged"}):
        refused = await client.post(f"/console/keys/{mine.id}/edit", data=data)
        assert refused.status_code == 403 and "Form refused" in refused.text
    async with client_for(app) as other:
        bob_token = await signed_in(other, "bob")
    refused = await client.post(
        f"/console/keys/{mine.id}/edit", data={**form, "csrf_token": bob_token}
    )
    assert refused.status_code == 403
    assert (await stored(context, mine.id)).name == "mine"

    # Another user's key, an unknown id, a deleted key: the console's 404 page.
    await client.post(f"/console/keys/{mine.id}/delete", data={"csrf_token": token})
    for key_id in (theirs.id, "no-such-key", mine.id):
        page = await client.get(f"/console/keys/{key_id}/edit")
        assert page.status_code == 404 and "text/html" in page.headers["content-type"]
        assert "No API key with this id." in page.text
        sent = await client.post(f"/console/keys/{key_id}/edit", data=form)
        assert sent.status_code == 404
    assert (await stored(context, theirs.id)).name == "theirs"

    # An expired key: no Edit in the list; its address says why, and a form changes nothing.
    old = await service_key(context, alice, "old")
    await set_key(context, old.id, expires_at=utcnow() - timedelta(minutes=1))
    keys = await client.get("/console/keys")
    assert "old" in keys.text and f"/console/keys/{old.id}/edit" not in keys.text
    page = await client.get(f"/console/keys/{old.id}/edit")
    assert page.status_code == 409 and "<h1>Key expired</h1>" in page.text
    assert "An expired key cannot be edited" in page.text and 'name="name"' not in page.text
    later = (utcnow() + timedelta(days=30)).date().isoformat()
    sent = await client.post(f"/console/keys/{old.id}/edit", data={**form, "expires_on": later})
    assert sent.status_code == 409 and "<h1>Key expired</h1>" in sent.text
    assert (await stored(context, old.id)).name == "old"
    assert await audit_events(context, "api_key.updated", outcome="success") == []


async def test_an_admin_edits_a_device_key(client: httpx.AsyncClient, context: AppContext) -> None:
    await add_scope(context, READ, "Read projects")
    await create_principal(context, "root", permissions=["admin"])
    device = await create_principal(
        context, "sensor-1", kind="device", permissions=["sensors:write", READ]
    )
    other = await create_principal(context, "sensor-2", kind="device")
    key = await service_key(context, device, "station", scopes=[READ])
    foreign = await service_key(context, other, "elsewhere")
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{device.id}"

    page = await client.get(base)
    assert f'href="{base}/keys/{key.id}/edit"' in page.text
    edit = await client.get(f"{base}/keys/{key.id}/edit")
    assert edit.status_code == 200 and "of device sensor-1" in edit.text
    assert "inherits every permission the owner holds" in edit.text
    form = shown_form(edit.text)
    sent = {**form, "name": "station two", "scopes": ["sensors:write"], "csrf_token": token}
    saved = await client.post(f"{base}/keys/{key.id}/edit", data=sent)
    assert saved.status_code == 303
    assert saved.headers["location"] == f"{base}?done=updated&key={key.id}"
    shown = await client.get(saved.headers["location"])
    assert "Key station two was updated." in shown.text
    row = await stored(context, key.id)
    assert (row.name, row.scopes) == ("station two", ["sensors:write"])
    [event] = await audit_events(context, "api_key.updated", outcome="success")
    assert (event.actor, event.principal_id) == ("user:root", device.id)
    assert (await exchange(client, key.api_key)).json()["scope"] == "sensors:write"

    # Not a permission the device holds: the form again, with the service's words.
    refused = await client.post(
        f"{base}/keys/{key.id}/edit", data={**sent, "scopes": ["api_keys:manage"]}
    )
    assert refused.status_code == 422 and "not held" in (field_error(refused.text, "scopes") or "")
    # Another device's key under this device's address: 404.
    assert (await client.get(f"{base}/keys/{foreign.id}/edit")).status_code == 404
    assert (await client.post(f"{base}/keys/{foreign.id}/edit", data=sent)).status_code == 404
    assert (await stored(context, foreign.id)).name == "elsewhere"


def shown_stamp(html: str) -> dict[str, str]:
    """The Edit form's hidden stamp of the settings it shows, as a browser sends it."""
    found = re.search(r'<input type="hidden" name="shown" value="([0-9a-f]+)">', html)
    return {"shown": found.group(1)} if found else {}


async def test_a_form_shown_before_another_edit_does_not_undo_it(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    # Two tabs (or two admins) open the Edit form. One takes a scope away; the other then
    # renames the key with the form as it was shown, the scope still ticked. Compared with
    # the key as stored then, the scope looked like a change of its own and came back.
    key = await service_key(context, alice, "ci", scopes=[READ, WRITE])
    token = await signed_in(client, "alice")
    address = f"/console/keys/{key.id}/edit"
    first = await client.get(address)
    stale = {**shown_form(first.text), **shown_stamp(first.text), "csrf_token": token}
    second = await client.get(address)
    narrowed = {**shown_form(second.text), **shown_stamp(second.text)}
    narrowed.update(scopes=[READ], csrf_token=token)
    taken = await client.post(address, data=narrowed)
    assert taken.headers["location"] == f"/console/keys?done=updated&key={key.id}"
    # That form sent twice (a double click): nothing left to change, no refusal either.
    again = await client.post(address, data=narrowed)
    assert again.headers["location"] == f"/console/keys?done=unchanged&key={key.id}"

    refused = await client.post(address, data={**stale, "name": "deploy"})
    assert refused.status_code == 409
    assert "were changed since this page was shown" in unescape(refused.text)
    row = await stored(context, key.id)
    assert (row.name, row.scopes) == ("ci", [READ])
    updates = await audit_events(context, "api_key.updated")
    assert [e.outcome for e in updates] == ["success", "failure"]  # the refusal on record
    assert updates[1].reason.startswith("refused (409): This key's settings were changed")
    # Shown again as the key is now: saving the rename from there keeps the scope away.
    current = shown_form(refused.text)
    assert current["scopes"] == [READ] and current["name"] == "ci"
    fresh = {**current, **shown_stamp(refused.text), "csrf_token": token}
    renamed = await client.post(address, data={**fresh, "name": "deploy"})
    assert renamed.headers["location"] == f"/console/keys?done=updated&key={key.id}"
    row = await stored(context, key.id)
    assert (row.name, row.scopes) == ("deploy", [READ])


async def test_the_expiry_offered_ends_where_the_keys_secret_must(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    """The date field stops at 365 days from the key's creation (a secret lives no longer),
    and a later day sent anyway is refused in the form, saying why."""
    await signed_in(client, "alice")
    key = await service_key(context, alice, "old", scopes=[READ])
    created = utcnow().replace(microsecond=0) - timedelta(days=300)
    await set_key(context, key.id, created_at=created, expires_at=odd_moment(30))
    key = await stored(context, key.id)
    latest = (created + timedelta(days=365)).date()
    page = await client.get(f"/console/keys/{key.id}/edit")
    assert f'max="{latest.isoformat()}"' in page.text
    assert f"up to {latest.isoformat()}" in page.text

    form = shown_form(page.text) | {"expires_on": (latest + timedelta(days=1)).isoformat()}
    form["csrf_token"] = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    for hidden in ("form_id", "shown"):
        found = re.search(rf'name="{hidden}" value="([^"]*)"', page.text)
        if found:
            form[hidden] = unescape(found.group(1))
    refused = await client.post(f"/console/keys/{key.id}/edit", data=form)
    assert refused.status_code == 422, refused.status_code
    assert "at most 365 days after the key was created" in unescape(refused.text)
    assert (await stored(context, key.id)).expires_at == key.expires_at


async def test_an_edit_that_changes_nothing_says_so_and_a_day_that_is_none_is_refused(
    client: httpx.AsyncClient, context: AppContext, alice: Principal
) -> None:
    key = await service_key(context, alice, "ci", scopes=[READ])
    token = await signed_in(client, "alice")
    page = await client.get(f"/console/keys/{key.id}/edit")
    form = {**shown_form(page.text), "csrf_token": token}
    same = await client.post(f"/console/keys/{key.id}/edit", data=form)
    listed = await client.get(same.headers["location"])
    said = '<p class="banner ok" role="status" id="notice" tabindex="-1">{}</p>'
    assert said.format("Nothing was changed: the form held the settings key ci has.") in (
        unescape(listed.text)
    )
    # A link naming no key of the list (another's, a deleted one) names none.
    other = await client.get("/console/keys", params={"done": "unchanged", "key": "x"})
    assert said.format("Nothing was changed: the form held the settings the key has.") in (
        unescape(other.text)
    )
    # An expiry cleared or typed as no date (a browser without a date picker).
    for day in ("", "31/01/2027", "2027-02-30"):
        refused = await client.post(
            f"/console/keys/{key.id}/edit", data={**form, "name": "deploy", "expires_on": day}
        )
        assert refused.status_code == 422, day
        assert field_error(refused.text, "expires_on") == "Enter a date such as 2027-01-31.", day
    row = await stored(context, key.id)
    assert row.name == "ci"
    assert await audit_events(context, "api_key.updated", outcome="success") == []
