"""Admins creating one user, device or scope name at once: one 201, the rest 409, never 500."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from tests.admin.support import admin_token, until_waiting
from tests.factories import bearer


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/users", {"username": "twin", "password": "a-long-password", "permissions": []}),
        ("/admin/devices", {"name": "twin", "permissions": []}),
        ("/admin/scopes", {"name": "twin:read", "description": "twins"}),
    ],
)
async def test_concurrent_creates_of_one_name(client, context, path, body):
    admin = await admin_token(context, client)
    responses = await asyncio.gather(
        *(client.post(path, json=body, headers=bearer(admin)) for _ in range(6))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 5, [r.text for r in responses]
    name = body.get("username") or body["name"]
    refusals = [r.json()["error_description"] for r in responses if r.status_code == 409]
    assert all(f"'{name}'" in refusal for refusal in refusals), refusals
    listed = (await client.get(path, headers=bearer(admin))).json()["items"]
    assert [item.get("username") or item.get("name") for item in listed].count(name) == 1


async def test_concurrent_creates_of_scope_names_differing_in_case(client, context, backend):
    # The look-alike check reads, then inserts: on PostgreSQL case variants created at once
    # all passed it, and the catalog held `Twin:Read` beside `twin:read`. The unique index
    # on lower(name) lets one in; the others hear the check's 409. To make the race certain,
    # a transaction holds the catalog against writes (SHARE: reads go on) until every create
    # has read and waits to insert. SQLite's write lock serialises the creates: no race.
    admin = await admin_token(context, client)
    variants = ["twin:read", "Twin:Read", "TWIN:READ", "twin:READ", "Twin:read", "tWIN:rEAD"]
    async with context.database.sessionmaker() as blocker:
        if backend == "postgresql":
            await blocker.execute(text("LOCK TABLE scope IN SHARE MODE"))
        creates = asyncio.gather(
            *(
                client.post("/admin/scopes", json={"name": name}, headers=bearer(admin))
                for name in variants
            )
        )
        if backend == "postgresql":
            await until_waiting(context, len(variants))  # each read, and waits to insert
            await blocker.commit()
        responses = await creates
    statuses = [r.status_code for r in responses]
    assert sorted(statuses) == [201] + [409] * 5, [r.text for r in responses]
    winner = variants[statuses.index(201)]
    listed = (await client.get("/admin/scopes", headers=bearer(admin))).json()["items"]
    assert [item["name"] for item in listed if item["name"].lower() == "twin:read"] == [winner]
    for name, response in zip(variants, responses, strict=True):
        if name == winner:
            continue
        # The losers of the race hear what the check says to a create made afterwards.
        again = await client.post("/admin/scopes", json={"name": name}, headers=bearer(admin))
        assert again.status_code == 409
        said = again.json()["error_description"]
        assert f"existing scope '{winner}' only in letter case" in said, said
        assert response.json()["error_description"] == said
