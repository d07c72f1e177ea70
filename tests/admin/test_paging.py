"""Admin lists (all keys, users, devices) paged by `limit` and an opaque keyset cursor.

Without `limit` each list answers every item, as API.md v1 has it, plus `next_cursor: null`.
"""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from keyservice.api_keys import service as keys_service
from keyservice.audit.service import encode_cursor as audit_cursor
from keyservice.database import utcnow
from keyservice.devices import service as devices_service
from keyservice.paging import encode
from keyservice.principals.models import Principal
from keyservice.users import service as users_service
from tests.admin.support import (
    admin_request,
    admin_token,
    create_device,
    create_device_key,
    set_key_fields,
)
from tests.auth.test_revocation_plans import KEYS, Captured, _plans, _seed
from tests.factories import create_key, user_token

LISTS = ["/admin/api-keys", "/admin/users", "/admin/devices"]


async def _get(client, admin, path, **params):
    response = await admin_request(client, admin, "GET", path, 200, params=params)
    return response.json()


async def _walk(client, admin, path, limit=2, between=None, **params):
    """Every page of a list; `between(page_number, ids_so_far)` runs after each page but
    the last."""
    ids, pages, cursor = [], 0, None
    while True:
        query = {**params, "limit": limit} | ({"cursor": cursor} if cursor else {})
        body = await _get(client, admin, path, **query)
        assert set(body) == {"items", "next_cursor"}
        assert 1 <= len(body["items"]) <= limit or (pages == 0 and not body["items"])
        ids += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages
        if between is not None:
            await between(pages, ids)


async def _seed_keys(client, context, admin):
    """Keys of 3 devices and 2 users, 3 of them created in the very same microsecond."""
    devices = [await create_device(client, admin, f"dev-{n}") for n in range(3)]
    keys = [
        await create_device_key(client, admin, d["id"], name=f"k{n}")
        for n, d in enumerate(devices * 2)
    ]
    for name in ("ann", "bob"):
        token = await user_token(context, client, name)
        keys += [await create_key(client, token, name=f"{name} {n}") for n in range(2)]
    same = utcnow() - timedelta(days=1)
    for key in keys[1:4]:  # a tie on created_at: the id decides
        await set_key_fields(context, key["id"], created_at=same)
    return devices, keys


async def test_unpaged_lists_answer_everything_with_a_null_cursor(client, context):
    admin = await admin_token(context, client)
    await _seed_keys(client, context, admin)
    for path in LISTS:
        body = await _get(client, admin, path)
        assert set(body) == {"items", "next_cursor"} and body["next_cursor"] is None
        assert (
            len(body["items"])
            == {"/admin/api-keys": 10, "/admin/users": 3, "/admin/devices": 3}[path]
        )
    keys = (await _get(client, admin, "/admin/api-keys"))["items"]
    stamps = [key["created_at"] for key in keys]
    assert stamps == sorted(stamps, reverse=True)  # still newest first
    names = [u["username"] for u in (await _get(client, admin, "/admin/users"))["items"]]
    assert names == sorted(names)


@pytest.mark.parametrize(
    "path,filters",
    [
        ("/admin/api-keys", {}),
        ("/admin/api-keys", {"owner_type": "device"}),
        ("/admin/api-keys", {"owner_type": "user", "status": "valid"}),
        ("/admin/api-keys", {"status": "revoked"}),
        ("/admin/api-keys", {"owner_id": "OWNER"}),
        ("/admin/users", {}),
        ("/admin/devices", {}),
    ],
)
async def test_pages_of_two_hold_every_item_once_in_list_order(client, context, path, filters):
    admin = await admin_token(context, client)
    devices, keys = await _seed_keys(client, context, admin)
    for key in keys[::3]:
        await admin_request(client, admin, "DELETE", f"/admin/api-keys/{key['id']}", 204)
    filters = {k: devices[0]["id"] if v == "OWNER" else v for k, v in filters.items()}
    unpaged = [item["id"] for item in (await _get(client, admin, path, **filters))["items"]]
    assert len(unpaged) >= 2, unpaged  # more than one page each time

    paged, pages = await _walk(client, admin, path, **filters)
    assert paged == unpaged
    assert pages == (len(unpaged) + 1) // 2
    # A page size that divides the list exactly still ends with a null cursor, no empty page.
    paged, pages = await _walk(client, admin, path, limit=len(unpaged), **filters)
    assert paged == unpaged and pages == 1


async def test_keys_created_or_revoked_between_pages_do_not_shift_the_others(client, context):
    admin = await admin_token(context, client)
    devices, keys = await _seed_keys(client, context, admin)
    before = [k["id"] for k in (await _get(client, admin, "/admin/api-keys"))["items"]]
    created, revoked = [], []

    async def churn(page, _seen):
        # A new key (newest: before the cursor), and a key of a later page revoked.
        device = devices[page % 3]["id"]
        created.append((await create_device_key(client, admin, device))["id"])
        victim = before[page * 2 + 1]
        revoked.append(victim)
        await admin_request(client, admin, "DELETE", f"/admin/api-keys/{victim}", 204)

    paged, _pages = await _walk(client, admin, "/admin/api-keys", between=churn)
    assert paged == before  # revoked keys stay listed (as revoked), new ones come first
    assert not set(created) & set(paged)

    # Filtered on valid keys: the ones revoked meanwhile drop out, no other is skipped.
    valid = [
        k["id"] for k in (await _get(client, admin, "/admin/api-keys", status="valid"))["items"]
    ]
    gone = []

    async def revoke_next(_page, seen):
        victim = valid[valid.index(seen[-1]) + 1]  # the first item of the next page
        gone.append(victim)
        await admin_request(client, admin, "DELETE", f"/admin/api-keys/{victim}", 204)

    paged, _pages = await _walk(
        client, admin, "/admin/api-keys", between=revoke_next, status="valid"
    )
    assert paged == [key for key in valid if key not in gone]


async def test_devices_created_or_deleted_between_pages(client, context):
    admin = await admin_token(context, client)
    for name in "bdfhj":
        await create_device(client, admin, name)
    before = [d["id"] for d in (await _get(client, admin, "/admin/devices"))["items"]]
    new = {}

    async def churn(page, _seen):
        if page == 1:  # "a" sorts before the cursor, "z" after it; "f" is deleted
            for name in ("a", "z"):
                new[name] = (await create_device(client, admin, name))["id"]
            await admin_request(client, admin, "DELETE", f"/admin/devices/{before[2]}", 204)

    paged, _pages = await _walk(client, admin, "/admin/devices", between=churn)
    assert paged == [before[0], before[1], before[3], before[4], new["z"]]


async def test_limit_is_clamped_to_500(client, context):
    admin = await admin_token(context, client)
    async with context.database.sessionmaker() as session:
        session.add_all(
            Principal(kind="device", name=f"d{n:04}", permissions=[]) for n in range(503)
        )
        await session.commit()
    first = await _get(client, admin, "/admin/devices", limit=1000)
    assert len(first["items"]) == 500 and first["next_cursor"] is not None
    rest = await _get(client, admin, "/admin/devices", limit=1000, cursor=first["next_cursor"])
    assert [d["name"] for d in rest["items"]] == ["d0500", "d0501", "d0502"]
    assert rest["next_cursor"] is None
    assert len((await _get(client, admin, "/admin/devices"))["items"]) == 503


def _raw(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_bad_limits_and_cursors_are_refused_in_words(client, context):
    admin = await admin_token(context, client)
    await _seed_keys(client, context, admin)
    cursors = {path: (await _get(client, admin, path, limit=1))["next_cursor"] for path in LISTS}
    assert all(cursors.values())
    at = utcnow().isoformat()
    for path in LISTS:
        foreign = [c for p, c in cursors.items() if p != path] + [audit_cursor(5)]
        bad = [
            "garbled!!",
            "\u00e9t\u00e9",
            _raw("offset:10"),
            _raw("api-keys:not json"),
            _raw('api-keys:{"a":1}'),
            _raw(f'api-keys:["{at}"]'),
            _raw(f'api-keys:["{at}","{"x" * 37}"]'),
            _raw('api-keys:["yesterday","abc"]'),
            _raw('api-keys:["2026-12-06T10:00:00","abc"]'),  # no offset
            # in their own offset only: in UTC, before year 1 and after 9999
            _raw('api-keys:["0001-01-01T00:00:00+14:00","abc"]'),
            _raw('api-keys:["9999-12-31T23:59:59-14:00","abc"]'),
            _raw('users:["ann",7]'),
            _raw('devices:["","abc"]'),
            _raw('devices:["a\\u0000","abc"]'),
            *foreign,
        ]
        for cursor in bad:
            response = await admin_request(
                client, admin, "GET", path, 422, params={"limit": 2, "cursor": cursor}
            )
            body = response.json()
            assert body["error"] == "validation_error", (path, cursor)
            assert "cursor is not one this service returned" in body["error_description"]
        for params in ({"limit": 0}, {"limit": -1}, {"limit": "many"}, {"cursor": "x" * 1001}):
            response = await admin_request(client, admin, "GET", path, 422, params=params)
            assert response.json()["error"] == "validation_error", (path, params)
    # A list's own cursor of the right shape is taken, even one made by hand.
    made = encode("api-keys", (utcnow() + timedelta(days=1)).isoformat(), "0")
    body = await _get(client, admin, "/admin/api-keys", limit=500, cursor=made)
    assert len(body["items"]) == 10


def test_cursor_encoding_is_json_in_base64url():
    cursor = encode("users", "ann", "id-1")
    assert "=" not in cursor
    assert base64.urlsafe_b64decode(cursor + "==").decode() == 'users:["ann","id-1"]'


@pytest.mark.postgresql_only
async def test_a_page_of_keys_is_an_index_range_not_a_sort_of_every_key(context):
    # Every seeded key shares one created_at: the worst case for the tie on id.
    await _seed(context)
    async with context.database.sessionmaker() as session:
        first, cursor = await keys_service.list_all(context, session, limit=100)
        assert len(first) == 100 and cursor is not None
        with Captured(context) as captured:
            second, _next = await keys_service.list_all(context, session, limit=100, cursor=cursor)
    assert len(second) == 100 and not {k.id for k in first} & {k.id for k in second}
    statements = [(s, scans) for s, scans in await _plans(context, captured)]
    assert len(statements) == 1 and KEYS > 10_000
    statement, scans = statements[0]
    assert "ix_api_key_created_at_id" in {index for _node, _table, index in scans}, scans
    assert ("Seq Scan", "api_key", None) not in scans, (statement, scans)


@pytest.mark.postgresql_only
@pytest.mark.parametrize("page", [users_service.page_users, devices_service.page_devices])
async def test_a_page_of_users_or_devices_reads_the_live_name_index(context, page):
    await _seed(context)
    async with context.database.sessionmaker() as session:
        first, cursor = await page(session, limit=100)
        with Captured(context) as captured:
            second, _next = await page(session, limit=100, cursor=cursor)
    assert len(first) == len(second) == 100 and first[-1].name < second[0].name
    [(statement, scans)] = await _plans(context, captured)
    assert ("Index Scan", "principal", "uq_principal_kind_name_live") in scans, scans
    assert all(node != "Seq Scan" for node, _table, _index in scans), (statement, scans)
