"""Admin API: the scope catalog."""

from __future__ import annotations

from tests.admin.support import admin_request, admin_token, events


async def test_list_and_create_scopes(client, context):
    admin = await admin_token(context, client)
    listed = (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json()["items"]
    builtins = {item["name"]: item for item in listed if item["builtin"]}
    assert set(builtins) == {"admin", "api_keys:manage", "introspect"}

    created = await admin_request(
        client,
        admin,
        "POST",
        "/admin/scopes",
        201,
        json={"name": "billing:write", "description": "Change invoices"},
    )
    assert created.json()["name"] == "billing:write"
    assert created.json()["description"] == "Change invoices"
    assert created.json()["builtin"] is False

    names = [
        item["name"]
        for item in (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json()[
            "items"
        ]
    ]
    assert "billing:write" in names and names == sorted(names)
    [event] = await events(context, "scope.created")
    assert event.reason == "scope billing:write"

    # The new scope can be granted right away.
    await admin_request(
        client,
        admin,
        "POST",
        "/admin/users",
        201,
        json={
            "username": "jo",
            "password": "long enough password",
            "permissions": ["billing:write"],
        },
    )


async def test_scope_refusals(client, context):
    admin = await admin_token(context, client)
    for name in ("billing:read", "admin", "introspect"):
        if name == "billing:read":
            await admin_request(client, admin, "POST", "/admin/scopes", 201, json={"name": name})
        response = await admin_request(
            client, admin, "POST", "/admin/scopes", 409, json={"name": name}
        )
        assert name in response.json()["error_description"]
    for bad in ("", "has space", "a" * 101, 'quote"d'):
        await admin_request(client, admin, "POST", "/admin/scopes", 422, json={"name": bad})
