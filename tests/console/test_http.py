"""The console over plain HTTP (no browser): CSRF, cookies, headers, throttling, audit."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, timedelta
from html import unescape
from typing import Any

import httpx
import pytest

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit_service
from keyservice.console.forms import expiry_limits
from keyservice.console.models import ConsoleSpent
from keyservice.console.pages import CSP
from keyservice.console.session import ConsoleSession, SessionCodec
from keyservice.context import AppContext
from keyservice.database import utcnow
from tests.conftest import client_for
from tests.console.conftest import csrf_of, seal_payload
from tests.factories import PASSWORD, audit_events, create_principal


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"throttle_client_failures": 3}


async def signed_in(client: httpx.AsyncClient, username: str) -> str:
    """Sign in through the form; return the CSRF token of the signed-in session."""
    page = await client.get("/console/login")
    response = await client.post(
        "/console/login",
        data={"username": username, "password": PASSWORD, "csrf_token": csrf_of(page.text)},
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/keys"
    keys = await client.get("/console/keys")
    assert keys.status_code == 200
    return csrf_of(keys.text)


async def test_headers_and_cookie(client: httpx.AsyncClient) -> None:
    response = await client.get("/console/login")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert "<script>" not in response.text and " on" + "click=" not in response.text

    css = await client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    js = await client.get("/console/static/console.js")
    assert js.headers["content-type"].startswith("text/javascript")
    for bad in ("/console/static/..%2Fsession.py", "/console/static/router.py"):
        assert (await client.get(bad)).status_code == 404


async def test_answers_under_console_no_handler_gave_carry_the_headers(
    client: httpx.AsyncClient,
) -> None:
    """Starlette's 405 and the edge's refusals come before any console handler: they carry
    X-Frame-Options and Referrer-Policy too, once, and console pages keep their own."""
    for response in (
        await client.put("/console/keys"),
        await client.post("/console/login", content=b"x" * (1024 * 1024 + 1)),
        await client.get("/console/login"),
    ):
        assert response.status_code in (200, 405, 413), response.status_code
        assert response.headers.get_list("x-frame-options") == ["DENY"], response.status_code
        assert response.headers.get_list("referrer-policy") == ["no-referrer"]


async def test_cookie_is_secure_over_https(app: Any) -> None:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://keyservice.test") as c:
        response = await c.get("/console/login")
    assert "secure" in response.headers["set-cookie"].lower()


@pytest.mark.parametrize("settings_overrides", [{"issuer": "HTTPS://keys.example.com"}])
async def test_cookie_is_secure_behind_a_tls_proxy(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """The proxy ends TLS and speaks plain HTTP to us: the https issuer (the URL people
    use) makes the cookie Secure, at every write (the anonymous session, the sign-in)."""
    await create_principal(context, "alice")
    page = await client.get("/console/login")
    anonymous = page.headers["set-cookie"]
    assert "; secure" in anonymous.lower()
    # httpx keeps a Secure cookie back over http, as a browser would: send it by hand.
    cookie = anonymous.split(";", 1)[0]
    response = await client.post(
        "/console/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(page.text)},
        headers={"Cookie": cookie},
    )
    assert response.status_code == 303, response.text
    assert "; secure" in response.headers["set-cookie"].lower()


async def test_csrf_refusals(client: httpx.AsyncClient, context: AppContext, app: Any) -> None:
    await create_principal(context, "alice")
    form = {"username": "alice", "password": PASSWORD}
    # Sign-in itself needs the token of the visitor's session.
    login_page = await client.get("/console/login")
    for token in (None, "forged"):
        data = form if token is None else {**form, "csrf_token": token}
        refused = await client.post("/console/login", data=data)
        assert refused.status_code == 403
        assert "Form refused" in refused.text
        assert refused.headers["content-type"].startswith("text/html")
    anonymous_token = csrf_of(login_page.text)

    token = await signed_in(client, "alice")
    assert token != anonymous_token  # a new session (and token) at sign-in
    key_form = {"name": "k", "expires_on": "", "allowed_ips": ""}
    for sent in (
        key_form,
        {**key_form, "csrf_token": "wrong"},
        {**key_form, "csrf_token": anonymous_token},
    ):
        refused = await client.post("/console/keys", data=sent)
        assert refused.status_code == 403, refused.text
    assert "No API keys" not in (await client.get("/console/keys")).text
    assert "You have no API keys yet." in (await client.get("/console/keys")).text

    # A token from another person's session is refused as well.
    await create_principal(context, "mallory")
    async with client_for(app) as other:
        mallory_token = await signed_in(other, "mallory")
    refused = await client.post("/console/keys", data={**key_form, "csrf_token": mallory_token})
    assert refused.status_code == 403

    created = await client.post("/console/keys", data={**key_form, "csrf_token": token})
    assert created.status_code == 200
    assert created.headers["cache-control"] == "no-store"
    assert 'id="api-key"' in created.text

    # Sign-out is a CSRF-checked POST too.
    assert (await client.post("/console/logout", data={})).status_code == 403
    out = await client.post("/console/logout", data={"csrf_token": token})
    assert out.status_code == 303
    assert (await client.get("/console/keys")).headers.get("location") == "/console/login"


async def test_forged_or_foreign_cookie_is_not_a_session(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "alice")
    await signed_in(client, "alice")
    value = client.cookies["keyservice_console"]
    tampered = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
    client.cookies.set("keyservice_console", tampered, domain="keyservice.test", path="/console")
    response = await client.get("/console/keys")
    assert response.status_code == 303 and response.headers["location"] == "/console/login"


async def test_disabled_user_is_signed_out_at_next_request(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    alice = await create_principal(context, "alice")
    await signed_in(client, "alice")
    async with context.database.sessionmaker() as session:
        from keyservice.principals.models import Principal

        principal = await session.get(Principal, alice.id)
        assert principal is not None
        principal.disabled = True
        await session.commit()
    response = await client.get("/console/keys")
    assert response.status_code == 303 and response.headers["location"] == "/console/login"


async def _update_user(context: AppContext, user_id: str, **changes: Any) -> None:
    """Change a user as the admin API does (users.update), outside the console."""
    from keyservice.users import service as users

    async with context.database.sessionmaker() as session:
        await users.update(session, context, user_id=user_id, actor="test", ip=None, **changes)


async def test_a_new_password_ends_sessions_signed_in_with_the_old_one(
    client: httpx.AsyncClient, context: AppContext, app: Any
) -> None:
    # A reset after a leak must shut out whoever signed in with the leaked password, in the
    # console as for the password grant's refresh tokens; other changes keep the session.
    alice = await create_principal(context, "alice", permissions=["api_keys:manage"])
    await signed_in(client, "alice")
    await _update_user(context, alice.id, permissions=["api_keys:manage", "introspect"])
    assert (await client.get("/console/keys")).status_code == 200

    await _update_user(context, alice.id, password="a brand new password")
    response = await client.get("/console/keys")
    assert response.status_code == 303 and response.headers["location"] == "/console/login"
    assert "keyservice_console" not in client.cookies  # the stale cookie is deleted
    assert (await client.get("/console/keys")).status_code == 303

    page = await client.get("/console/login")
    login = await client.post(
        "/console/login",
        data={
            "username": "alice",
            "password": "a brand new password",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert login.status_code == 303
    assert (await client.get("/console/keys")).status_code == 200

    # Setting the same password again still makes a new hash (a new salt): it ends them too.
    await _update_user(context, alice.id, password="a brand new password")
    assert (await client.get("/console/keys")).status_code == 303


async def test_a_session_signed_in_before_a_disable_stays_over_after_re_enable(
    client: httpx.AsyncClient, context: AppContext, app: Any
) -> None:
    from tests.admin.support import past_revoked_second, refresh
    from tests.factories import login

    await create_principal(context, "root", permissions=["admin"])
    alice = await create_principal(context, "alice", permissions=["api_keys:manage"])
    await signed_in(client, "alice")
    grant = await login(client, "alice")
    async with client_for(app) as admin:
        token = await signed_in(admin, "root")
        for value in ("true", "false"):
            changed = await admin.post(
                f"/console/admin/users/{alice.id}",
                data={"csrf_token": token, "action": "state", "disabled": value},
            )
            assert changed.status_code == 303, changed.text
    response = await client.get("/console/keys")
    assert response.status_code == 303 and response.headers["location"] == "/console/login"
    refused = await refresh(client, grant["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    # Signing in again (a second after the disable's: principals/models.py) works.
    await past_revoked_second(context, alice.id)
    await signed_in(client, "alice")


async def test_signing_in_right_after_a_quick_re_enable_works(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """Disabled and re-enabled within one second, a user signing in at once got a session
    refused on its first page, for good: the disable revokes its whole second (principals/
    models.py) and the session's sign-in time is whole seconds. Sign-in waits for the next
    second then, as the token endpoint's issuing does (auth.service.past_revocation)."""
    from keyservice.principals.models import Principal, revoked_through
    from tests.admin.support import admin_request, admin_token

    root = await admin_token(context, client)
    alice = await create_principal(context, "alice", permissions=["api_keys:manage"])
    for _ in range(5):  # a slow machine may cross into the next second: try again then
        client.cookies.clear()  # signed out: a new sign-in
        form = await client.get("/console/login")
        while time.time() % 1 > 0.05:  # the start of a second: what follows stays in it
            await asyncio.sleep(0.01)
        for value in (True, False):
            path = f"/admin/users/{alice.id}"
            await admin_request(client, root, "PATCH", path, 200, json={"disabled": value})
        started = time.time()
        response = await client.post(
            "/console/login",
            data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        )
        assert response.status_code == 303, response.text
        async with context.database.sessionmaker() as session:
            disabled_at = (await session.get(Principal, alice.id)).tokens_revoked_at
        if started < revoked_through(disabled_at) + 1:
            break  # signed in within the disable's second
    else:
        pytest.fail("never signed in within the second of the disable")
    keys = await client.get("/console/keys")
    assert keys.status_code == 200, keys.headers.get("location")


async def test_an_admin_resetting_their_own_password_stays_signed_in_here_only(
    client: httpx.AsyncClient, context: AppContext, app: Any
) -> None:
    root = await create_principal(context, "root", permissions=["admin"])
    token = await signed_in(client, "root")
    async with client_for(app) as elsewhere:
        await signed_in(elsewhere, "root")
        reset = await client.post(
            f"/console/admin/users/{root.id}",
            data={"csrf_token": token, "action": "password", "password": "a new long password"},
        )
        assert reset.status_code == 303
        assert (await client.get(reset.headers["location"])).status_code == 200
        gone = await elsewhere.get("/console/keys")
        assert gone.status_code == 303 and gone.headers["location"] == "/console/login"
    # The session that made the change goes on, CSRF token and all.
    again = await client.post(
        f"/console/admin/users/{root.id}",
        data={"csrf_token": token, "action": "permissions", "permissions": ["admin"]},
    )
    assert again.status_code == 303


async def test_sign_in_with_a_field_left_empty_asks_for_both_and_counts_no_failure(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "alice")
    token = csrf_of((await client.get("/console/login")).text)
    for username, password in (("alice", ""), ("", PASSWORD), ("   ", PASSWORD), ("", "")):
        refused = await client.post(
            "/console/login",
            data={"username": username, "password": password, "csrf_token": token},
        )
        assert refused.status_code == 400, (username, password)
        assert (
            '<p class="banner error" role="alert" id="login-error">'
            "Enter your username and password.</p>"
        ) in refused.text
        assert PASSWORD not in refused.text
    # Nothing was tried: no failed sign-in recorded, and the next one is not throttled.
    assert [e for e in await audit_events(context) if e.type == "login"] == []
    signed = await client.post(
        "/console/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token}
    )
    assert signed.status_code == 303


async def test_sign_in_is_throttled_and_audited(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "alice")
    token = csrf_of((await client.get("/console/login")).text)
    for _ in range(3):
        wrong = await client.post(
            "/console/login",
            data={"username": "alice", "password": "nope", "csrf_token": token},
        )
        assert wrong.status_code == 400
        assert "Wrong username or password" in wrong.text
        assert "nope" not in wrong.text
    throttled = await client.post(
        "/console/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token}
    )
    assert throttled.status_code == 429
    assert "Too many failed sign-ins" in throttled.text
    assert int(throttled.headers["retry-after"]) >= 1

    async with context.database.sessionmaker() as session:
        events, _ = await audit_service.list_events(session, type="login")
    failures = [e for e in events if e.outcome == "failure"]
    assert len(failures) >= 3
    assert all(e.reason for e in failures)


async def test_success_is_audited_and_no_secret_is_logged(
    client: httpx.AsyncClient, context: AppContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    created = await client.post(
        "/console/keys", data={"name": "k", "expires_on": "", "csrf_token": token}
    )
    assert created.status_code == 200
    match = re.search(r'id="api-key"[^>]*>([^<]+)</textarea>', created.text)
    assert match
    api_key = match.group(1)
    assert (
        await client.post("/token", data={"grant_type": "client_credentials", "api_key": api_key})
    ).status_code == 200
    assert api_key not in caplog.text and PASSWORD not in caplog.text
    async with context.database.sessionmaker() as session:
        events, _ = await audit_service.list_events(session, type="login")
    assert any(e.outcome == "success" and e.actor == "user:alice" for e in events)


async def test_non_admin_gets_403_on_admin_pages(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "alice")
    await signed_in(client, "alice")
    for path in ("/console/admin/users", "/console/admin/devices", "/console/admin/audit"):
        response = await client.get(path)
        assert response.status_code == 403
        assert "administrators" in response.text
    keys = await client.get("/console/keys")
    assert "/console/admin/" not in keys.text


async def test_delete_without_javascript_has_a_confirmation_page(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    await client.post("/console/keys", data={"name": "old", "csrf_token": token})
    keys = await client.get("/console/keys")
    key_id = re.search(r'action="/console/keys/([^/"]+)/delete"', keys.text)
    assert key_id
    confirm = await client.get(f"/console/keys/{key_id.group(1)}/delete")
    assert confirm.status_code == 200
    assert "cannot be undone" in confirm.text and ">Delete</button>" in confirm.text
    done = await client.post(f"/console/keys/{key_id.group(1)}/delete", data={"csrf_token": token})
    assert done.status_code == 303
    assert "You have no API keys yet." in (await client.get("/console/keys")).text
    # Someone else's or an unknown key id is a 404 page.
    missing = await client.get(f"/console/keys/{key_id.group(1)}/delete")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    assert (await client.get("/console/no-such-page")).status_code == 404
    for home in ("/console", "/console/"):
        assert (await client.get(home)).headers["location"] == "/console/keys"


async def test_admin_edits_a_user_and_pages_the_audit_log(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    from keyservice.audit.service import record

    root = await create_principal(context, "root", permissions=["admin"])
    bob = await create_principal(context, "bob")
    token = await signed_in(client, "root")
    page = await client.get(f"/console/admin/users/{bob.id}")
    assert page.status_code == 200 and "User bob" in page.text

    changed = await client.post(
        f"/console/admin/users/{bob.id}",
        data={"csrf_token": token, "action": "permissions", "permissions": ["introspect"]},
    )
    assert changed.status_code == 303
    reset = await client.post(
        f"/console/admin/users/{bob.id}",
        data={"csrf_token": token, "action": "password", "password": "a new long password"},
    )
    assert reset.status_code == 303
    assert "The password of bob was reset." in (await client.get(reset.headers["location"])).text
    # A crafted link cannot put a stranger's words into the banner.
    crafted = await client.get(
        "/console/admin/users",
        params={"done": "password-reset", "name": "bob. Sign in again at https://evil.example"},
    )
    assert "The password was reset." in crafted.text and "evil.example" not in crafted.text
    login = await client.post(
        "/token",
        data={"grant_type": "password", "username": "bob", "password": "a new long password"},
    )
    assert login.status_code == 200 and login.json()["scope"] == "introspect"
    too_short = await client.post(
        f"/console/admin/users/{bob.id}",
        data={"csrf_token": token, "action": "password", "password": "short"},
    )
    assert too_short.status_code == 422 and "at least 8 characters" in too_short.text
    # An admin cannot lock themself out.
    itself = await client.post(
        f"/console/admin/users/{root.id}",
        data={"csrf_token": token, "action": "state", "disabled": "true"},
    )
    assert itself.status_code == 409 and "cannot disable your own account" in itself.text

    async with context.database.sessionmaker() as session:
        for n in range(60):
            record(session, type="token.exchange", actor=f"key:k{n:02d}", reason="seeded")
        await session.commit()
    first = await client.get("/console/admin/audit", params={"type": "token.exchange"})
    assert first.status_code == 200
    assert "key:k59" in first.text and "key:k10" in first.text and "key:k09" not in first.text
    older = re.search(r'href="/console/admin/audit\?([^"]+)">Older events', first.text)
    assert older
    second = await client.get("/console/admin/audit?" + older.group(1).replace("&amp;", "&"))
    assert "key:k09" in second.text and "key:k10" not in second.text
    assert "Older events" not in second.text
    bad = await client.get("/console/admin/audit", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422


async def test_the_audit_filter_offers_the_events_the_cli_and_the_server_record(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """The signing-key, prune, migration and secret events (README, "Audit log") are in the
    type list, and filtering on one shows it chosen, not "Any type" above a filtered table."""
    from keyservice.audit.service import record

    await create_principal(context, "root", permissions=["admin"])
    await signed_in(client, "root")
    kinds = (
        "signing_key.created",
        "signing_key.rotated",
        "audit.pruned",
        "schema.migrated",
        "server_secret.switched",
    )
    async with context.database.sessionmaker() as session:
        for kind in kinds:
            record(session, type=kind, actor="cli", reason=f"seeded {kind}")
        await session.commit()
    for kind in kinds:
        page = await client.get("/console/admin/audit", params={"type": kind})
        assert page.status_code == 200
        assert f"seeded {kind}" in page.text
        assert f'<option value="{kind}" selected>' in page.text, kind


def field_error(html: str, name: str) -> str | None:
    """The message shown under one form field, as a person reads it."""
    match = re.search(rf'<p class="error" id="{name}-error">([^<]*)</p>', html)
    return unescape(match.group(1)) if match else None


async def test_form_refusals_are_in_words_and_keep_the_input(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    token = await signed_in(client, "root")

    # Names with a space or an accent: say which characters work, not the regex.
    for path, field in (("/console/admin/users", "username"), ("/console/admin/devices", "name")):
        for name in ("bob smith", "böb"):
            sent = {"csrf_token": token, field: name, "password": "a long password"}
            refused = await client.post(path, data=sent)
            assert refused.status_code == 422
            message = field_error(refused.text, field)
            assert message is not None
            assert message.startswith("May hold only letters, digits and . _ @ + -")
            assert "^[" not in refused.text and "String should" not in refused.text
            assert f'value="{name}"' in unescape(refused.text)
    empty = await client.post("/console/admin/users", data={"csrf_token": token})
    assert field_error(empty.text, "username") == "This field is required."
    assert field_error(empty.text, "password") == "This field is required."

    key = {"csrf_token": token, "name": "ci", "description": "kept"}
    long_name = await client.post("/console/keys", data={**key, "name": "n" * 101})
    assert field_error(long_name.text, "name") == "Use at most 100 characters."
    ips = "\n".join(f"10.0.{n}.0/24" for n in range(101))
    many_ips = await client.post("/console/keys", data={**key, "allowed_ips": ips})
    assert field_error(many_ips.text, "allowed_ips") == "Give at most 100 entries."

    # A day outside the ones offered names them, in the form's terms (not `expires_at`).
    limits = expiry_limits(context.settings)
    offered = f"Choose a day from {limits.minimum.isoformat()} to {limits.maximum.isoformat()}."
    for day in (limits.minimum - timedelta(days=1), limits.maximum + timedelta(days=1)):
        refused = await client.post("/console/keys", data={**key, "expires_on": day.isoformat()})
        assert refused.status_code == 422
        assert field_error(refused.text, "expires_on") == offered
        assert f'value="{day.isoformat()}"' in refused.text and ">kept</textarea>" in refused.text
    assert "You have no API keys yet." in (await client.get("/console/keys")).text
    for day in (limits.minimum, limits.maximum):
        created = await client.post("/console/keys", data={**key, "expires_on": day.isoformat()})
        assert created.status_code == 200 and 'id="api-key"' in created.text


SHAPED_KEY = "ksk_" + "Q" * 16 + "_" + "s" * 49  # shaped as a key string (security/tokens.py)
SHAPED_SECRET = "R" * 43  # shaped as a client secret
LOOKS_LIKE_A_SECRET = (
    "Looks like a secret (an API key, client secret, refresh token or access token): "
    "names and descriptions are shown to others, so keep secrets out of them."
)


async def test_a_secret_typed_as_a_name_or_description_is_refused_in_the_form(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """As the API refuses it (tests/api_keys/test_edit.py): next to the field, the input
    kept for the person to correct, on a page no cache keeps; nothing is made."""
    await create_principal(context, "root", permissions=["admin", "api_keys:manage"])
    token = await signed_in(client, "root")
    forms = [
        ("/console/keys", {"name": "ci", "description": "kept"}, "name"),
        ("/console/keys", {"name": "ci", "description": "kept"}, "description"),
        ("/console/admin/devices", {"name": "edge-1", "description": "kept"}, "name"),
        ("/console/admin/devices", {"name": "edge-1", "description": "kept"}, "description"),
        ("/console/admin/users", {"password": "a long password"}, "username"),
        ("/console/admin/scopes", {"name": "projects:read", "description": "kept"}, "name"),
        ("/console/admin/scopes", {"name": "projects:read"}, "description"),
    ]
    for secret in (SHAPED_KEY, SHAPED_SECRET):
        for path, sent, field in forms:
            refused = await client.post(path, data={"csrf_token": token, **sent, field: secret})
            assert refused.status_code == 422, (path, field)
            assert field_error(refused.text, field) == LOOKS_LIKE_A_SECRET, (path, field)
            assert refused.headers["cache-control"] == "no-store"
            assert f'value="{secret}"' in refused.text or f">{secret}</textarea>" in refused.text
    assert "You have no API keys yet." in (await client.get("/console/keys")).text
    for kind in ("api_key.created", "device.created", "user.created", "scope.created"):
        assert await audit_events(context, kind, outcome="success") == [], kind


async def test_a_form_sent_after_the_session_ended_says_so(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    alice = await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    key_form = {"csrf_token": token, "name": "late", "expires_on": "", "allowed_ips": ""}
    codec = SessionCodec(context.settings.server_secret())
    ended = ConsoleSession(principal_id=alice.id, expires_at=int(time.time()) - 1, csrf=token)
    # The browser drops the cookie at its Max-Age; a stale one may still be sent by others.
    for cookie in (None, codec.seal(ended)):
        client.cookies.clear()
        if cookie is not None:
            client.cookies.set("keyservice_console", cookie, path="/console")
        refused = await client.post("/console/keys", data=key_form)
        assert refused.status_code == 303, refused.text
        assert refused.headers["location"] == "/console/login?session=ended"
        # A cookie that was not sent may be a live one the browser kept back: left alone.
        assert ("set-cookie" in refused.headers) == (cookie is not None)
        login = await client.get(refused.headers["location"])
        assert "Your session had ended, so the form you sent was not saved." in login.text
        assert "Form refused" not in login.text
    assert "Your session had ended" not in (await client.get("/console/login")).text
    await signed_in(client, "alice")
    assert "You have no API keys yet." in (await client.get("/console/keys")).text


async def test_the_sign_in_page_says_why_in_its_own_words_only(
    client: httpx.AsyncClient,
) -> None:
    """The `session` query picks one of the page's sentences; its value is never shown, so
    a link cannot put a stranger's words (a fake instruction) on the sign-in page."""
    ended = await client.get("/console/login", params={"session": "ended"})
    assert "Your session had ended" in ended.text
    assert ">ended<" not in ended.text and "banner ok" not in ended.text
    # A forgotten password is the administrators'; a known one is changed after signing in.
    assert "Ask an administrator to set a new one" in ended.text
    lure = "Your password expired: mail it to help@example.com"
    planted = await client.get("/console/login", params={"session": lure})
    assert planted.status_code == 200
    assert "help@example.com" not in planted.text and "banner" not in planted.text


async def test_a_visit_from_another_site_neither_sets_nor_deletes_the_cookie(
    client: httpx.AsyncClient,
) -> None:
    from_link = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}
    response = await client.get("/console/keys", params={"q": '"><x'}, headers=from_link)
    assert response.status_code == 200 and "set-cookie" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    assert '<meta http-equiv="refresh" content="0; url=/console/keys?q=%22%3E%3Cx">' in (
        response.text
    )
    # Same-site visits, and posts from anywhere, are answered as before.
    same_site = {**from_link, "sec-fetch-site": "same-origin"}
    assert (await client.get("/console/keys", headers=same_site)).status_code == 303
    posted = await client.post("/console/logout", headers=from_link, data={})
    assert posted.headers["location"] == "/console/login?session=ended"


async def test_a_form_from_a_page_of_another_origin_is_refused(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """A sibling subdomain's page posts with the cookie (same-site) and, had it planted a
    session of its own, a token matching it: the browser's Sec-Fetch-Site gives it away."""
    await create_principal(context, "mallory")
    page = await client.get("/console/login")
    form = {"username": "mallory", "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    for site in ("same-site", "cross-site"):
        refused = await client.post("/console/login", data=form, headers={"sec-fetch-site": site})
        assert refused.status_code == 403, site
        assert "sent from a page of another site" in refused.text
        assert "set-cookie" not in refused.headers
    signed = await client.post(
        "/console/login", data=form, headers={"sec-fetch-site": "same-origin"}
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/console/keys"
    token = csrf_of((await client.get("/console/keys")).text)
    key_form = {"name": "k", "expires_on": "", "allowed_ips": "", "csrf_token": token}
    refused = await client.post(
        "/console/keys", data=key_form, headers={"sec-fetch-site": "same-site"}
    )
    assert refused.status_code == 403
    assert "You have no API keys yet." in (await client.get("/console/keys")).text
    # Typed or bookmarked (none), and browsers that send no such header, go on as before.
    created = await client.post("/console/keys", data=key_form, headers={"sec-fetch-site": "none"})
    assert created.status_code == 200 and 'id="api-key"' in created.text


async def test_a_form_the_edge_refuses_says_why(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    refused = await client.post(
        "/console/keys", data={"csrf_token": token, "name": "ci", "description": "a\x00b"}
    )
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("text/html")
    assert "<h1>Request refused</h1>" in refused.text
    assert "The request contains a NUL character." in refused.text
    assert "Not found" not in refused.text


async def test_rotating_a_device_key_says_until_when_the_old_one_works(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    device = await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{device.id}"
    await client.post(f"{base}/keys", data={"csrf_token": token, "name": "station"})
    page = await client.get(base)
    key_id = re.search(rf'href="{base}/keys/([^/"]+)/rotate"', page.text)
    assert key_id
    rotated = await client.post(
        f"{base}/keys/{key_id.group(1)}/rotate", data={"csrf_token": token, "grace_seconds": "3600"}
    )
    assert rotated.status_code == 200 and "<h1>Your rotated API key</h1>" in rotated.text
    # The tab's title, read first by a screen reader, says the same as the heading.
    assert "<title>Your rotated API key · keyservice</title>" in rotated.text
    async with context.database.sessionmaker() as session:
        old = await session.get(ApiKey, key_id.group(1))
        assert old is not None
    until = old.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    assert f"The old key keeps working until {until}." in rotated.text


async def test_a_grace_period_not_offered_rotates_with_the_default_24_hours(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    # A form posted by hand (or kept from an older page): not a refusal, the default.
    await create_principal(context, "root", permissions=["admin"])
    device = await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{device.id}"
    for sent in ("soon", "120", "", "-3600"):
        await client.post(f"{base}/keys", data={"csrf_token": token, "name": f"k{len(sent)}"})
        page = await client.get(base)
        key_id = re.search(rf'href="{base}/keys/([^/"]+)/rotate"', page.text)
        assert key_id
        before = utcnow()
        rotated = await client.post(
            f"{base}/keys/{key_id.group(1)}/rotate",
            data={"csrf_token": token, "grace_seconds": sent},
        )
        assert rotated.status_code == 200 and "Your rotated API key" in rotated.text, sent
        async with context.database.sessionmaker() as session:
            old = await session.get(ApiKey, key_id.group(1))
            assert old is not None
        grace = old.expires_at - before
        assert timedelta(hours=24, seconds=-1) <= grace < timedelta(hours=24, minutes=1), (
            sent,
            grace,
        )


async def test_allowed_ips_may_be_separated_by_commas(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    typed = "10.0.0.0/8, 192.168.0.0/16\n 2001:db8::/32 "
    created = await client.post(
        "/console/keys", data={"csrf_token": token, "name": "ci", "allowed_ips": typed}
    )
    assert created.status_code == 200, field_error(created.text, "allowed_ips")
    assert "<dd>10.0.0.0/8, 192.168.0.0/16, 2001:db8::/32</dd>" in created.text
    refused = await client.post(
        "/console/keys", data={"csrf_token": token, "name": "ci", "allowed_ips": "10.0.0.0/8,x"}
    )
    assert field_error(refused.text, "allowed_ips") == "'x' is not an IPv4 or IPv6 address or CIDR"
    assert ">10.0.0.0/8,x</textarea>" in refused.text


def form_id_of(html: str) -> str:
    match = re.search(r'name="form_id" value="([^"]+)"', html)
    assert match, "no form id on the page"
    return match.group(1)


async def _keys_and_events(context: AppContext, owner_id: str) -> tuple[int, dict[str, int]]:
    """The owner's keys (all of them, revoked and expired too) and the key changes audited
    (refusals, such as a form sent again, are events too: not counted)."""
    from sqlalchemy import func, select

    async with context.database.sessionmaker() as session:
        keys = await session.scalar(
            select(func.count()).select_from(ApiKey).where(ApiKey.principal_id == owner_id)
        )
        events, _ = await audit_service.list_events(session, principal_id=owner_id)
    counts: dict[str, int] = {}
    for event in events:
        if event.type.startswith("api_key.") and event.outcome == "success":
            counts[event.type] = counts.get(event.type, 0) + 1
    return int(keys or 0), counts


async def _spent_rows(context: AppContext) -> list[tuple[str, str]]:
    from sqlalchemy import select

    async with context.database.sessionmaker() as session:
        rows = await session.execute(select(ConsoleSpent.kind, ConsoleSpent.digest))
        return [(kind, digest) for kind, digest in rows]


async def _spent(context: AppContext) -> set[tuple[str, bool]]:
    """The kinds of console_spent rows, each with whether its digest is malformed."""
    return {
        (kind, re.fullmatch("[0-9a-f]{64}", digest) is None)
        for kind, digest in await _spent_rows(context)
    }


def shown_secret(html: str) -> str | None:
    match = re.search(r'id="api-key"[^>]*>([^<]+)</textarea>', html)
    return match.group(1) if match else None


async def test_a_key_form_sent_again_creates_nothing(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    # Reloading the page that shows a new key sends its form again: that must not make a
    # second key (a new secret, one of the owner's 5 live keys used up unseen).
    alice = await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    # Two tabs with the form open: each has its own id.
    first_id = form_id_of((await client.get("/console/keys/new")).text)
    second_id = form_id_of((await client.get("/console/keys/new")).text)
    assert first_id != second_id
    form = {"csrf_token": token, "name": "ci", "expires_on": ""}

    created = await client.post("/console/keys", data={**form, "form_id": first_id})
    assert created.status_code == 200
    secret = shown_secret(created.text)
    assert secret and created.headers["cache-control"] == "no-store"
    # Claimed on the server with the key, as a keyed digest: the id itself is nowhere.
    assert await _spent(context) == {("form", False)}
    assert first_id not in str(await _spent_rows(context))
    again = await client.post("/console/keys", data={**form, "form_id": first_id})
    assert again.status_code == 409, again.text
    assert again.headers["cache-control"] == "no-store"
    assert "<h1>Key already created</h1>" in again.text
    assert "Its secret was shown once" in again.text
    assert 'href="/console/keys"' in again.text
    assert shown_secret(again.text) is None and secret not in again.text
    assert await _keys_and_events(context, alice.id) == (1, {"api_key.created": 1})

    # The other tab's form makes its own key, once; the first is still claimed.
    other = await client.post("/console/keys", data={**form, "form_id": second_id})
    assert other.status_code == 200 and shown_secret(other.text) not in (None, secret)
    for form_id in (second_id, first_id):
        refused = await client.post("/console/keys", data={**form, "form_id": form_id})
        assert refused.status_code == 409
    assert await _keys_and_events(context, alice.id) == (2, {"api_key.created": 2})

    # A form refused for its input is not claimed: sent again corrected, it makes a key.
    third_id = form_id_of((await client.get("/console/keys/new")).text)
    refused = await client.post("/console/keys", data={**form, "name": "", "form_id": third_id})
    assert refused.status_code == 422
    fixed = await client.post("/console/keys", data={**form, "form_id": third_id})
    assert fixed.status_code == 200 and shown_secret(fixed.text)
    assert await _keys_and_events(context, alice.id) == (3, {"api_key.created": 3})

    # An id this console did not make is refused in words, and creates nothing.
    for bad in ("x", "'><script>", "A" * 17):
        damaged = await client.post("/console/keys", data={**form, "form_id": bad})
        assert damaged.status_code == 400
        assert "This form is damaged" in damaged.text and "<script>" not in damaged.text
    assert await _keys_and_events(context, alice.id) == (3, {"api_key.created": 3})

    # After signing out and in again, the old page's form is refused anyway (its CSRF token
    # was the old session's).
    await client.post("/console/logout", data={"csrf_token": token})
    await signed_in(client, "alice")
    stale = await client.post("/console/keys", data={**form, "form_id": first_id})
    assert stale.status_code == 403


async def test_a_rotation_sent_again_rotates_nothing(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    alice = await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    await client.post("/console/keys", data={"csrf_token": token, "name": "deploy"})
    keys = await client.get("/console/keys")
    key_id = re.search(r'href="/console/keys/([^/"]+)/rotate"', keys.text)
    assert key_id
    page = await client.get(f"/console/keys/{key_id.group(1)}/rotate")
    # Rotating with no grace retires the old key at once; sent again, the form got the
    # service's "This key has expired; create a new one instead", which told someone
    # holding the new key to make yet another one.
    form = {"csrf_token": token, "grace_seconds": "0", "form_id": form_id_of(page.text)}
    rotated = await client.post(f"/console/keys/{key_id.group(1)}/rotate", data=form)
    assert rotated.status_code == 200 and shown_secret(rotated.text)
    again = await client.post(f"/console/keys/{key_id.group(1)}/rotate", data=form)
    assert again.status_code == 409
    assert "<h1>Key already rotated</h1>" in again.text and "has expired" not in again.text
    assert shown_secret(again.text) is None
    assert await _keys_and_events(context, alice.id) == (
        2,
        {"api_key.created": 1, "api_key.rotated": 1, "api_key.updated": 1},
    )


async def test_device_key_forms_sent_again_create_nothing(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "root", permissions=["admin"])
    device = await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")
    base = f"/console/admin/devices/{device.id}"
    form = {"csrf_token": token, "name": "station"}
    form["form_id"] = form_id_of((await client.get(f"{base}/keys/new")).text)
    created = await client.post(f"{base}/keys", data=form)
    assert created.status_code == 200 and shown_secret(created.text)
    again = await client.post(f"{base}/keys", data=form)
    assert again.status_code == 409 and "<h1>Key already created</h1>" in again.text
    assert f'href="{base}"' in again.text and shown_secret(again.text) is None
    assert await _keys_and_events(context, device.id) == (1, {"api_key.created": 1})

    key_id = re.search(rf'href="{base}/keys/([^/"]+)/rotate"', (await client.get(base)).text)
    assert key_id
    page = await client.get(f"{base}/keys/{key_id.group(1)}/rotate")
    rotation = {"csrf_token": token, "grace_seconds": "3600", "form_id": form_id_of(page.text)}
    rotated = await client.post(f"{base}/keys/{key_id.group(1)}/rotate", data=rotation)
    assert rotated.status_code == 200 and shown_secret(rotated.text)
    again = await client.post(f"{base}/keys/{key_id.group(1)}/rotate", data=rotation)
    assert again.status_code == 409 and "<h1>Key already rotated</h1>" in again.text
    assert shown_secret(again.text) is None
    assert await _keys_and_events(context, device.id) == (
        2,
        {"api_key.created": 1, "api_key.rotated": 1, "api_key.updated": 1},
    )


def _with_cookie(client: httpx.AsyncClient, cookie: str) -> httpx.AsyncClient:
    client.cookies.clear()
    client.cookies.set("keyservice_console", cookie, domain="keyservice.test", path="/console")
    return client


async def test_sign_out_ends_every_copy_of_the_session_and_no_other(
    client: httpx.AsyncClient, context: AppContext, app: Any
) -> None:
    alice = await create_principal(context, "alice")
    token = await signed_in(client, "alice")
    cookie = client.cookies["keyservice_console"]
    async with client_for(app) as copy, client_for(app, "10.1.2.3") as elsewhere:
        # A copy of the cookie (another tab's storage, a stolen one) is the same session.
        assert (await _with_cookie(copy, cookie).get("/console/keys")).status_code == 200
        other_token = await signed_in(elsewhere, "alice")  # alice, signed in elsewhere

        out = await client.post("/console/logout", data={"csrf_token": token})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"

        # Every page refuses the copy, deletes it and says why on the sign-in page.
        for path in ("/console/keys", "/console/keys/new", "/console", "/console/login"):
            refused = await _with_cookie(copy, cookie).get(path, follow_redirects=True)
            assert refused.url.path == "/console/login", path
            assert refused.history[-1].headers["location"] == "/console/login?session=signed-out"
            assert "This session was signed out, here or in another window." in refused.text
            assert "keyservice_console" not in copy.cookies or (
                copy.cookies["keyservice_console"] != cookie
            )
        # A form sent with it is not carried out, and the sign-in page says it was not saved.
        posted = await _with_cookie(copy, cookie).post(
            "/console/keys", data={"csrf_token": token, "name": "after", "expires_on": ""}
        )
        assert posted.status_code == 303
        assert posted.headers["location"] == "/console/login?session=ended"
        assert await _keys_and_events(context, alice.id) == (0, {})
        # Signing out again (the copy's own button, a second click) is harmless.
        again = await _with_cookie(copy, cookie).post("/console/logout", data={"csrf_token": token})
        assert again.status_code == 303 and again.headers["location"] == "/console/login"

        # Alice's other session is not touched.
        assert (await elsewhere.get("/console/keys")).status_code == 200
        created = await elsewhere.post(
            "/console/keys", data={"csrf_token": other_token, "name": "kept", "expires_on": ""}
        )
        assert created.status_code == 200 and shown_secret(created.text)

    # Audited once, as sign-ins are; the row holds a keyed digest, never the cookie.
    events = await audit_events(context, "logout")
    assert [(e.actor, e.principal_id, e.ip, e.reason) for e in events] == [
        ("user:alice", alice.id, "127.0.0.1", "console sign-out")
    ]
    rows = await _spent_rows(context)
    assert await _spent(context) == {("session", False)}
    assert cookie not in str(rows) and token not in str(rows)
    assert not any(cookie in str(vars(event)) for event in await audit_events(context))
    # Signing in again makes a new session, which works.
    await signed_in(client, "alice")


async def test_a_cookie_from_before_session_ids_works_and_can_be_signed_out(
    client: httpx.AsyncClient, context: AppContext, app: Any
) -> None:
    from keyservice.principals.models import Principal

    alice = await create_principal(context, "alice")
    async with context.database.sessionmaker() as session:
        stored = await session.get(Principal, alice.id)
        assert stored is not None
    codec = SessionCodec(context.settings.server_secret())
    # What the previous release sealed at sign-in: no "i", form ids in "f".
    csrf = "c" * 43
    cookie = seal_payload(
        codec,
        {"p": alice.id, "e": int(time.time()) + 3000, "c": csrf,
         "k": codec.credential(stored.password_hash), "f": []},
    )  # fmt: skip
    assert (await _with_cookie(client, cookie).get("/console/keys")).status_code == 200
    async with client_for(app) as copy:
        assert (await _with_cookie(copy, cookie).get("/console/keys")).status_code == 200
        out = await client.post("/console/logout", data={"csrf_token": csrf})
        assert out.status_code == 303
        refused = await _with_cookie(copy, cookie).get("/console/keys")
        assert refused.headers["location"] == "/console/login?session=signed-out"


async def test_a_double_click_on_a_key_form_creates_one_key(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """Two sends of one form racing each other (the second leaves before the first is
    answered, so the cookie cannot tell): one makes the key, the other makes nothing."""
    root = await create_principal(context, "root", permissions=["admin", "api_keys:manage"])
    device = await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")

    async def double_click(path: str, form: dict[str, str], *, rotated: bool) -> None:
        answers = await asyncio.gather(client.post(path, data=form), client.post(path, data=form))
        made, refused = sorted(answers, key=lambda answer: answer.status_code)
        assert (made.status_code, refused.status_code) == (200, 409), refused.text
        assert shown_secret(made.text) and shown_secret(refused.text) is None
        heading = "Key already rotated" if rotated else "Key already created"
        assert f"<h1>{heading}</h1>" in refused.text

    own = {"csrf_token": token, "name": "ci", "expires_on": ""}
    own["form_id"] = form_id_of((await client.get("/console/keys/new")).text)
    await double_click("/console/keys", own, rotated=False)
    assert await _keys_and_events(context, root.id) == (1, {"api_key.created": 1})
    key_id = re.search(
        r'href="/console/keys/([^/"]+)/rotate"', (await client.get("/console/keys")).text
    )
    assert key_id
    page = await client.get(f"/console/keys/{key_id.group(1)}/rotate")
    rotation = {"csrf_token": token, "grace_seconds": "3600", "form_id": form_id_of(page.text)}
    await double_click(f"/console/keys/{key_id.group(1)}/rotate", rotation, rotated=True)
    assert await _keys_and_events(context, root.id) == (
        2,
        {"api_key.created": 1, "api_key.rotated": 1, "api_key.updated": 1},
    )

    base = f"/console/admin/devices/{device.id}"
    form = {"csrf_token": token, "name": "station"}
    form["form_id"] = form_id_of((await client.get(f"{base}/keys/new")).text)
    await double_click(f"{base}/keys", form, rotated=False)
    assert await _keys_and_events(context, device.id) == (1, {"api_key.created": 1})
    key_id = re.search(rf'href="{base}/keys/([^/"]+)/rotate"', (await client.get(base)).text)
    assert key_id
    page = await client.get(f"{base}/keys/{key_id.group(1)}/rotate")
    rotation = {"csrf_token": token, "grace_seconds": "3600", "form_id": form_id_of(page.text)}
    await double_click(f"{base}/keys/{key_id.group(1)}/rotate", rotation, rotated=True)
    assert await _keys_and_events(context, device.id) == (
        2,
        {"api_key.created": 1, "api_key.rotated": 1, "api_key.updated": 1},
    )


async def test_a_user_changes_their_password_in_the_console(
    client: httpx.AsyncClient, context: AppContext, app: Any
) -> None:
    new = "a new and longer passphrase"
    await create_principal(context, "pat")
    csrf = await signed_in(client, "pat")
    async with client_for(app) as elsewhere:  # the same user signed in on another machine
        await signed_in(elsewhere, "pat")
        page = await client.get("/console/password")
        assert page.status_code == 200 and 'aria-current="page">Password' in page.text

        def form(current: str, again: str = new, token: str = csrf) -> dict[str, str]:
            return {
                "csrf_token": token,
                "current_password": current,
                "new_password": new,
                "confirm_password": again,
            }

        differ = await client.post("/console/password", data=form(PASSWORD, again=new + "!"))
        assert differ.status_code == 400 and "The two new passwords differ" in differ.text
        wrong = await client.post("/console/password", data=form("not it"))
        assert wrong.status_code == 403 and "The current password is wrong." in wrong.text
        assert new not in wrong.text and "not it" not in wrong.text  # nothing typed echoed
        forged = await client.post("/console/password", data=form(PASSWORD, token="forged"))
        assert forged.status_code == 403 and "Form refused" in forged.text

        changed = await client.post("/console/password", data=form(PASSWORD))
        assert changed.status_code == 303
        assert changed.headers["location"] == "/console/password?done=1"
        done = await client.get(changed.headers["location"])
        assert "Your password was changed" in done.text
        # This session goes on; the other one, signed in with the old password, is over.
        assert (await client.get("/console/password")).status_code == 200
        ended = await elsewhere.get("/console/password", follow_redirects=False)
        assert ended.status_code == 303 and ended.headers["location"].startswith("/console/login")

    fresh = await client.post(
        "/token", data={"grant_type": "password", "username": "pat", "password": new}
    )
    assert fresh.status_code == 200, fresh.text
    reasons = [(e.type, e.outcome, e.reason) for e in await audit_events(context)]
    assert ("login", "failure", "console: password change: wrong password") in reasons
    assert ("user.updated", "success", "password changed; 0 sign-in session(s) ended") in reasons


async def test_a_user_who_may_not_manage_keys_lands_on_their_password_page(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    """Sign-in leads to the keys page; without `api_keys:manage` that was a 403 page and
    the nav offered it. Such a user lands on Password, the one page that is theirs."""
    await create_principal(context, "reader", permissions=["projects:read"])
    page = await client.get("/console/login")
    signed = await client.post(
        "/console/login",
        data={"username": "reader", "password": PASSWORD, "csrf_token": csrf_of(page.text)},
    )
    assert signed.headers["location"] == "/console/keys"
    keys = await client.get("/console/keys")
    assert keys.status_code == 303 and keys.headers["location"] == "/console/password"
    landed = await client.get("/console/password")
    assert landed.status_code == 200
    assert 'href="/console/keys"' not in landed.text  # no nav entry leading to a 403
    assert 'aria-current="page">Password' in landed.text
    # The key pages themselves still say why, opened by their address.
    new = await client.get("/console/keys/new")
    assert new.status_code == 403 and "api_keys:manage" in new.text


@pytest.mark.parametrize("settings_overrides", [{"throttle_client_failures": 3}])
async def test_the_password_page_says_what_is_missing_refused_or_throttled(
    client: httpx.AsyncClient, context: AppContext
) -> None:
    await create_principal(context, "sam")
    csrf = await signed_in(client, "sam")

    async def change(current: str, new: str, again: str | None = None) -> httpx.Response:
        form = {
            "csrf_token": csrf,
            "current_password": current,
            "new_password": new,
            "confirm_password": new if again is None else again,
        }
        return await client.post("/console/password", data=form)

    def said(page: httpx.Response) -> str | None:
        match = re.search(
            r'<p class="banner error" role="alert" id="password-error">([^<]*)', page.text
        )
        return unescape(match.group(1)) if match else None

    for current, new in (("", "a long new password"), (PASSWORD, "")):
        empty = await change(current, new)
        assert empty.status_code == 400
        assert said(empty) == "Enter your current password and the new one, twice."
    short = await change(PASSWORD, "short")
    assert short.status_code == 422 and "at least 8 characters" in (said(short) or "")
    assert 'id="new_password"' in short.text and 'aria-invalid="true" autofocus' in short.text
    same = await change(PASSWORD, PASSWORD)
    assert same.status_code == 422
    assert said(same) == "The new password is the same as the current one; choose another."
    # Wrong current passwords count as failed sign-ins: past the throttle, even the right one
    # waits, and the page says for how long.
    for _ in range(3):
        assert (await change("not it", "a long new password")).status_code == 403
    throttled = await change(PASSWORD, "a long new password")
    assert throttled.status_code == 429
    wait = throttled.headers["Retry-After"]
    assert int(wait) >= 1
    assert said(throttled) == f"Too many failed attempts. Wait {wait} seconds, then try again."
    assert "a long new password" not in throttled.text and PASSWORD not in throttled.text
    # Nothing was changed by any of them; each refusal is audited as one.
    updates = [e.outcome for e in await audit_events(context) if e.type == "user.updated"]
    assert updates == ["failure"] * 8
