"""The console in real headless Chromium, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Error, Page, Route, expect

from keyservice.database import utcnow
from keyservice.principals.models import Principal
from tests.console.conftest import LiveServer, sign_in
from tests.factories import PASSWORD, add_scope, create_principal, service_key

pytestmark = pytest.mark.browser


# Records in `element.said` each text the element comes to hold, as a screen reader would
# hear a live region: a text written again as it already was is no change.
RECORD_TEXT_CHANGES = """
(element) => {
  element.said = [];
  let last = element.textContent;
  new MutationObserver(() => {
    if (element.textContent !== last) {
      last = element.textContent;
      element.said.push(last);
    }
  }).observe(element, { childList: true, characterData: true, subtree: true });
}
"""


async def exchange(http: httpx.AsyncClient, api_key: str) -> httpx.Response:
    return await http.post("/token", data={"grant_type": "client_credentials", "api_key": api_key})


async def test_sign_in_wrong_then_right_password(page: Page, live: LiveServer) -> None:
    await create_principal(live.context, "alice")
    await sign_in(page, "alice", "not the password")
    await expect(page.get_by_text("Wrong username or password")).to_be_visible()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    # Keyboard only: the username field has focus, Tab moves on, Enter submits.
    await page.get_by_label("Username").fill("")
    await page.keyboard.type("alice")
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Password")).to_be_focused()
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    await expect(page).to_have_url(f"{live.url}/console/keys")
    cookies = await page.context.cookies()
    session = next(c for c in cookies if c["name"] == "keyservice_console")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    # A user without admin sees no admin links, and admin pages refuse them.
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="API keys")).to_be_visible()
    for name in ("Users", "Devices", "Audit log"):
        await expect(nav.get_by_role("link", name=name)).to_have_count(0)
    for path in ("/console/admin/users", "/console/admin/devices", "/console/admin/audit"):
        response = await page.goto(path)
        assert response is not None and response.status == 403
        await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()

    await page.goto("/console/keys")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    response = await page.goto("/console/keys")
    assert response is not None
    await expect(page).to_have_url(f"{live.url}/console/login")


async def test_generate_copy_download_exchange_then_delete(
    page: Page, live: LiveServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    await add_scope(live.context, "projects:read", "Read projects")
    await add_scope(live.context, "billing:write", "Change billing")
    await create_principal(live.context, "alice", permissions=["api_keys:manage", "projects:read"])
    await sign_in(page, "alice")
    await expect(page.get_by_text("You have no API keys yet.")).to_be_visible()

    await page.get_by_role("link", name="Generate API key").click()
    await expect(page.get_by_role("heading", name="Generate API key")).to_be_visible()
    # One checkbox per scope the user holds, labelled by its name; nothing else offered.
    await expect(page.get_by_label("projects:read", exact=True)).to_be_visible()
    await expect(page.get_by_label("billing:write", exact=True)).to_have_count(0)
    await expect(page.get_by_text("Read projects")).to_be_visible()
    expires = page.get_by_label("Expires on")
    default_day = (utcnow() + timedelta(days=90)).date().isoformat()
    await expect(expires).to_have_value(default_day)
    assert await expires.get_attribute("min") and await expires.get_attribute("max")

    await page.get_by_label("Name", exact=True).fill("ci-bot")
    await page.get_by_label("Description").fill("Builds")
    await page.get_by_label("projects:read", exact=True).check()
    await page.get_by_label("Allowed IPs").fill("127.0.0.1/32\nnot-an-address")
    await page.get_by_role("button", name="Create key").click()
    # The service's refusal is shown next to the field, and the input is kept.
    await expect(page.get_by_text("'not-an-address' is not an IPv4 or IPv6")).to_be_visible()
    await expect(page.get_by_label("Allowed IPs")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Name", exact=True)).to_have_value("ci-bot")
    await page.get_by_label("Allowed IPs").fill("127.0.0.1/32\n::1")

    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Create key").click()
    response = await posted.value
    assert response.status == 200
    assert "no-store" in (await response.all_headers())["cache-control"]
    field = page.get_by_label("API key", exact=True)
    await expect(field).to_have_attribute("readonly", "")
    api_key = await field.input_value()
    assert api_key and api_key in await page.content()
    assert api_key not in page.url
    await expect(page.get_by_text("it will not be shown again")).to_be_visible()

    # Each press of Copy is announced: the words of the status change each time, though
    # they are the same words (a screen reader speaks a change of a live region's text).
    status = page.locator("[role=status][data-copy-status]")
    await status.evaluate(RECORD_TEXT_CHANGES)
    for presses in (1, 2):
        await page.get_by_role("button", name="Copy").click()
        said: list[str] = []
        for _ in range(40):  # up to 2 s
            said = await status.evaluate("(region) => region.said")
            if said.count("Copied to the clipboard.") >= presses:
                break
            await asyncio.sleep(0.05)
        assert said.count("Copied to the clipboard.") == presses, said
    await expect(status).to_have_text("Copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == api_key

    async with page.expect_download() as downloading:
        await page.get_by_role("button", name="Download").click()
    download = await downloading.value
    assert download.suggested_filename == "ci-bot.APIKEY"
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    from_file = saved.read_text()
    assert from_file == api_key

    exchanged = await exchange(http, from_file)
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["scope"] == "projects:read"

    await page.get_by_role("link", name="Done").click()
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    await expect(page.get_by_label("API key", exact=True)).to_have_count(0)
    assert api_key not in await page.content()
    row = page.get_by_role("row", name="ci-bot")
    await expect(row).to_contain_text("projects:read")
    await expect(row).to_contain_text("valid")

    await row.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("cannot be undone")
    await dialog.get_by_role("button", name="Delete", exact=True).click()
    # The notice comes with the next page: a status there at load is not announced, so it
    # takes the focus, which reads it.
    notice = page.get_by_role("status").filter(has_text="The key was deleted.")
    await expect(notice).to_be_visible()
    await expect(notice).to_be_focused()
    await expect(page.get_by_role("row", name="ci-bot")).to_have_count(0)
    assert (await exchange(http, api_key)).status_code == 401


async def test_rotate_and_expiry_warning(
    page: Page, live: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await create_principal(live.context, "alice")
    old_key = (await service_key(live.context, alice, "deploy")).api_key
    await service_key(live.context, alice, "nightly", expires_at=utcnow() + timedelta(days=3))
    await service_key(live.context, alice, "yearly")
    await sign_in(page, "alice")

    # Every page after sign-in warns about the key that expires within 7 days, only that one,
    # as a status (an alert would be read out at every page load).
    for path in ("/console/keys", "/console/keys/new"):
        await page.goto(path)
        await expect(page.get_by_role("alert")).to_have_count(0)
        alert = page.get_by_role("status", name="API keys that need attention")
        await expect(alert).to_contain_text("nightly")
        await expect(alert).not_to_contain_text("deploy")
        await expect(alert).not_to_contain_text("yearly")

    await page.goto("/console/keys")
    # The delete dialog works from the keyboard and gives focus back when dismissed.
    delete_button = page.get_by_role("row", name="yearly").get_by_role("button", name="Delete")
    await delete_button.focus()
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(delete_button).to_be_focused()

    await page.get_by_role("row", name="deploy").get_by_role("link", name="Rotate").click()
    await expect(page.get_by_role("heading", name="Rotate API key")).to_be_visible()
    await page.get_by_label("Keep the old key working for").select_option(label="1 hour")
    await page.get_by_role("button", name="Rotate key").click()
    new_key = await page.get_by_label("API key", exact=True).input_value()
    assert new_key and new_key != old_key
    await expect(page.get_by_text("it will not be shown again")).to_be_visible()
    await expect(page.get_by_role("button", name="Download")).to_be_visible()
    assert (await exchange(http, new_key)).status_code == 200
    assert (await exchange(http, old_key)).status_code == 200  # within its hour of grace
    await page.get_by_role("link", name="Done").click()
    await expect(page.get_by_role("row", name="deploy")).to_have_count(2)

    # Rotating with no grace retires the old key at once.
    await page.get_by_role("row", name="nightly").get_by_role("link", name="Rotate").click()
    await page.get_by_label("Keep the old key working for").select_option(value="0")
    await page.get_by_role("button", name="Rotate key").click()
    await expect(page.get_by_label("API key", exact=True)).to_be_visible()
    await page.get_by_role("link", name="Done").click()
    rows = page.get_by_role("row", name="nightly")
    await expect(rows.filter(has_text="expired")).to_have_count(1)
    await expect(rows.filter(has_text="valid")).to_have_count(1)


async def test_edit_a_keys_name_and_scopes(
    page: Page, live: LiveServer, http: httpx.AsyncClient
) -> None:
    await add_scope(live.context, "projects:read", "Read projects")
    await add_scope(live.context, "projects:write", "Change projects")
    alice = await create_principal(
        live.context, "alice", permissions=["api_keys:manage", "projects:read", "projects:write"]
    )
    key = await service_key(live.context, alice, "ci", scopes=["projects:read"])
    await sign_in(page, "alice")

    await page.get_by_role("row", name="ci").get_by_role("link", name="Edit").click()
    await expect(page.get_by_role("heading", name="Edit API key")).to_be_visible()
    name = page.get_by_label("Name", exact=True)
    await expect(name).to_have_value("ci")
    await expect(page.get_by_label("projects:read", exact=True)).to_be_checked()
    await expect(page.get_by_label("projects:write", exact=True)).not_to_be_checked()
    await expect(page.get_by_label("Expires on")).to_have_value(key.expires_at.date().isoformat())
    await name.fill("deploy")
    await page.get_by_label("projects:read", exact=True).uncheck()
    await page.get_by_label("projects:write", exact=True).check()
    await page.get_by_role("button", name="Save changes").click()

    await expect(page).to_have_url(re.compile(r"/console/keys\?done=updated"))
    await expect(page.get_by_text("Key deploy was updated.")).to_be_visible()
    await expect(page.get_by_role("rowheader", name="ci", exact=True)).to_have_count(0)
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="deploy"))
    await expect(row).to_contain_text("projects:write")
    await expect(row).not_to_contain_text("projects:read")
    # The same key string, with its new scopes at the next exchange.
    exchanged = await exchange(http, key.api_key)
    assert exchanged.status_code == 200 and exchanged.json()["scope"] == "projects:write"


async def test_renaming_a_key_keeps_a_description_as_the_api_set_it(
    page: Page, live: LiveServer
) -> None:
    """Chromium drops a line break right after <textarea> and sends line breaks as CRLF:
    the Edit form must still leave a description it was not asked to change as stored."""
    from keyservice.api_keys.models import ApiKey

    alice = await create_principal(live.context, "alice")
    text = "\nindented\rold Mac\nunix"
    key = await service_key(live.context, alice, "ci", description=text)
    await sign_in(page, "alice")
    await page.goto(f"/console/keys/{key.id}/edit")
    await expect(page.get_by_label("Description")).to_have_value("\nindented\nold Mac\nunix")
    await page.get_by_label("Name", exact=True).fill("deploy")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Key deploy was updated.")).to_be_visible()
    async with live.context.database.sessionmaker() as session:
        row = await session.get(ApiKey, key.id)
        assert row is not None and row.description == text


async def test_admin_creates_and_disables_a_user_and_keys_a_device(
    page: Page, live: LiveServer, http: httpx.AsyncClient
) -> None:
    await add_scope(live.context, "sensors:write", "Send readings")
    await create_principal(live.context, "root", permissions=["admin", "sensors:write"])
    await sign_in(page, "root")
    nav = page.get_by_role("navigation", name="Main")

    await nav.get_by_role("link", name="Users").click()
    await expect(page.get_by_role("heading", name="Users", exact=True)).to_be_visible()
    await page.get_by_label("Username").fill("bob")
    await page.get_by_label("Password").fill("short")
    await page.get_by_role("button", name="Create user").click()
    await expect(page.get_by_text("at least 8 characters").first).to_be_visible()
    await page.get_by_label("Password").fill("bob's long password")
    await page.get_by_role("button", name="Create user").click()
    await expect(page.get_by_text("User bob created.")).to_be_visible()
    row = page.get_by_role("row", name="bob")
    await expect(row).to_contain_text("enabled")
    await expect(row).to_contain_text("api_keys:manage")
    await row.get_by_role("button", name="Disable").click()
    await expect(page.get_by_role("row", name="bob")).to_contain_text("disabled")
    signed_in = await http.post(
        "/token",
        data={"grant_type": "password", "username": "bob", "password": "bob's long password"},
    )
    assert signed_in.status_code == 400

    await nav.get_by_role("link", name="Devices").click()
    await expect(page.get_by_role("heading", name="Devices", exact=True)).to_be_visible()
    await page.get_by_label("Name").fill("sensor-1")
    await page.get_by_label("Description").fill("Roof weather station")
    await page.get_by_label("sensors:write", exact=True).check()
    await page.get_by_role("button", name="Register device").click()
    await expect(page.get_by_role("heading", name="Device sensor-1")).to_be_visible()
    await page.get_by_role("link", name="Generate API key").click()
    await page.get_by_label("Name", exact=True).fill("station")
    await page.get_by_role("button", name="Create key").click()
    device_key = await page.get_by_label("API key", exact=True).input_value()
    exchanged = await exchange(http, device_key)
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["scope"] == "sensors:write"
    await page.get_by_role("link", name="Done").click()
    await expect(page.get_by_role("row", name="station")).to_contain_text("valid")

    await page.get_by_role("button", name="Delete device").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Delete device sensor-1?")
    await dialog.get_by_role("button", name="Delete", exact=True).click()
    await expect(page.get_by_text("Device sensor-1 deleted")).to_be_visible()
    assert (await exchange(http, device_key)).status_code == 401

    await nav.get_by_role("link", name="Audit log").click()
    await expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    await page.get_by_label("Type").select_option("device.created")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_role("row").filter(has_text="device.created")).to_have_count(1)
    await expect(page.get_by_role("row").filter(has_text="user.created")).to_have_count(0)


async def test_admin_adds_a_scope_then_revokes_a_leaked_key(
    page: Page, live: LiveServer, http: httpx.AsyncClient
) -> None:
    await create_principal(live.context, "root", permissions=["admin"])
    alice = await create_principal(live.context, "alice")
    leaked = (await service_key(live.context, alice, "leaked")).api_key
    await sign_in(page, "root")
    nav = page.get_by_role("navigation", name="Main")

    await nav.get_by_role("link", name="Scopes").click()
    await expect(page.get_by_role("heading", name="Scopes", exact=True)).to_be_visible()
    await expect(page.get_by_role("row", name="admin")).to_contain_text("built-in")
    await page.get_by_label("Name").fill("projects read")
    await page.get_by_label("Description", exact=True).fill("Read projects")
    await page.get_by_role("button", name="Add scope").click()
    await expect(page.get_by_text("May hold only letters, digits and _ . : / -")).to_be_visible()
    await expect(page.get_by_label("Name")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Name")).to_have_value("projects read")
    await expect(page.get_by_label("Description", exact=True)).to_have_value("Read projects")
    await page.get_by_label("Name").fill("projects:read")
    await page.get_by_role("button", name="Add scope").click()
    await expect(page.get_by_text("Scope projects:read added to the catalog.")).to_be_visible()
    await expect(page.get_by_role("row", name="projects:read")).to_contain_text("Read projects")
    # Offered at once wherever permissions are chosen.
    await nav.get_by_role("link", name="Users").click()
    await expect(page.get_by_label("projects:read", exact=True)).to_be_visible()

    assert (await exchange(http, leaked)).status_code == 200
    await nav.get_by_role("link", name="All keys").click()
    await expect(page.get_by_role("heading", name="All API keys")).to_be_visible()
    await page.get_by_label("Owner type").select_option("user")
    await page.get_by_role("button", name="Filter").click()
    row = page.get_by_role("row", name="leaked")
    await expect(row).to_contain_text("user alice")
    await expect(row).to_contain_text("valid")
    await row.get_by_role("link", name="Revoke").click()
    heading = page.get_by_role("heading", name="Revoke API key leaked of user alice?")
    await expect(heading).to_be_visible()
    await page.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_text("The key was revoked.")).to_be_visible()
    await expect(page.get_by_label("Owner type")).to_have_value("user")  # filters kept
    row = page.get_by_role("row", name="leaked")
    await expect(row).to_contain_text("revoked")
    await expect(row.get_by_role("link", name="Revoke")).to_have_count(0)
    assert (await exchange(http, leaked)).status_code == 401


async def test_a_key_string_pasted_as_client_id_never_leaves_the_browser(
    page: Page, live: LiveServer
) -> None:
    await create_principal(live.context, "root", permissions=["admin"])
    alice = await create_principal(live.context, "alice")
    leaked = (await service_key(live.context, alice, "leaked")).api_key
    await service_key(live.context, alice, "other")
    await sign_in(page, "root")
    await page.goto("/console/admin/keys")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))

    field = page.get_by_label("Client ID")
    await field.fill(leaked)
    await page.get_by_role("button", name="Filter").click()
    # The field's pattern stops the form: the secret is in no address, no history entry.
    assert await field.evaluate("input => input.validity.patternMismatch")
    await expect(page).to_have_url(f"{live.url}/console/admin/keys")
    assert not [url for url in sent if "ksk_" in url], sent

    # Its client id, the part after ksk_, finds the key.
    client_id = "kc_" + leaked.removeprefix("ksk_").split("_", 1)[0]
    await field.fill(client_id)
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(rf"/console/admin/keys\?.*client_id={client_id}"))
    await expect(page.get_by_role("row", name="leaked")).to_contain_text("user alice")
    await expect(page.get_by_role("row", name="other")).to_have_count(0)


async def test_a_link_from_another_site_keeps_the_session(page: Page, live: LiveServer) -> None:
    """The SameSite=Strict cookie is not sent when a link elsewhere is followed: that visit
    must not be taken for a signed-out one, which replaced the session in every tab."""
    await create_principal(live.context, "alice")
    elsewhere = "https://chat.elsewhere.test/"
    link = f'<a href="{live.url}/console/keys/new?from=chat">the key form</a>'
    await page.route(elsewhere, lambda route: route.fulfill(body=link, content_type="text/html"))

    # Signed out, the link ends on the sign-in page, as before.
    await page.goto(elsewhere)
    await page.get_by_role("link", name="the key form").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    await sign_in(page, "alice")
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    cookies = await page.context.cookies()
    session = next(c["value"] for c in cookies if c["name"] == "keyservice_console")
    await page.goto(elsewhere)
    await page.get_by_role("link", name="the key form").click()
    await expect(page.get_by_role("heading", name="Generate API key")).to_be_visible()
    assert page.url == f"{live.url}/console/keys/new?from=chat"
    cookies = await page.context.cookies()
    assert next(c["value"] for c in cookies if c["name"] == "keyservice_console") == session
    # Still signed in for a page opened directly, in this tab or any other.
    await page.goto("/console/keys")
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()

    # A form another site posts here (no cookie, no token) changes nothing, the session
    # included: it is not ended by the answer.
    forged = (
        f'<form method="post" action="{live.url}/console/keys">'
        '<input name="name" value="forged"><button>Send</button></form>'
    )
    await page.route(
        f"{elsewhere}forged", lambda route: route.fulfill(body=forged, content_type="text/html")
    )
    await page.goto(f"{elsewhere}forged")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    await expect(page.get_by_text("You have no API keys yet.")).to_be_visible()
    cookies = await page.context.cookies()
    assert next(c["value"] for c in cookies if c["name"] == "keyservice_console") == session


async def test_reloading_the_new_key_page_creates_no_second_key(
    page: Page, live: LiveServer, http: httpx.AsyncClient
) -> None:
    from sqlalchemy import func, select

    from keyservice.api_keys.models import ApiKey

    alice = await create_principal(live.context, "alice")
    await sign_in(page, "alice")
    await page.goto("/console/keys/new")
    await page.get_by_label("Name", exact=True).fill("ci-bot")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Create key").click()
    assert (await posted.value).status == 200
    api_key = await page.get_by_label("API key", exact=True).input_value()
    assert api_key

    # Reloading a POST's answer sends the form again (Playwright accepts the browser's
    # "resubmit?" prompt): it is answered, but creates nothing and shows no secret.
    response = await page.reload()
    assert response is not None and response.request.method == "POST"
    assert response.status == 409
    assert "no-store" in (await response.all_headers())["cache-control"]
    await expect(page.get_by_role("heading", name="Key already created")).to_be_visible()
    await expect(page.get_by_label("API key", exact=True)).to_have_count(0)
    assert api_key not in await page.content() and api_key not in page.url
    async with live.context.database.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(ApiKey).where(ApiKey.principal_id == alice.id)
        )
    assert count == 1
    assert (await exchange(http, api_key)).status_code == 200  # the key shown is the one

    await page.get_by_role("link", name="Back to the API keys").click()
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    await expect(page.get_by_role("row", name="ci-bot")).to_have_count(1)


async def _double_click_held(page: Page, url: str, button_name: str) -> list[str]:
    """Click a form's button twice with the first POST held until the second click is made,
    as on a slow network; return the URLs of the POSTs the browser sent."""
    posts: list[str] = []
    second_click_made = asyncio.Event()

    async def hold(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        posts.append(route.request.url)
        await second_click_made.wait()
        with contextlib.suppress(Error):  # a send the browser gave up on cannot go on
            await route.continue_()

    await page.route(url, hold)
    button = page.get_by_role("button", name=button_name)
    await button.scroll_into_view_if_needed()
    box = await button.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    await page.mouse.click(x, y)  # the mouse, not a locator: those wait for the navigation
    for _ in range(100):
        if posts:
            break
        await asyncio.sleep(0.02)
    await page.mouse.click(x, y)
    await asyncio.sleep(0.3)  # a second send, if any, reaches the route by then
    second_click_made.set()
    return posts


async def test_a_double_click_on_create_shows_the_one_new_key(
    page: Page, live: LiveServer, http: httpx.AsyncClient
) -> None:
    """The browser shows the answer to the last send of a form: a double click's second
    send (refused, "Key already created") would hide the first's secret for good."""
    from sqlalchemy import func, select

    from keyservice.api_keys.models import ApiKey

    alice = await create_principal(live.context, "alice")
    await sign_in(page, "alice")
    await page.goto("/console/keys/new")
    await page.get_by_label("Name", exact=True).fill("ci-bot")
    posts = await _double_click_held(page, "**/console/keys", "Create key")
    await expect(page.get_by_label("API key", exact=True)).to_be_visible()
    api_key = await page.get_by_label("API key", exact=True).input_value()
    assert len(posts) == 1
    async with live.context.database.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(ApiKey).where(ApiKey.principal_id == alice.id)
        )
    assert count == 1
    assert (await exchange(http, api_key)).status_code == 200


async def test_a_double_click_on_create_user_shows_it_created(page: Page, live: LiveServer) -> None:
    """Any console form goes once: the second send of a new user would answer that the
    name is taken, though the first made it."""
    from sqlalchemy import func, select

    await create_principal(live.context, "root", permissions=["admin"])
    await sign_in(page, "root")
    await page.goto("/console/admin/users")
    await page.get_by_label("Username").fill("bob")
    await page.get_by_label("Password").fill("bob's long password")
    posts = await _double_click_held(page, "**/console/admin/users", "Create user")
    await expect(page.get_by_text("User bob created.")).to_be_visible()
    assert len(posts) == 1
    async with live.context.database.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(Principal).where(Principal.name == "bob")
        )
    assert count == 1


async def test_a_cookie_saved_before_sign_out_lands_on_sign_in_elsewhere(
    page: Page, live: LiveServer, browser: Browser
) -> None:
    """Sign out ends the session on the server: its cookie, copied into another browser
    profile before the sign-out, no longer opens the console there."""
    await create_principal(live.context, "alice")
    await sign_in(page, "alice")
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    saved = [c for c in await page.context.cookies() if c["name"] == "keyservice_console"]
    assert len(saved) == 1

    elsewhere = await browser.new_context(base_url=live.url)
    try:
        await elsewhere.add_cookies(saved)  # type: ignore[arg-type]
        tab = await elsewhere.new_page()
        await tab.goto("/console/keys")
        await expect(tab.get_by_role("heading", name="API keys")).to_be_visible()

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

        await tab.goto("/console/keys")
        await expect(tab.get_by_role("heading", name="Sign in")).to_be_visible()
        await expect(tab.get_by_text("This session was signed out")).to_be_visible()
        assert tab.url == f"{live.url}/console/login?session=signed-out"
        # The notice is read with the field that has the focus, JavaScript or not.
        username = tab.get_by_label("Username")
        await expect(username).to_be_focused()
        await expect(username).to_have_accessible_description(
            re.compile("This session was signed out")
        )
        kept = [c["value"] for c in await elsewhere.cookies() if c["name"] == "keyservice_console"]
        assert saved[0]["value"] not in kept  # deleted; a fresh signed-out session instead
    finally:
        await elsewhere.close()
