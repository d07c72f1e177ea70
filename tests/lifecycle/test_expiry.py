"""Key expiry: default and maximum, expires_soon, /me warnings, the Sunset header."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest

from keyservice.database import utcnow
from tests.admin.support import set_key_fields
from tests.factories import bearer, create_key, exchange, user_token


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_default_and_maximum_expiry(client, context):
    token = await user_token(context, client, "quinn")
    before = utcnow()
    default = await create_key(client, token, name="default")
    assert abs(_at(default["expires_at"]) - (before + timedelta(days=90))) < timedelta(minutes=1)

    almost_max = utcnow() + timedelta(days=365) - timedelta(minutes=1)
    key = await create_key(client, token, name="max", expires_at=_iso(almost_max))
    assert abs(_at(key["expires_at"]) - almost_max) < timedelta(seconds=1)

    for bad in (utcnow() + timedelta(days=366), utcnow() - timedelta(minutes=1)):
        refused = await create_key(client, token, expect=422, name="bad", expires_at=_iso(bad))
        assert "at most 365 days" in refused["error_description"]
        assert "between now and" in refused["error_description"]
    naive = (utcnow() + timedelta(days=1)).replace(tzinfo=None).isoformat()
    await create_key(client, token, expect=422, name="naive", expires_at=naive)


@pytest.mark.parametrize(
    "settings_overrides", [{"key_default_ttl_days": 30, "key_max_ttl_days": 60}]
)
async def test_expiry_bounds_come_from_settings(client, context):
    token = await user_token(context, client, "rosa")
    key = await create_key(client, token, name="default")
    assert abs(_at(key["expires_at"]) - (utcnow() + timedelta(days=30))) < timedelta(minutes=1)
    refused = await create_key(
        client, token, expect=422, name="far", expires_at=_iso(utcnow() + timedelta(days=61))
    )
    assert "at most 60 days" in refused["error_description"]


async def test_expires_soon_and_me_warnings(client, context):
    token = await user_token(context, client, "sam")
    soon = await create_key(
        client, token, name="soon", expires_at=_iso(utcnow() + timedelta(days=3))
    )
    later = await create_key(
        client, token, name="later", expires_at=_iso(utcnow() + timedelta(days=30))
    )
    gone = await create_key(
        client, token, name="gone", expires_at=_iso(utcnow() + timedelta(days=2))
    )
    revoked = await create_key(
        client, token, name="revoked", expires_at=_iso(utcnow() + timedelta(days=1))
    )
    await set_key_fields(context, gone["id"], expires_at=utcnow() - timedelta(hours=1))
    assert (
        await client.delete(f"/api-keys/{revoked['id']}", headers=bearer(token))
    ).status_code == 204

    listed = {
        item["name"]: item
        for item in (await client.get("/api-keys", headers=bearer(token))).json()["items"]
    }
    assert set(listed) == {"soon", "later", "gone"}
    assert listed["soon"]["expires_soon"] is True and listed["soon"]["status"] == "valid"
    assert listed["later"]["expires_soon"] is False
    assert listed["gone"]["status"] == "expired" and listed["gone"]["expires_soon"] is False

    me = (await client.get("/me", headers=bearer(token))).json()
    warnings = {warning["name"]: warning for warning in me["warnings"]}
    assert set(warnings) == {"soon", "gone"}
    assert warnings["soon"]["key_id"] == soon["id"]
    assert warnings["soon"]["client_id"] == soon["client_id"]
    assert _at(warnings["soon"]["expires_at"]) == _at(soon["expires_at"])
    assert warnings["soon"]["status"] == "expires_soon"
    assert warnings["gone"]["status"] == "expired"
    assert later["id"] not in str(me)


async def test_sunset_header_for_keys_expiring_within_7_days(client, context):
    token = await user_token(context, client, "tara")
    soon = await create_key(
        client, token, name="soon", expires_at=_iso(utcnow() + timedelta(days=6, hours=23))
    )
    later = await create_key(
        client, token, name="later", expires_at=_iso(utcnow() + timedelta(days=8))
    )
    response = await exchange(client, soon["api_key"])
    assert response.status_code == 200
    sunset = parsedate_to_datetime(response.headers["sunset"])
    assert abs(sunset - _at(soon["expires_at"])) < timedelta(seconds=1)
    assert response.headers["sunset"].endswith("GMT")

    refreshed = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": response.json()["refresh_token"]},
    )
    assert refreshed.status_code == 200 and "sunset" in refreshed.headers

    response = await exchange(client, later["api_key"])
    assert response.status_code == 200
    assert "sunset" not in response.headers
