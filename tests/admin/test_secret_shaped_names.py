"""Admin API: a credential pasted as a name or description is refused, not listed to all."""

from __future__ import annotations

from keyservice.audit.service import without_secrets
from tests.admin.support import admin_request, admin_token, create_device, create_device_key
from tests.factories import audit_events, create_key, login, user_token

LOOKS_LIKE_A_SECRET = (
    "looks like a secret (an API key, client secret, refresh token or access token): "
    "names and descriptions are shown to others, so keep secrets out of them"
)


async def test_a_secret_as_a_name_or_description_is_refused_everywhere(client, context):
    admin = await admin_token(context, client)
    owner = await user_token(context, client, "paula")
    key = await create_key(client, owner, name="ci")
    session = await login(client, "paula")
    device = await create_device(client, admin, "edge-1")
    device_key = await create_device_key(client, admin, device["id"], name="dk")
    devices = f"/admin/devices/{device['id']}"
    catalog = (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json()
    # (method, path, body without the field, the field) for every name and description.
    writes = [
        ("POST", "/admin/devices", {}, "name"),
        ("POST", "/admin/devices", {"name": "d2"}, "description"),
        ("PATCH", devices, {}, "description"),
        ("POST", f"{devices}/api-keys", {}, "name"),
        ("POST", f"{devices}/api-keys", {"name": "k"}, "description"),
        ("PATCH", f"{devices}/api-keys/{device_key['id']}", {}, "name"),
        ("PATCH", f"{devices}/api-keys/{device_key['id']}", {}, "description"),
        ("POST", "/admin/users", {"password": "a long password"}, "username"),
        ("POST", "/admin/scopes", {}, "name"),
        ("POST", "/admin/scopes", {"name": "projects:read"}, "description"),
        ("PATCH", "/admin/scopes/api_keys:manage", {}, "description"),
    ]
    for secret in (key["api_key"], key["client_secret"], session["refresh_token"]):
        for method, path, body, field in writes:
            response = await admin_request(
                client, admin, method, path, 422, json={**body, field: secret}
            )
            answer = response.json()
            assert answer["error_description"] == f"{field}: {LOOKS_LIKE_A_SECRET}", path
            assert answer["details"][0]["type"] == "looks_like_secret"
            assert secret[8:40] not in response.text
    # Nothing was made or changed.
    listed = (await admin_request(client, admin, "GET", "/admin/devices", 200)).json()
    assert [(d["name"], d["description"]) for d in listed["items"]] == [("edge-1", "")]
    keys = (await admin_request(client, admin, "GET", "/admin/api-keys", 200)).json()["items"]
    assert sorted((k["name"], k["description"]) for k in keys) == [("ci", ""), ("dk", "")]
    users = (await admin_request(client, admin, "GET", "/admin/users", 200)).json()["items"]
    assert sorted(u["username"] for u in users) == ["paula", "root"]
    assert (await admin_request(client, admin, "GET", "/admin/scopes", 200)).json() == catalog
    for kind in ("device.updated", "api_key.updated", "scope.updated", "user.created"):
        assert await audit_events(context, kind, outcome="success") == [], kind


async def test_a_digest_in_a_description_is_no_secret(client, context):
    # A CI key pinned to a commit, a device to a firmware image: hexadecimal digests are
    # public, and none of our secrets (base62) is one.
    admin = await admin_token(context, client)
    commit = "9fceb02d0ae598e95dc970b74767f19372d61af8"
    firmware = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
    description = f"build {commit}, firmware sha256:{firmware}"
    device = (
        await admin_request(
            client, admin, "POST", "/admin/devices", 201,
            json={"name": "edge-9", "description": description},
        )
    ).json()  # fmt: skip
    assert device["description"] == description
    key = await create_device_key(client, admin, device["id"], description=f"for {commit}")
    assert key["description"] == f"for {commit}"
    assert without_secrets(f"reason: {description}") == f"reason: {description}"
    mixed = commit[:20] + "Zq" + commit[20:]  # not one case of hex digits: a secret's shape
    assert without_secrets(mixed) != mixed
