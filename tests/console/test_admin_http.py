"""The console's scope catalog and all-keys pages over plain HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.models import ApiKey
from keyservice.api_keys.schemas import ApiKeyCreate
from keyservice.audit import service as audit
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from keyservice.scopes import service as scopes
from keyservice.security.tokens import parse_api_key
from tests.conftest import client_for
from tests.console.conftest import csrf_of, textarea_value
from tests.console.test_http import field_error, signed_in
from tests.factories import (
    PASSWORD,
    add_scope,
    audit_events,
    create_principal,
    exchange,
    service_key,
    set_key,
)


async def _key(context: AppContext, owner: Principal, name: str, **fields: Any) -> tuple[str, str]:
    """Create a key through the service; return its id and its key string."""
    created = await service_key(context, owner, name, **fields)
    return created.id, created.api_key


async def _rotate(context: AppContext, owner: Principal, key_id: str, grace: int) -> str:
    async with context.database.sessionmaker() as session:
        key = await session.get(ApiKey, key_id)
        assert key is not None
        rotated = await api_keys.rotate(
            context, session, key=key, owner=owner, grace_seconds=grace, actor="test", ip=None
        )
    return rotated.id


def listed_names(html: str) -> list[str]:
    """The key names in the all-keys table, top to bottom."""
    return re.findall(r'<th scope="row" data-label="Name">([^<]+)', html)


def link(html: str, label: str) -> str | None:
    match = re.search(rf'<a href="([^"]+)">{label}</a>', html)
    return unescape(match.group(1)) if match else None


# Scope catalog ---------------------------------------------------------------------------


async def test_admin_adds_a_scope_and_refusals_keep_the_input(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    token = await signed_in(client, "root")
    page = await client.get("/console/admin/scopes")
    assert page.status_code == 200
    assert '<span class="mono">api_keys:manage</span> <span class="tag">built-in</span>' in (
        page.text
    )
    assert "Create, list, rotate and delete one&#39;s own API keys." in page.text
    assert 'href="/console/admin/scopes" aria-current="page"' in page.text

    added = await client.post(
        "/console/admin/scopes",
        data={"csrf_token": token, "name": "projects:read", "description": "Read projects"},
    )
    assert added.status_code == 303, added.text
    shown = await client.get(added.headers["location"])
    assert "Scope projects:read added to the catalog." in shown.text
    assert '<span class="mono">projects:read</span>' in shown.text and "Read projects" in shown.text
    # As POST /admin/scopes: in the catalog, in this process's metadata at once, audited.
    listed = await client.get("/.well-known/oauth-authorization-server")
    assert "projects:read" in listed.json()["scopes_supported"]
    events = await audit_events(context, "scope.created", outcome="success")
    assert [(e.actor, e.reason) for e in events] == [("user:root", "scope projects:read")]

    # The API's words, next to the field, with what was typed kept.
    cases = [
        ("projects:read", "The scope 'projects:read' already exists."),
        ("projects read", "May hold only letters, digits and _ . : / -, and must start"),
        ("-projects", "May hold only letters, digits and _ . : / -, and must start"),
        # A URL would lose these: the API could never edit or delete such a scope.
        ("projects/..", "May not end with /, nor have an empty, . or .. part between"),
        ("projects/./read", "May not end with /, nor have an empty, . or .. part between"),
        ("projects//read", "May not end with /, nor have an empty, . or .. part between"),
        ("", "This field is required."),
        ("p" * 101, "Use at most 100 characters."),
    ]
    for name, message in cases:
        refused = await client.post(
            "/console/admin/scopes",
            data={"csrf_token": token, "name": name, "description": "kept <b>"},
        )
        assert refused.status_code == 422, name
        error = field_error(refused.text, "name")
        assert error is not None and error.startswith(message), (name, error)
        assert f'value="{name}"' in unescape(refused.text)
        assert ">kept &lt;b&gt;</textarea>" in refused.text
        assert "^[" not in refused.text and "String should" not in refused.text
    too_long = await client.post(
        "/console/admin/scopes",
        data={"csrf_token": token, "name": "projects:write", "description": "d" * 1001},
    )
    assert field_error(too_long.text, "description") == "Use at most 1000 characters."
    assert len(await audit_events(context, "scope.created", outcome="success")) == 1

    # A crafted link cannot put a stranger's words into the banner: only a catalog name.
    crafted = await client.get(
        "/console/admin/scopes",
        params={"done": "scope-created", "name": "https://evil.example/login"},
    )
    assert "The scope was added." in crafted.text and "evil.example" not in crafted.text


async def test_a_scope_form_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    await signed_in(client, "root")
    for sent in ({}, {"csrf_token": "forged"}):
        refused = await client.post("/console/admin/scopes", data={**sent, "name": "x:y"})
        assert refused.status_code == 403 and "Form refused" in refused.text
    assert await audit_events(context, "scope.created", outcome="success") == []
    assert "x:y" not in (await client.get("/console/admin/scopes")).text


def notice(html: str) -> str | None:
    """The text of the page's success banner, if any."""
    found = re.search(
        r'<p class="banner ok" role="status" id="notice" tabindex="-1">([^<]*)</p>', html
    )
    return unescape(found.group(1)) if found else None


def banner_errors(html: str) -> list[str]:
    """The messages of the page's error banner, as a person reads them."""
    found = re.search(r'<div class="banner error"[^>]*>(.*?)</div>', html, re.S)
    return [unescape(m) for m in re.findall(r"<p>([^<]*)</p>", found.group(1))] if found else []


async def test_admin_edits_a_scope_description(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    await add_scope(context, "files/read", "Read filez")
    token = await signed_in(client, "root")
    page = await client.get("/console/admin/scopes")
    assert '<input type="hidden" name="name" value="files/read">' in page.text
    assert ">Read filez</textarea>" in page.text
    saved = await client.post(
        "/console/admin/scopes/edit",
        data={"csrf_token": token, "name": "files/read", "description": "Read files"},
    )
    assert saved.status_code == 303, saved.text
    shown = await client.get(saved.headers["location"])
    assert "The description of files/read was saved." in shown.text
    assert ">Read files</textarea>" in shown.text
    events = await audit_events(context, "scope.updated", outcome="success")
    assert [(e.actor, e.reason) for e in events] == [("user:root", "scope files/read: description")]

    # Refusals in words above the table, with what was typed kept in its row.
    too_long = await client.post(
        "/console/admin/scopes/edit",
        data={"csrf_token": token, "name": "files/read", "description": "d" * 1001},
    )
    assert too_long.status_code == 422
    assert banner_errors(too_long.text) == [
        "The description of files/read was not saved: Use at most 1000 characters."
    ]
    assert ">" + "d" * 1001 + "</textarea>" in too_long.text
    gone = await client.post(
        "/console/admin/scopes/edit",
        data={"csrf_token": token, "name": "files/write", "description": "x"},
    )
    assert gone.status_code == 404
    assert banner_errors(gone.text) == [
        "The description was not saved: The scope 'files/write' is not in the catalog."
    ]
    for sent in ({}, {"csrf_token": "forged"}):
        refused = await client.post(
            "/console/admin/scopes/edit", data={**sent, "name": "files/read", "description": "x"}
        )
        assert refused.status_code == 403 and "Form refused" in refused.text
    assert len(await audit_events(context, "scope.updated", outcome="success")) == 1


def row_description(html: str, name: str) -> str:
    """The description a scope's row holds, as a browser reads the textarea (test_edit_http)."""
    rows = re.findall(r'name="name" value="([^"]*)">\s*<label[^>]*>[^<]*</label>\s*'
                      r"<textarea ([^>]*)>([^<]*)</textarea>", html)  # fmt: skip
    [written] = [text for row, _, text in rows if unescape(row) == name]
    return textarea_value(unescape(written))


async def test_a_scope_row_saved_as_shown_changes_nothing_and_a_refused_one_is_named(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    # As the API may set it: LF line breaks (a browser sends CRLF), a first line break (the
    # HTML parser drops one right after <textarea>), 1000 characters with the LFs, in words
    # (a run of 40 letters would be refused as shaped like a secret).
    text = "\nFiles:\n" + ("r" * 31 + " ") * 31
    assert len(text) == 1000
    await add_scope(context, "files/read", text)
    for n in range(30):
        await add_scope(context, f"other:{n:02}", "")
    token = await signed_in(client, "root")
    page = await client.get("/console/admin/scopes")
    shown = row_description(page.text, "files/read")
    assert shown == text
    sent = {"csrf_token": token, "name": "files/read", "description": shown.replace("\n", "\r\n")}
    saved = await client.post("/console/admin/scopes/edit", data=sent)
    assert saved.status_code == 303, banner_errors(saved.text)
    assert await audit_events(context, "scope.updated", outcome="success") == []
    async with context.database.sessionmaker() as session:
        assert (await scopes.get(session, name="files/read")).description == text

    # Among many rows, a refusal says which, and marks that row's field (it gets the focus).
    refused = await client.post(
        "/console/admin/scopes/edit",
        data={"csrf_token": token, "name": "other:17", "description": "d" * 1001},
    )
    assert refused.status_code == 422
    assert banner_errors(refused.text) == [
        "The description of other:17 was not saved: Use at most 1000 characters."
    ]
    marked = re.findall(r'<textarea id="(description-\d+)"[^>]* aria-invalid="true"', refused.text)
    assert len(marked) == 1
    assert f'<label for="{marked[0]}" class="sr-only">Description of other:17</label>' in (
        refused.text
    )


async def test_admin_deletes_a_scope_after_a_confirmation(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    await add_scope(context, "typo:raed", "Oops")
    token = await signed_in(client, "root")
    page = await client.get("/console/admin/scopes")
    # Delete leads to a confirmation page; the built-ins offer no Delete.
    assert page.text.count('action="/console/admin/scopes/delete"') == 1
    confirm = await client.get("/console/admin/scopes/delete", params={"name": "typo:raed"})
    assert confirm.status_code == 200
    assert "<h1>Delete scope typo:raed?</h1>" in confirm.text
    assert 'method="post" action="/console/admin/scopes/delete"' in confirm.text
    assert "/.well-known" not in confirm.text

    refused = await client.post("/console/admin/scopes/delete", data={"name": "typo:raed"})
    assert refused.status_code == 403 and "Form refused" in refused.text
    deleted = await client.post(
        "/console/admin/scopes/delete", data={"csrf_token": token, "name": "typo:raed"}
    )
    assert deleted.status_code == 303, deleted.text
    shown = await client.get(deleted.headers["location"])
    # Named, though no longer in the catalog `known` checks (it said "The scope was deleted.").
    assert notice(shown.text) == "Scope typo:raed deleted from the catalog."
    assert "typo:raed" not in listed_names(shown.text)
    metadata = await client.get("/.well-known/oauth-authorization-server")
    assert "typo:raed" not in metadata.json()["scopes_supported"]
    events = await audit_events(context, "scope.deleted", outcome="success")
    assert [(e.actor, e.reason) for e in events] == [("user:root", "scope typo:raed")]

    # Deleted meanwhile (another tab): said in words; the confirmation is a 404.
    again = await client.post(
        "/console/admin/scopes/delete", data={"csrf_token": token, "name": "typo:raed"}
    )
    assert again.status_code == 404
    assert banner_errors(again.text) == [
        "The scope was not deleted: The scope 'typo:raed' is not in the catalog."
    ]
    missing = await client.get("/console/admin/scopes/delete", params={"name": "typo:raed"})
    assert missing.status_code == 404
    # A crafted link: only a name that could be created today is named, never a sentence of a
    # stranger's, an address, nor anything that may be a secret.
    for crafted, said in [
        ("files/read", "Scope files/read deleted from the catalog."),
        ("Sign in again at evil.example", "The scope was deleted."),
        ("https://evil.example/login", "The scope was deleted."),
        ("kc_0123456789abcdefXYZ", "The scope was deleted."),
        ("x" * 65, "The scope was deleted."),
        ("", "The scope was deleted."),
    ]:
        page = await client.get(
            "/console/admin/scopes", params={"done": "scope-deleted", "name": crafted}
        )
        assert notice(page.text) == said, crafted
    # The audit page's type filter offers the new event types.
    audit = await client.get("/console/admin/audit")
    for kind in ("scope.updated", "scope.deleted"):
        assert f'<option value="{kind}"' in audit.text, kind


async def test_a_scope_in_use_or_built_in_is_not_deleted_and_the_page_says_why(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    root = await create_principal(context, "root", permissions=["admin", "projects:read"])
    await create_principal(context, "box", kind="device", permissions=["projects:read"])
    await service_key(context, root, "reader", scopes=["projects:read"])
    token = await signed_in(client, "root")
    in_use = (
        "The scope 'projects:read' is in use: held by 1 user, 1 device and 1 API key that is "
        "not revoked. Take it away first (edit those users' and devices' permissions, edit "
        "those keys' scopes or delete the keys), then delete it."
    )
    # The confirmation page says so up front and offers no Delete.
    confirm = await client.get("/console/admin/scopes/delete", params={"name": "projects:read"})
    assert confirm.status_code == 409  # as the Rotate and Edit pages of a key they refuse
    assert banner_errors(confirm.text) == [in_use]
    built_in = await client.get("/console/admin/scopes/delete", params={"name": "introspect"})
    assert built_in.status_code == 409 and 'method="post"' not in built_in.text.split("<main")[1]
    assert 'method="post"' not in confirm.text.split("<main", 1)[1]
    # A form posted anyway (or held since another admin granted it): 409, the same words.
    refused = await client.post(
        "/console/admin/scopes/delete", data={"csrf_token": token, "name": "projects:read"}
    )
    assert refused.status_code == 409
    assert banner_errors(refused.text) == [in_use]
    builtin = await client.post(
        "/console/admin/scopes/delete", data={"csrf_token": token, "name": "introspect"}
    )
    assert builtin.status_code == 409
    assert banner_errors(builtin.text) == [
        "The scope 'introspect' is built in: the service itself checks it, so it cannot be deleted."
    ]
    assert await audit_events(context, "scope.deleted", outcome="success") == []
    page = await client.get("/console/admin/scopes")
    assert '<span class="mono">projects:read</span>' in page.text


async def test_non_admins_can_neither_edit_nor_delete_scopes(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "alice")
    await add_scope(context, "projects:read", "Read projects")
    token = await signed_in(client, "alice")
    refused = await client.get("/console/admin/scopes/delete", params={"name": "projects:read"})
    assert refused.status_code == 403 and "This page is for administrators." in refused.text
    for path, data in (
        ("/console/admin/scopes/edit", {"name": "projects:read", "description": "mine"}),
        ("/console/admin/scopes/delete", {"name": "projects:read"}),
    ):
        refused = await client.post(path, data={**data, "csrf_token": token})
        assert refused.status_code == 403 and "This page is for administrators." in refused.text
    assert await audit_events(context, "scope.updated", outcome="success") == []
    assert await audit_events(context, "scope.deleted", outcome="success") == []


# All keys --------------------------------------------------------------------------------


async def _population(context: AppContext) -> dict[str, str]:
    """Keys of every status, of a user and of a device; return their ids by name."""
    alice = await create_principal(context, "alice")
    sensor = await create_principal(context, "sensor-1", kind="device")
    off = await create_principal(context, "off-1", kind="device", disabled=True)
    ids = {}
    ids["deploy"], _ = await _key(context, alice, "deploy")
    ids["old"], _ = await _key(context, alice, "old")
    await set_key(context, ids["old"], expires_at=utcnow() - timedelta(days=1))
    ids["gone"], _ = await _key(context, alice, "gone")
    await set_key(context, ids["gone"], revoked_at=utcnow())
    ids["station"], _ = await _key(context, sensor, "station")
    ids["paused"], _ = await _key(context, off, "paused")
    return ids


async def test_all_keys_page_lists_filters_and_shows_no_secret(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    ids = await _population(context)
    carol = await create_principal(context, "carol")
    async with context.database.sessionmaker() as session:
        created = await api_keys.create(
            context, session, owner=carol, data=ApiKeyCreate(name="carol-ci"), actor="t", ip=None
        )
    await signed_in(client, "root")

    everything = await client.get("/console/admin/keys")
    assert everything.status_code == 200
    html = everything.text
    assert listed_names(html) == ["carol-ci", "paused", "station", "gone", "old", "deploy"]
    async with context.database.sessionmaker() as session:
        stored = {key.id: key for key in (await session.scalars(select(ApiKey))).all()}
    for key_id, key in stored.items():
        assert key.client_id in html  # each key is named by its client id ...
        assert key.secret_hash not in html  # ... and never by its hash
        if key_id != ids["gone"]:
            assert f'href="/console/admin/keys/{key_id}/revoke"' in html
    assert created.client_secret and created.client_secret not in html
    assert created.api_key not in html
    assert f'href="/console/admin/keys/{ids["gone"]}/revoke"' not in html  # revoked already
    for status in ("valid", "expired", "revoked", "suspended"):
        assert f'<span class="status status-{status}">{status}</span>' in html
    assert 'device <a href="/console/admin/keys?owner_id=' in html and ">sensor-1</a>" in html
    assert 'href="/console/admin/keys" aria-current="page"' in html

    async def names(**params: str) -> list[str]:
        response = await client.get("/console/admin/keys", params=params)
        assert response.status_code == 200, response.text
        return listed_names(response.text)

    assert await names(owner_type="device") == ["paused", "station"]
    assert await names(owner_type="user", status="valid") == ["carol-ci", "deploy"]
    assert await names(status="expired") == ["old"]
    assert await names(status="revoked") == ["gone"]
    assert await names(status="suspended") == ["paused"]
    assert await names(owner_id=carol.id) == ["carol-ci"]
    assert await names(owner_id="nobody") == []
    # The chosen filters stay chosen.
    kept = await client.get("/console/admin/keys", params={"owner_type": "device"})
    assert '<option value="device" selected>' in kept.text

    # A filter no form offers is refused in words, and the rest of the page still works.
    for params, name, message in (
        ({"owner_type": "robot"}, "owner_type", "Choose users or devices."),
        ({"status": "bogus"}, "status", "Choose one of: revoked, expired, suspended, valid."),
        ({"owner_id": "x" * 37}, "owner_id", "An owner ID has at most 36 characters."),
    ):
        refused = await client.get("/console/admin/keys", params=params)
        assert refused.status_code == 422
        assert field_error(refused.text, name) == message
        assert len(listed_names(refused.text)) == 6


async def test_all_keys_page_pages_with_the_api_cursor(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    await _population(context)
    await signed_in(client, "root")

    seen: list[str] = []
    address: str | None = "/console/admin/keys?limit=2"
    pages = 0
    while address is not None:
        page = await client.get(address)
        assert page.status_code == 200, page.text
        names = listed_names(page.text)
        assert 1 <= len(names) <= 2
        seen += names
        pages += 1
        if pages > 1:
            assert link(page.text, "Newest keys") == "/console/admin/keys?limit=2"
        address = link(page.text, "Older keys")
        if address is not None:
            assert "limit=2" in address and "cursor=" in address
    assert pages == 3
    assert seen == ["paused", "station", "gone", "old", "deploy"]

    # Paging keeps the filters.
    first = await client.get("/console/admin/keys", params={"owner_type": "user", "limit": "1"})
    older = link(first.text, "Older keys")
    assert older is not None and "owner_type=user" in older
    assert listed_names((await client.get(older)).text) == ["old"]

    bad_cursor = await client.get("/console/admin/keys", params={"cursor": "not-a-cursor"})
    assert bad_cursor.status_code == 422
    assert "The cursor is not one this service returned; start over." in bad_cursor.text
    for limit in ("x", "0", "501"):
        bad_limit = await client.get("/console/admin/keys", params={"limit": limit})
        assert bad_limit.status_code == 422
        assert "The page size (limit) must be a number from 1 to 500." in bad_limit.text
        assert len(listed_names(bad_limit.text)) == 5


async def test_all_keys_page_finds_a_leaked_key_by_its_client_id(
    client: httpx.AsyncClient, context: AppContext, caplog: pytest.LogCaptureFixture
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    ids = await _population(context)
    alice = await create_principal(context, "ann")
    key_id, api_key = await _key(context, alice, "leaked")
    parsed = parse_api_key(api_key)
    assert parsed is not None
    client_id, secret = parsed
    await signed_in(client, "root")

    async def shown(**params: str) -> httpx.Response:
        return await client.get("/console/admin/keys", params=params)

    found = await shown(client_id=client_id)
    assert found.status_code == 200 and listed_names(found.text) == ["leaked"]
    assert 'id="client_id" name="client_id"' in found.text
    assert f'value="{client_id}"' in found.text  # the filter stays filled in
    # The revoke link and the pager keep it, as the other filters.
    revoke = f'href="/console/admin/keys/{key_id}/revoke?client_id={client_id}"'
    assert revoke in found.text
    assert listed_names((await shown(client_id=f"  {client_id} ")).text) == ["leaked"]
    assert listed_names((await shown(client_id=client_id, status="valid")).text) == ["leaked"]
    assert listed_names((await shown(client_id=client_id, owner_type="device")).text) == []
    assert listed_names((await shown(client_id=client_id, limit="1")).text) == ["leaked"]
    async with context.database.sessionmaker() as session:
        station = await session.get(ApiKey, ids["station"])
        assert station is not None
    assert listed_names((await shown(client_id=station.client_id)).text) == ["station"]
    unknown = await shown(client_id="kc_" + "0" * 16)
    assert unknown.status_code == 200 and listed_names(unknown.text) == []
    assert "No keys match." in unknown.text

    # A malformed client id: the API's words, the value kept to correct, no list.
    for bad in ("kc_short", "kc_" + "0" * 17, key_id):
        refused = await shown(client_id=bad)
        assert refused.status_code == 422, bad
        assert field_error(refused.text, "client_id") == (
            "A client ID is kc_ followed by 16 letters and digits, as the key lists show it."
        )
        assert listed_names(refused.text) == []
        assert "No keys listed: correct the client ID above." in refused.text
        assert (f'value="{bad}"' in refused.text) == (len(bad) <= 24)

    # The whole key string pasted: refused as that, and it appears nowhere on the page (not
    # the field, not a link), nor in the access log, the revoke pages included.
    caplog.set_level(logging.DEBUG)
    for pasted in (api_key, api_key[:25]):
        refused = await shown(client_id=pasted, owner_type="user")
        assert refused.status_code == 422
        error = field_error(refused.text, "client_id")
        assert error is not None
        assert error.startswith("That is an API key string (it starts with ksk_)")
        assert "give only its client ID" in error and "Treat the pasted key as leaked" in error
        assert pasted not in refused.text and secret[:9] not in refused.text
        assert listed_names(refused.text) == []
    confirm = await client.get(
        f"/console/admin/keys/{key_id}/revoke", params={"client_id": api_key}
    )
    assert confirm.status_code == 200 and api_key not in confirm.text
    assert secret[:9] not in confirm.text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("keyservice")]
    access = [r.getMessage() for r in caplog.records if r.name == "keyservice.access"]
    assert access[0].startswith("GET /console/admin/keys 422 "), access
    assert not [line for line in ours if secret[:9] in line or client_id[3:] in line], ours


async def test_admin_revokes_any_key_after_confirming(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    alice = await create_principal(context, "alice")
    key_id, api_key = await _key(context, alice, "leaked")
    token = await signed_in(client, "root")
    assert (await exchange(client, api_key)).status_code == 200

    listing = await client.get("/console/admin/keys", params={"owner_type": "user"})
    revoke = re.search(r'href="(/console/admin/keys/[^"]+/revoke[^"]*)"', listing.text)
    assert revoke
    confirm = await client.get(unescape(revoke.group(1)))
    assert confirm.status_code == 200
    assert "<h1>Revoke API key leaked of user alice?</h1>" in confirm.text
    assert "cannot be undone" in confirm.text and ">Revoke</button>" in confirm.text
    assert api_key not in confirm.text
    action = re.search(r'<form method="post" action="([^"]+)"', confirm.text)
    assert action and unescape(action.group(1)) == (
        f"/console/admin/keys/{key_id}/revoke?owner_type=user"
    )
    assert 'href="/console/admin/keys?owner_type=user">Cancel' in confirm.text

    # Without this session's CSRF token, nothing is revoked.
    for sent in ({}, {"csrf_token": "forged"}):
        refused = await client.post(f"/console/admin/keys/{key_id}/revoke", data=sent)
        assert refused.status_code == 403 and "Form refused" in refused.text
    assert (await exchange(client, api_key)).status_code == 200

    done = await client.post(unescape(action.group(1)), data={"csrf_token": csrf_of(confirm.text)})
    assert done.status_code == 303
    assert done.headers["location"] == "/console/admin/keys?owner_type=user&done=key-revoked"
    after = await client.get(done.headers["location"])
    assert "The key was revoked." in after.text
    assert '<span class="status status-revoked">revoked</span>' in after.text
    assert f"/console/admin/keys/{key_id}/revoke" not in after.text

    refused = await exchange(client, api_key)
    assert refused.status_code == 401, refused.text
    events = [e for e in await audit_events(context, "api_key.deleted") if e.key_id == key_id]
    assert [(e.actor, e.principal_id) for e in events] == [("user:root", alice.id)]

    # Sent again (a second click): nothing more happens; the page says it is done.
    again = await client.post(f"/console/admin/keys/{key_id}/revoke", data={"csrf_token": token})
    assert again.status_code == 303
    assert len(await audit_events(context, "api_key.deleted", outcome="success")) == 1
    twice = await client.get(f"/console/admin/keys/{key_id}/revoke")
    assert twice.status_code == 409 and "This key was revoked already." in twice.text
    missing = await client.get("/console/admin/keys/no-such-key/revoke")
    assert missing.status_code == 404 and "No API key with this id." in missing.text
    posted = await client.post("/console/admin/keys/no-such-key/revoke", data={"csrf_token": token})
    assert posted.status_code == 404


async def test_non_admins_get_neither_page_nor_link(
    client: httpx.AsyncClient, context: AppContext, app: Any
) -> None:
    alice = await create_principal(context, "alice")
    key_id, api_key = await _key(context, alice, "mine")
    token = await signed_in(client, "alice")
    keys = await client.get("/console/keys")
    assert "/console/admin/" not in keys.text
    for path in (
        "/console/admin/scopes",
        "/console/admin/keys",
        f"/console/admin/keys/{key_id}/revoke",
    ):
        refused = await client.get(path)
        assert refused.status_code == 403 and "This page is for administrators." in refused.text
    for path, data in (
        ("/console/admin/scopes", {"name": "mine:all"}),
        (f"/console/admin/keys/{key_id}/revoke", {}),
    ):
        refused = await client.post(path, data={**data, "csrf_token": token})
        assert refused.status_code == 403 and "This page is for administrators." in refused.text
    assert await audit_events(context, "scope.created", outcome="success") == []
    assert await audit_events(context, "api_key.deleted", outcome="success") == []
    assert (await exchange(client, api_key)).status_code == 200

    await create_principal(context, "root", permissions=["admin"])
    async with client_for(app) as admin:
        await signed_in(admin, "root")
        nav = (await admin.get("/console/keys")).text
    assert 'href="/console/admin/keys"' in nav and 'href="/console/admin/scopes"' in nav


# Rotation in progress, the expiry banner -------------------------------------------------


async def test_a_key_being_replaced_is_not_offered_for_rotation(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    root = await create_principal(context, "root", permissions=["admin", "api_keys:manage"])
    sensor = await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")
    for owner, page, base in (
        (root, "/console/keys", "/console/keys"),
        (sensor, f"/console/admin/devices/{sensor.id}", f"/console/admin/devices/{sensor.id}/keys"),
    ):
        old_id, _ = await _key(context, owner, "deploy")
        new_id = await _rotate(context, owner, old_id, 3600)
        async with context.database.sessionmaker() as session:
            old, new = await session.get(ApiKey, old_id), await session.get(ApiKey, new_id)
            assert old is not None and new is not None
        until = old.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        html = (await client.get(page)).text
        assert f'href="{base}/{old_id}/rotate"' not in html
        assert f'href="{base}/{new_id}/rotate"' not in html
        assert (
            f'Being replaced by <span class="mono">{new.client_id}</span>; works until {until}'
        ) in html
        assert (
            f'Replaces <span class="mono">{old.client_id}</span>, which works until {until}; '
            "rotate after that"
        ) in html
        # What the page no longer offers, the service refuses (409), for the same reasons.
        for key_id in (old_id, new_id):
            refused = await client.post(
                f"{base}/{key_id}/rotate", data={"csrf_token": token, "grace_seconds": "0"}
            )
            assert refused.status_code == 409, refused.text

        # Once the old key is gone, the new one may be rotated again.
        await set_key(context, old_id, revoked_at=utcnow())
        html = (await client.get(page)).text
        assert f'href="{base}/{new_id}/rotate"' in html
        assert "Being replaced" not in html and "Replaces" not in html


async def test_the_rotate_page_of_a_key_being_replaced_says_why_instead_of_a_form(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    # Opened by its address (a bookmark, a tab left open from before the rotation), the
    # Rotate page agrees with the list, which no longer offers it, and with the service.
    root = await create_principal(context, "root", permissions=["admin", "api_keys:manage"])
    sensor = await create_principal(context, "sensor-1", kind="device")
    await signed_in(client, "root")
    for owner, page, base, back in (
        (root, "/console/keys", "/console/keys", "Back to the API keys"),
        (
            sensor,
            f"/console/admin/devices/{sensor.id}",
            f"/console/admin/devices/{sensor.id}/keys",
            "Back to the device",
        ),
    ):
        old_id, _ = await _key(context, owner, "deploy")
        form = await client.get(f"{base}/{old_id}/rotate")
        assert form.status_code == 200 and ">Rotate key</button>" in form.text
        new_id = await _rotate(context, owner, old_id, 3600)
        async with context.database.sessionmaker() as session:
            old, new = await session.get(ApiKey, old_id), await session.get(ApiKey, new_id)
            assert old is not None and new is not None
        until = old.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        back_link = f'<a class="button primary" href="{page}">{back}</a>'

        replaced = await client.get(f"{base}/{old_id}/rotate")
        assert replaced.status_code == 409
        assert "<h1>Key already being replaced</h1>" in replaced.text
        assert (
            f'(<span class="mono">{old.client_id}</span>) was rotated already: it is being '
            f'replaced by <span class="mono">{new.client_id}</span> and works until {until}. '
            "Rotate its replacement instead."
        ) in replaced.text
        replacing = await client.get(f"{base}/{new_id}/rotate")
        assert replacing.status_code == 409
        assert "<h1>Key still replacing another</h1>" in replacing.text
        assert (
            f'(<span class="mono">{new.client_id}</span>) replaces <span class="mono">'
            f"{old.client_id}</span>, which works until {until}, its grace period. Rotate this "
            "key after that, or delete the old key first."
        ) in replacing.text
        for held in (replaced, replacing):
            assert "grace_seconds" not in held.text and ">Rotate key</button>" not in held.text
            assert back_link in held.text

        # Once the old key is gone the replacement may be rotated: the form is back.
        await set_key(context, old_id, revoked_at=utcnow())
        again = await client.get(f"{base}/{new_id}/rotate")
        assert again.status_code == 200 and ">Rotate key</button>" in again.text
        # An expired key is not offered either: the page says so.
        await set_key(context, new_id, expires_at=utcnow() - timedelta(minutes=1))
        expired = await client.get(f"{base}/{new_id}/rotate")
        assert expired.status_code == 409 and "<h1>Key expired</h1>" in expired.text
        assert "An expired key cannot be rotated: generate a new one instead." in expired.text
        assert "grace_seconds" not in expired.text and back_link in expired.text


async def test_the_expiry_banner_is_a_status_not_an_alert(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    alice = await create_principal(context, "alice")
    await _key(context, alice, "nightly", expires_at=utcnow() + timedelta(days=3))
    await signed_in(client, "alice")
    for path in ("/console/keys", "/console/keys/new"):
        html = (await client.get(path)).text
        assert '<div class="banner warn" role="status" aria-labelledby="expiry-title">' in html
        assert 'role="alert"' not in html


def _banner(html: str) -> str:
    """The expiry banner's text, from its title to its end."""
    return html.split('id="expiry-title"')[1].split("</div>")[0]


async def test_the_expiry_banner_does_not_ask_to_rotate_a_rotated_key(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """A key in its rotation grace expires soon, but rotating it again is refused: the
    banner names its replacement instead of asking for a rotation."""
    alice = await create_principal(context, "alice")
    deploy_id, _ = await _key(context, alice, "deploy")
    successor_id = await _rotate(context, alice, deploy_id, 3600)
    async with context.database.sessionmaker() as session:
        replacement = await session.get(ApiKey, successor_id)
        assert replacement is not None
        successor = replacement.client_id
    await signed_in(client, "alice")
    banner = _banner((await client.get("/console/keys")).text)
    assert "was rotated: it works until" in banner
    assert f'then only <span class="mono">{successor}</span> does' in banner
    assert "Rotate a key that still works" not in banner
    assert "Put the replacement in use before then" in banner

    await _key(context, alice, "nightly", expires_at=utcnow() + timedelta(days=3))
    both = _banner((await client.get("/console/keys")).text)
    assert "Rotate a key that still works" in both
    assert "A rotated key needs nothing more once its replacement is in use." in both


# Refused changes are audited as the API's are ----------------------------------------------


async def test_refused_console_changes_are_audited(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    root = await create_principal(context, "root", permissions=["admin"])
    token = await signed_in(client, "root")
    added = await client.post(
        "/console/admin/scopes", data={"csrf_token": token, "name": "projects:read"}
    )
    assert added.status_code == 303
    again = await client.post(
        "/console/admin/scopes", data={"csrf_token": token, "name": "projects:read"}
    )
    assert again.status_code == 422
    myself = await client.post(
        f"/console/admin/users/{root.id}",
        data={"csrf_token": token, "action": "state", "disabled": "true"},
    )
    assert myself.status_code == 409
    unknown = "00000000-0000-7000-8000-000000000000"
    gone = await client.post(f"/console/admin/devices/{unknown}/delete", data={"csrf_token": token})
    assert gone.status_code == 404

    refused = [e for e in await audit_events(context) if e.outcome == "failure"]
    assert [(e.type, e.actor, e.principal_id, e.ip) for e in refused] == [
        ("scope.created", "user:root", None, "127.0.0.1"),
        ("user.updated", "user:root", root.id, "127.0.0.1"),
        ("device.deleted", "user:root", unknown, "127.0.0.1"),
    ]
    assert refused[0].reason == "refused (422): The scope 'projects:read' already exists."
    assert refused[1].reason.startswith("refused (409): ")
    assert refused[2].reason.startswith("refused (404): ")


async def test_refused_console_key_changes_are_audited(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    owner = await create_principal(context, "kim", permissions=["api_keys:manage"])
    token = await signed_in(client, "kim")
    # Not an admin: the admin pages' forms are refused, and on record.
    forbidden = await client.post(
        "/console/admin/users",
        data={"csrf_token": token, "username": "eve", "password": "a long password"},
    )
    assert forbidden.status_code == 403
    bad = await client.post(
        "/console/keys", data={"csrf_token": token, "name": "", "expires": "", "allowed_ips": ""}
    )
    assert bad.status_code == 422

    refused = [e for e in await audit_events(context) if e.outcome == "failure"]
    assert [(e.type, e.actor, e.principal_id) for e in refused] == [
        ("user.created", "user:kim", None),
        ("api_key.created", "user:kim", owner.id),
    ]
    assert refused[0].reason == "refused (403): This page is for administrators."
    assert refused[1].reason.startswith("refused (422): ")


async def test_refused_console_forms_are_audited_in_the_words_of_their_page(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """The scope row's edit, the scope deletion and one's own password say why they were
    refused in their own parts of the page (not a form's field errors): the event says it
    too, as the API's does, not "the form was refused"."""
    await create_principal(context, "root", permissions=["admin"])
    await add_scope(context, "projects:read")
    await create_principal(context, "held", permissions=["projects:read"])
    token = await signed_in(client, "root")
    edit = await client.post(
        "/console/admin/scopes/edit",
        data={"csrf_token": token, "name": "nope:x", "description": "gone"},
    )
    assert edit.status_code == 404
    held = await client.post(
        "/console/admin/scopes/delete", data={"csrf_token": token, "name": "projects:read"}
    )
    assert held.status_code == 409
    wrong = await client.post(
        "/console/password",
        data={
            "csrf_token": token,
            "current_password": "not the password",
            "new_password": "a new long password",
            "confirm_password": "a new long password",
        },
    )
    assert wrong.status_code == 403

    refused = [
        (e.type, e.reason)
        for e in await audit_events(context, outcome="failure")
        if e.type != "login"
    ]
    assert refused == [
        (
            "scope.updated",
            "refused (404): The description was not saved: "
            "The scope 'nope:x' is not in the catalog.",
        ),
        (
            "scope.deleted",
            "refused (409): The scope 'projects:read' is in use: held by 1 user, 0 devices "
            "and 0 API keys that are not revoked. Take it away first (edit those users' and "
            "devices' permissions, edit those keys' scopes or delete the keys), then delete it.",
        ),
        ("user.updated", "refused (403): The current password is wrong."),
    ]


async def test_no_password_typed_into_a_console_form_is_in_any_event(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """The console's password forms (a new user, an admin's reset, one's own change), taken
    and refused, as the secret-hygiene sweep (tests/security) does not send them: no event
    quotes a password, now that a refused form's event quotes what its page said."""
    await create_principal(context, "root", permissions=["admin"])
    token = await signed_in(client, "root")
    typed = {
        "created": "created-secret-pass-1",
        "short": "short-1",
        "reset": "reset-secret-pass-22",
        "tiny": "tiny",
        "wrong": "wrong-current-pass-3",
        "differs": "differing-new-pass-5",
        "own": "own-new-secret-pass-4",
    }

    async def post(path: str, expect: int, **data: str) -> None:
        response = await client.post(path, data={"csrf_token": token, **data})
        assert response.status_code == expect, response.text

    await post("/console/admin/users", 303, username="nina", password=typed["created"])
    await post("/console/admin/users", 422, username="nora", password=typed["short"])
    nina = await context_user(context, "nina")
    await post(f"/console/admin/users/{nina}", 303, action="password", password=typed["reset"])
    await post(f"/console/admin/users/{nina}", 422, action="password", password=typed["tiny"])
    own = {"new_password": typed["own"], "confirm_password": typed["own"]}
    await post("/console/password", 403, current_password=typed["wrong"], **own)
    differ = {"new_password": typed["own"], "confirm_password": typed["differs"]}
    await post("/console/password", 400, current_password=PASSWORD, **differ)
    short = {"new_password": typed["tiny"], "confirm_password": typed["tiny"]}
    await post("/console/password", 422, current_password=PASSWORD, **short)
    await post("/console/password", 303, current_password=PASSWORD, **own)

    events = await audit_events(context)
    assert {e.type for e in events if e.outcome == "failure"} >= {"user.created", "user.updated"}
    for event in events:
        recorded = f"{event.actor} {event.reason}"
        for label, password in typed.items():
            assert password not in recorded, (label, event.type, recorded)


async def context_user(context: AppContext, name: str) -> str:
    async with context.database.sessionmaker() as session:
        found = await session.scalar(select(Principal.id).where(Principal.name == name))
    assert found is not None
    return str(found)


def untied_errors(html: str) -> list[str]:
    """Field error messages no invalid control points at: a screen reader never reads them,
    and the page's script has no field with aria-invalid to bring into focus."""
    tied: set[str] = set()
    for tag in re.findall(r"<(?:input|textarea|select|fieldset)\b[^>]*>", html):
        if 'aria-invalid="true"' in tag:
            described = re.search(r'aria-describedby="([^"]*)"', tag)
            tied.update(described.group(1).split() if described else ())
    shown = re.findall(r'<p class="error" id="([^"]+)">', html)
    return [error_id for error_id in shown if error_id not in tied]


async def test_every_field_error_is_tied_to_its_field(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    alice = await create_principal(context, "alice")
    device = await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")
    # A permission the form did not offer: one removed from the catalog while it was open.
    sent = [
        ("/console/admin/devices", {"name": "d1", "description": "x" * 1001}),
        ("/console/admin/devices", {"name": "d1", "permissions": "gone:scope"}),
        ("/console/admin/users", {"username": "u1", "password": PASSWORD, "permissions": "gone"}),
        (f"/console/admin/users/{alice.id}", {"action": "permissions", "permissions": "gone"}),
        (f"/console/admin/devices/{device.id}", {"action": "permissions", "permissions": "gone"}),
    ]
    for path, data in sent:
        response = await client.post(path, data={"csrf_token": token, **data})
        assert response.status_code == 422, (path, data)
        assert re.search(r'<p class="error" id="[^"]+">', response.text), (path, data)
        assert untied_errors(response.text) == [], (path, data)


async def test_the_audit_page_filters_by_a_day_and_says_when_since_is_no_date(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    async with context.database.sessionmaker() as session:
        old = audit.record(session, type="user.updated", actor="test", reason="from last year")
        audit.record(session, type="user.updated", actor="test", reason="from today")
        await session.flush()
        old.at = datetime(2025, 3, 1, 12, tzinfo=UTC)
        await session.commit()
    await signed_in(client, "root")
    today = utcnow().date().isoformat()
    recent = await client.get("/console/admin/audit", params={"since": today})
    assert recent.status_code == 200
    assert "from today" in recent.text and "from last year" not in recent.text
    assert field_error(recent.text, "since") is None
    # The day starts at midnight UTC: an event of that day is in.
    that_day = await client.get("/console/admin/audit", params={"since": "2025-03-01"})
    assert "from today" in that_day.text and "from last year" in that_day.text
    # No such day: said under the field, which keeps what was typed; nothing filtered by it.
    for typed in ("2025-02-30", "last week", "01/03/2025"):
        refused = await client.get("/console/admin/audit", params={"since": typed})
        assert refused.status_code == 422, typed
        assert field_error(refused.text, "since") == "Enter a date such as 2026-11-01.", typed
        assert f'value="{typed}"' in unescape(refused.text), typed
        assert "from today" in refused.text and "from last year" in refused.text, typed


async def test_a_name_taken_is_said_under_the_name_field_of_the_user_and_device_forms(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    await create_principal(context, "Alice")
    await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")
    for path, field, data, said in [
        (
            "/console/admin/users",
            "username",
            {"username": "alice", "password": PASSWORD},
            "The username 'alice' is taken (as 'Alice': names are the same whatever their "
            "letter case).",
        ),
        (
            "/console/admin/devices",
            "name",
            {"name": "sensor-1", "description": "spare"},
            "A device named 'sensor-1' already exists.",
        ),
    ]:
        refused = await client.post(path, data={"csrf_token": token, **data})
        assert refused.status_code == 422, (path, refused.text)
        assert field_error(refused.text, field) == said, path
        assert untied_errors(refused.text) == [], path
        assert PASSWORD not in refused.text
    async with context.database.sessionmaker() as session:
        names = (await session.scalars(select(Principal.name))).all()
    assert sorted(names) == ["Alice", "root", "sensor-1"]
