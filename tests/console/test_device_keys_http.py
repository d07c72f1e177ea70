"""A device's keys in the console (admin) answer as one's own keys do, at the device's
addresses: refusals, the delete confirmation, the permission each side needs."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from keyservice.api_keys.models import ApiKey
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from tests.console.test_edit_http import shown_form, shown_stamp
from tests.console.test_http import field_error, form_id_of, signed_in
from tests.factories import (
    add_scope,
    audit_events,
    create_principal,
    exchange,
    service_key,
    set_key,
)

READ = "projects:read"
UNKNOWN = "00000000-0000-7000-8000-000000000000"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_keys_per_principal": 2}


@pytest.fixture
async def sensor(context: AppContext) -> Principal:
    await add_scope(context, READ, "Read projects")
    await create_principal(context, "root", permissions=["admin"])
    return await create_principal(context, "sensor-1", kind="device", permissions=[READ])


async def live_keys(context: AppContext, owner_id: str) -> list[str]:
    async with context.database.sessionmaker() as session:
        names = await session.scalars(
            select(ApiKey.name).where(ApiKey.principal_id == owner_id, ApiKey.revoked_at.is_(None))
        )
        return sorted(names)


def current_section(html: str) -> list[str]:
    """The menu entries marked as the page's own (aria-current)."""
    return re.findall(r'<a href="([^"]+)" aria-current="page">', html)


async def test_a_refused_device_key_form_is_shown_again_for_the_device(
    client: httpx.AsyncClient, context: AppContext, sensor: Principal
) -> None:
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{sensor.id}"
    page = await client.get(f"{base}/keys/new")
    assert page.status_code == 200 and '<p class="hint">For device sensor-1.</p>' in page.text
    assert f'action="{base}/keys"' in page.text and f'<a href="{base}">Cancel</a>' in page.text
    assert current_section(page.text) == ["/console/admin/devices"]
    form = {"csrf_token": token, "description": "kept", "form_id": form_id_of(page.text)}

    blank = await client.post(f"{base}/keys", data={**form, "name": " "})
    assert blank.status_code == 422
    assert field_error(blank.text, "name") == "the name must not be blank"
    assert ">kept</textarea>" in blank.text and "For device sensor-1." in blank.text
    assert f'action="{base}/keys"' in blank.text and f'<a href="{base}">Cancel</a>' in blank.text
    unheld = await client.post(f"{base}/keys", data={**form, "name": "a", "scopes": ["admin"]})
    assert unheld.status_code == 422
    assert (field_error(unheld.text, "scopes") or "").endswith("not held: admin.")
    assert await live_keys(context, sensor.id) == []

    # The limit on live keys: the service's words above the form (409), nothing made.
    for name in ("one", "two"):
        await service_key(context, sensor, name)
    full = await client.post(f"{base}/keys", data={**form, "name": "three"})
    assert full.status_code == 409
    assert "At most 2 API keys that are neither revoked nor expired" in full.text
    assert await live_keys(context, sensor.id) == ["one", "two"]
    [refusal, *_] = await audit_events(context, "api_key.created", outcome="failure")
    assert (refusal.actor, refusal.principal_id) == ("user:root", sensor.id)
    assert refusal.reason.startswith("refused (422): ")

    # An unknown device: the 404 page, for the form and for what it sends.
    missing = f"/console/admin/devices/{UNKNOWN}"
    assert (await client.get(f"{missing}/keys/new")).status_code == 404
    gone = await client.post(f"{missing}/keys", data={**form, "name": "x"})
    assert gone.status_code == 404 and "No device with this id." in gone.text


async def test_an_admin_deletes_a_device_key_after_confirming(
    client: httpx.AsyncClient, context: AppContext, sensor: Principal
) -> None:
    key = await service_key(context, sensor, "station")
    other = await create_principal(context, "sensor-2", kind="device")
    foreign = await service_key(context, other, "elsewhere")
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{sensor.id}"

    confirm = await client.get(f"{base}/keys/{key.id}/delete")
    assert confirm.status_code == 200
    assert "<h1>Delete API key station?</h1>" in confirm.text
    assert f'action="{base}/keys/{key.id}/delete"' in confirm.text
    assert f'<a href="{base}">Cancel</a>' in confirm.text
    assert current_section(confirm.text) == ["/console/admin/devices"]

    # Another device's key under this device's address, an unknown device: 404.
    for url in (
        f"{base}/keys/{foreign.id}/delete",
        f"/console/admin/devices/{UNKNOWN}/keys/x/delete",
    ):
        assert (await client.get(url)).status_code == 404
        assert (await client.post(url, data={"csrf_token": token})).status_code == 404
    assert await live_keys(context, other.id) == ["elsewhere"]

    done = await client.post(f"{base}/keys/{key.id}/delete", data={"csrf_token": token})
    assert done.status_code == 303
    assert done.headers["location"] == f"{base}?done=key-deleted&name=sensor-1"
    shown = await client.get(done.headers["location"])
    assert (
        '<p class="banner ok" role="status" id="notice" tabindex="-1">The key was deleted.</p>'
        in shown.text
    )
    assert await live_keys(context, sensor.id) == []
    [event] = await audit_events(context, "api_key.deleted", outcome="success")
    assert (event.actor, event.principal_id, event.key_id) == ("user:root", sensor.id, key.id)
    assert (await exchange(client, key.api_key)).status_code == 401
    # Sent again (a second click): the key is gone, a 404 page.
    again = await client.post(f"{base}/keys/{key.id}/delete", data={"csrf_token": token})
    assert again.status_code == 404 and "No API key with this id." in again.text


async def test_device_key_edits_refused_as_own_keys_are(
    client: httpx.AsyncClient, context: AppContext, sensor: Principal
) -> None:
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{sensor.id}"
    back = f'<a class="button primary" href="{base}">Back to the device</a>'

    # An expired key: its address says why, and a form sent changes nothing.
    old = await service_key(context, sensor, "old")
    await set_key(context, old.id, expires_at=utcnow() - timedelta(minutes=1))
    page = await client.get(f"{base}/keys/{old.id}/edit")
    assert page.status_code == 409 and "<h1>Key expired</h1>" in page.text and back in page.text
    assert current_section(page.text) == ["/console/admin/devices"]
    sent = await client.post(
        f"{base}/keys/{old.id}/edit", data={"csrf_token": token, "name": "renamed"}
    )
    assert sent.status_code == 409 and "<h1>Key expired</h1>" in sent.text and back in sent.text

    # A form shown before another edit (another admin's) is refused, not saved over it.
    key = await service_key(context, sensor, "station", scopes=[READ])
    address = f"{base}/keys/{key.id}/edit"
    first = await client.get(address)
    stale = {**shown_form(first.text), **shown_stamp(first.text), "csrf_token": token}
    renamed = await client.post(address, data={**stale, "name": "renamed"})
    assert renamed.headers["location"] == f"{base}?done=updated&key={key.id}"
    again = await client.post(address, data={**stale, "description": "words"})
    assert again.status_code == 409
    assert "were changed since this page was shown" in unescape(again.text)
    assert f'action="{address}"' in again.text and "of device sensor-1" in again.text
    assert f'<a href="{base}">Cancel</a>' in again.text
    updates = await audit_events(context, "api_key.updated")
    assert [(e.outcome, e.principal_id) for e in updates] == [
        ("failure", sensor.id),
        ("success", sensor.id),
        ("failure", sensor.id),
    ]
    # Unknown device: 404, the key untouched.
    missing = f"/console/admin/devices/{UNKNOWN}/keys/{key.id}/edit"
    assert (await client.get(missing)).status_code == 404
    assert (await client.post(missing, data={**stale, "name": "x"})).status_code == 404
    assert await live_keys(context, sensor.id) == ["old", "renamed"]


async def test_device_key_rotation_answers_at_the_devices_address(
    client: httpx.AsyncClient, context: AppContext, sensor: Principal
) -> None:
    key = await service_key(context, sensor, "station")
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{sensor.id}"
    page = await client.get(f"{base}/keys/{key.id}/rotate")
    assert page.status_code == 200 and f'action="{base}/keys/{key.id}/rotate"' in page.text
    assert f'<a href="{base}">Cancel</a>' in page.text
    assert current_section(page.text) == ["/console/admin/devices"]
    form = {"csrf_token": token, "grace_seconds": "3600", "form_id": form_id_of(page.text)}
    rotated = await client.post(f"{base}/keys/{key.id}/rotate", data=form)
    assert rotated.status_code == 200 and "Your rotated API key" in rotated.text
    assert f'href="{base}" data-done>Done</a>' in rotated.text
    assert current_section(rotated.text) == ["/console/admin/devices"]
    again = await client.post(f"{base}/keys/{key.id}/rotate", data=form)
    assert again.status_code == 409
    assert f'href="{base}">Back to the device</a>' in again.text
    # An unknown device or another device's key: 404, nothing rotated.
    other = await create_principal(context, "sensor-2", kind="device")
    foreign = await service_key(context, other, "elsewhere")
    for url in (
        f"/console/admin/devices/{UNKNOWN}/keys/{key.id}/rotate",
        f"{base}/keys/{foreign.id}/rotate",
    ):
        assert (await client.get(url)).status_code == 404
        sent = await client.post(url, data={"csrf_token": token, "grace_seconds": "0"})
        assert sent.status_code == 404
    assert await live_keys(context, other.id) == ["elsewhere"]
    [event] = await audit_events(context, "api_key.rotated", outcome="success")
    assert (event.actor, event.principal_id) == ("user:root", sensor.id)


async def test_each_side_needs_its_permission(
    client: httpx.AsyncClient, context: AppContext, sensor: Principal, app: Any
) -> None:
    """Device keys need `admin`, even for a user who manages their own keys; own keys need
    `api_keys:manage` (which `admin` implies). Each refusal is a 403 page and changes
    nothing; one sent as a form is on record."""
    from tests.conftest import client_for

    key = await service_key(context, sensor, "station")
    await create_principal(context, "kim", permissions=["api_keys:manage"])
    token = await signed_in(client, "kim")
    base = f"/console/admin/devices/{sensor.id}/keys"
    for path in ("/new", f"/{key.id}/edit", f"/{key.id}/rotate", f"/{key.id}/delete"):
        refused = await client.get(base + path)
        assert refused.status_code == 403 and "This page is for administrators." in refused.text
    for path in ("", f"/{key.id}/edit", f"/{key.id}/rotate", f"/{key.id}/delete"):
        sent = {"csrf_token": token, "name": "x", "grace_seconds": "0"}
        refused = await client.post(base + path, data=sent)
        assert refused.status_code == 403 and "This page is for administrators." in refused.text
    assert await live_keys(context, sensor.id) == ["station"]
    refusals = await audit_events(context, outcome="failure")
    assert [(e.type, e.principal_id) for e in refusals] == [
        ("api_key.created", sensor.id),
        ("api_key.updated", sensor.id),
        ("api_key.rotated", sensor.id),
        ("api_key.deleted", sensor.id),
    ]

    reader = await create_principal(context, "ray", permissions=[READ])
    mine = await service_key(context, reader, "mine")
    async with client_for(app) as other:
        token = await signed_in_elsewhere(other, "ray")
        for path in ("/new", f"/{mine.id}/edit", f"/{mine.id}/rotate", f"/{mine.id}/delete"):
            refused = await other.get(f"/console/keys{path}")
            assert refused.status_code == 403
            assert "needs the permission 'api_keys:manage'" in unescape(refused.text)
        for path in ("", f"/{mine.id}/edit", f"/{mine.id}/rotate", f"/{mine.id}/delete"):
            sent = {"csrf_token": token, "name": "x", "grace_seconds": "0"}
            refused = await other.post(f"/console/keys{path}", data=sent)
            assert refused.status_code == 403
            assert "needs the permission 'api_keys:manage'" in unescape(refused.text)
    assert await live_keys(context, reader.id) == ["mine"]
    own = [e for e in await audit_events(context, outcome="failure") if e.actor == "user:ray"]
    assert [(e.type, e.principal_id) for e in own] == [
        ("api_key.created", reader.id),
        ("api_key.updated", reader.id),
        ("api_key.rotated", reader.id),
        ("api_key.deleted", reader.id),
    ]


async def signed_in_elsewhere(client: httpx.AsyncClient, username: str) -> str:
    """Sign in a user who may not manage keys (sent to Password); their CSRF token."""
    from tests.console.conftest import csrf_of
    from tests.factories import PASSWORD

    page = await client.get("/console/login")
    data = {"username": username, "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    assert (await client.post("/console/login", data=data)).status_code == 303
    return csrf_of((await client.get("/console/password")).text)


async def test_every_key_page_marks_its_own_menu_entry(
    client: httpx.AsyncClient, context: AppContext, sensor: Principal
) -> None:
    """The page showing a new or rotated key and the delete confirmation mark the menu entry
    they belong to (aria-current), as the key forms do: API keys for one's own, Devices for
    a device's."""
    await create_principal(context, "boss", permissions=["admin", "api_keys:manage"])
    token = await signed_in(client, "boss")
    for base, entry in (
        ("/console/keys", "/console/keys"),
        (f"/console/admin/devices/{sensor.id}/keys", "/console/admin/devices"),
    ):
        new = await client.get(f"{base}/new")
        assert current_section(new.text) == [entry]
        created = await client.post(base, data={"csrf_token": token, "name": "k"})
        assert created.status_code == 200 and "Your new API key" in created.text
        assert current_section(created.text) == [entry]
        key_id = re.search(r'<dt>Client ID</dt><dd class="mono">([^<]+)</dd>', created.text)
        assert key_id
        async with context.database.sessionmaker() as session:
            found = await session.scalar(
                select(ApiKey.id).where(ApiKey.client_id == key_id.group(1))
            )
        for page in ("edit", "rotate", "delete"):
            shown = await client.get(f"{base}/{found}/{page}")
            assert shown.status_code == 200
            assert current_section(shown.text) == [entry], page
        rotated = await client.post(
            f"{base}/{found}/rotate", data={"csrf_token": token, "grace_seconds": "0"}
        )
        assert rotated.status_code == 200 and "Your rotated API key" in rotated.text
        assert current_section(rotated.text) == [entry]


async def test_deleting_a_device_without_script_asks_on_a_page_of_its_own(
    client: httpx.AsyncClient, context: AppContext, sensor: Principal
) -> None:
    # Without JavaScript the Delete device button opens a confirmation page (GET), whose
    # Delete posts; the keys are revoked with the device.
    key = await service_key(context, sensor, "station")
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{sensor.id}"
    confirm = await client.get(f"{base}/delete")
    assert confirm.status_code == 200
    assert "<h1>Delete device sensor-1?</h1>" in confirm.text
    assert f'action="{base}/delete"' in confirm.text
    assert f'<a href="{base}">Cancel</a>' in confirm.text
    assert current_section(confirm.text) == ["/console/admin/devices"]
    unknown = await client.get(f"/console/admin/devices/{UNKNOWN}/delete")
    assert unknown.status_code == 404 and "No device with this id." in unknown.text

    done = await client.post(f"{base}/delete", data={"csrf_token": token})
    assert done.status_code == 303
    assert done.headers["location"] == "/console/admin/devices?done=device-deleted&name=sensor-1"
    listed = await client.get(done.headers["location"])
    assert "Device sensor-1 deleted; its keys are revoked." in listed.text
    assert await live_keys(context, sensor.id) == []
    assert (await exchange(client, key.api_key)).status_code == 401
    assert (await client.get(f"{base}/delete")).status_code == 404  # gone
