"""Every console page passes axe-core's WCAG 2.0/2.1 A and AA rules in real Chromium.

axe-playwright-python bundles Deque's axe-core and injects it with `page.evaluate` (not a
<script> tag, so the console's Content-Security-Policy does not stand in the way). Pages are
checked with data on them: keys (one expiring soon, so the warning banner shows), a device
with a key, an added scope and audit events; forms also with their errors shown.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Page, expect
from sqlalchemy import delete as sa_delete

from keyservice.database import utcnow
from keyservice.principals.models import Principal
from keyservice.scopes.models import Scope
from tests.console.conftest import LiveServer, sign_in
from tests.factories import add_scope, create_principal, service_key, set_key

pytestmark = pytest.mark.browser

WCAG_A_AA = {
    "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
    "resultTypes": ["violations"],  # passing elements are not listed in full: faster
}

# Rules switched off for one page only, each with the reason. Keep this empty unless a rule
# is a false positive there for a reason that is written down.
DISABLED_RULES: dict[str, list[str]] = {}

DESKTOP = (1280, 720)  # Playwright's default viewport
PHONE = (375, 740)
MAX_NODES = 5  # failing elements listed per rule and page

axe = Axe()


def report(page_name: str, violations: list[dict[str, Any]]) -> str:
    """One readable block per page: each rule broken, its impact, help, and where."""
    lines = [f"{page_name}:"]
    for violation in violations:
        lines.append(
            f"  {violation['id']} ({violation['impact']}): {violation['help']}"
            f"  [{violation['helpUrl']}]"
        )
        nodes = violation["nodes"]
        for node in nodes[:MAX_NODES]:
            target = " ".join(str(part) for part in node["target"])
            lines.append(f"    - {target}")
            summary = node.get("failureSummary")
            if summary:
                lines.extend(f"        {line}" for line in summary.splitlines())
        if len(nodes) > MAX_NODES:
            lines.append(f"    ... and {len(nodes) - MAX_NODES} more elements")
    return "\n".join(lines)


class Audit:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.checked: list[str] = []
        self.failures: list[str] = []

    async def check(self, name: str) -> None:
        options: dict[str, Any] = dict(WCAG_A_AA)
        disabled = DISABLED_RULES.get(name)
        if disabled:
            options["rules"] = {rule: {"enabled": False} for rule in disabled}
        self.checked.append(name)
        # At desktop width, then at phone width, where tables turn into cards.
        for width, height in (DESKTOP, PHONE):
            await self.page.set_viewport_size({"width": width, "height": height})
            results = await axe.run(self.page, options=options)
            violations = results.response["violations"]
            if violations:
                where = f"{name}, {width}px wide ({self.page.url})"
                self.failures.append(report(where, violations))
        await self.page.set_viewport_size({"width": DESKTOP[0], "height": DESKTOP[1]})

    def assert_clean(self) -> None:
        assert self.checked
        if self.failures:
            pytest.fail(
                f"axe-core found accessibility violations in {len(self.failures)} checks of "
                f"{len(self.checked)} pages:\n\n" + "\n\n".join(self.failures),
                pytrace=False,
            )


# The sweep judges the markup each page renders, which no query of either database shapes;
# the page flows themselves run on both backends (test_browser.py). Once is enough here,
# and saves ~27 s of CI (the suite ran 19 of its 20 minutes on a slow machine).
@pytest.mark.sqlite_only
async def test_every_console_page_passes_axe(page: Page, live: LiveServer) -> None:
    await add_scope(live.context, "projects:read", "Read projects")
    await add_scope(live.context, "sensors:write", "Send readings")
    root = await create_principal(
        live.context, "root", permissions=["admin", "api_keys:manage", "projects:read"]
    )
    await create_principal(live.context, "alice")
    deploy = (await service_key(live.context, root, "deploy", description="Deploys the site")).id
    await service_key(live.context, root, "nightly", expires_at=utcnow() + timedelta(days=3))
    reader = (
        await service_key(
            live.context, root, "reader", scopes=["projects:read"], allowed_ips=["10.0.0.0/8"]
        )
    ).id
    lapsed = (await service_key(live.context, root, "lapsed")).id
    await set_key(live.context, lapsed, expires_at=utcnow() - timedelta(hours=1))
    device = await create_principal(
        live.context, "sensor-1", kind="device", permissions=["sensors:write"]
    )
    station = (await service_key(live.context, device, "station")).id
    audit = Audit(page)

    # Signed out.
    await page.goto("/console/login")
    await audit.check("sign-in")
    await page.goto("/console/login?session=ended")
    await audit.check("sign-in after the session ended")
    await sign_in(page, "root", "not the password")
    await expect(page.get_by_text("Wrong username or password")).to_be_visible()
    await audit.check("sign-in with an error")

    await sign_in(page, "root")
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    await expect(page.get_by_role("status", name="API keys that need attention")).to_be_visible()
    await audit.check("own keys")

    await page.get_by_role("row", name="deploy").get_by_role("button", name="Delete").click()
    await expect(page.get_by_role("dialog")).to_be_visible()
    await audit.check("own keys, delete dialog open")
    await page.keyboard.press("Escape")

    await page.goto("/console/keys/new")
    await audit.check("new key form")
    await page.get_by_label("Name", exact=True).fill("")
    await page.get_by_label("Allowed IPs").fill("not-an-address")
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_label("Allowed IPs")).to_have_attribute("aria-invalid", "true")
    await audit.check("new key form with errors")
    await page.get_by_label("Name", exact=True).fill("ci-bot")
    await page.get_by_label("projects:read", exact=True).check()
    await page.get_by_label("Allowed IPs").fill("127.0.0.1/32")
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_label("API key", exact=True)).to_be_visible()
    await audit.check("show-once new key")
    await page.reload()  # the form sent again: answered, nothing created
    await expect(page.get_by_role("heading", name="Key already created")).to_be_visible()
    await audit.check("form already sent")

    await page.goto(f"/console/keys/{deploy}/edit")
    await expect(page.get_by_role("heading", name="Edit API key")).to_be_visible()
    await audit.check("edit key form")
    await page.get_by_label("Name", exact=True).fill("")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    await audit.check("edit key form with errors")
    await page.goto(f"/console/keys/{lapsed}/edit")
    await expect(page.get_by_role("heading", name="Key expired")).to_be_visible()
    await audit.check("edit refused: key expired")

    await page.goto(f"/console/keys/{reader}/rotate")
    await expect(page.get_by_role("heading", name="Rotate API key")).to_be_visible()
    await audit.check("rotate")
    await page.get_by_role("button", name="Rotate key").click()
    await expect(page.get_by_role("heading", name="Your rotated API key")).to_be_visible()
    await audit.check("show-once rotated key")
    await page.goto(f"/console/keys/{reader}/rotate")
    await expect(page.get_by_role("heading", name="Key already being replaced")).to_be_visible()
    await audit.check("rotate refused: key being replaced")
    await page.goto(f"/console/keys/{reader}/edit")
    await expect(page.get_by_text("cannot be moved")).to_be_visible()
    await audit.check("edit key form, key being replaced")

    await page.goto(f"/console/keys/{deploy}/delete")
    await audit.check("delete confirmation")
    await page.get_by_role("button", name="Delete").click()
    await expect(page.get_by_text("The key was deleted.")).to_be_visible()
    await audit.check("own keys with a notice")

    # Administration.
    await page.goto("/console/admin/users")
    await audit.check("users")
    alice = page.get_by_role("row", name="alice")
    await alice.get_by_role("link", name="Edit").click()
    await expect(page.get_by_role("heading", name="User alice")).to_be_visible()
    await audit.check("user")
    await page.goto(f"/console/admin/users/{root.id}")
    await audit.check("user (self)")
    await page.goto("/console/admin/devices")
    await audit.check("devices")
    await page.goto(f"/console/admin/devices/{device.id}")
    await audit.check("device")
    await page.goto(f"/console/admin/devices/{device.id}/keys/new")
    await audit.check("device key form")
    await page.goto(f"/console/admin/devices/{device.id}/keys/{station}/edit")
    await audit.check("device key edit form")
    await page.goto("/console/admin/keys")
    await audit.check("all keys")
    await page.goto("/console/admin/keys?client_id=nope")
    await audit.check("all keys with a filter error")
    await page.goto("/console/admin/scopes")
    await audit.check("scopes")
    await page.goto("/console/admin/scopes/delete?name=projects:read")
    await audit.check("scope delete refused (in use)")
    await add_scope(live.context, "unused:scope", "Nobody holds it")
    await page.goto("/console/admin/scopes/delete?name=unused:scope")
    await audit.check("scope delete confirmation")
    await page.goto("/console/admin/audit")
    await expect(page.get_by_role("row").filter(has_text="api_key.created").first).to_be_visible()
    await audit.check("audit log")
    await page.goto("/console/password")
    await audit.check("password form")
    await page.get_by_label("Current password").fill("not the password")
    await page.get_by_label("New password", exact=True).fill("a new and longer passphrase")
    await page.get_by_label("New password again").fill("a new and longer passphrase")
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_role("alert")).to_contain_text("The current password is wrong.")
    await audit.check("password form with an error")

    response = await page.goto("/console/no-such-page")
    assert response is not None and response.status == 404
    await audit.check("404")

    await page.goto("/console/keys")
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, "alice")
    response = await page.goto("/console/admin/users")
    assert response is not None and response.status == 403
    await audit.check("403")

    audit.assert_clean()


# WCAG 2.2 1.4.11 (non-text contrast): the focus ring and the edge of a text field must
# stand out 3:1 from what is around them. axe-core checks text contrast only, so these are
# measured here from the colours Chromium computes. The page runs the arithmetic of WCAG's
# relative luminance on the computed rgb() values; a transparent background is looked up
# on the ancestors, as it shows through.
CONTRAST_JS = """
(element) => {
  const rgb = (value) => {
    const m = value.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const parts = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return { r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1 };
  };
  const luminance = (c) => {
    const lin = (v) => {
      v /= 255;
      return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  };
  const ratio = (a, b) => {
    const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const behind = (node) => {
    for (let n = node; n; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c && c.a === 1) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const style = getComputedStyle(element);
  return {
    outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2
      ? ratio(rgb(style.outlineColor), behind(element.parentElement)) : 0,
    border: ratio(rgb(style.borderTopColor), behind(element.parentElement)),
    what: element.outerHTML.slice(0, 80),
  };
}
"""


async def signed_in_admin(page: Page, live: LiveServer) -> Principal:
    root = await create_principal(live.context, "root", permissions=["admin", "api_keys:manage"])
    await sign_in(page, "root")
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    return root


async def test_focus_ring_contrasts_3_to_1(page: Page, live: LiveServer) -> None:
    await signed_in_admin(page, live)
    low: list[str] = []
    for path in ("/console/keys/new", "/console/admin/keys"):
        await page.goto(path)
        # Keyboard focus on every control in turn, from the skip link on: the ring shows
        # on the dark header, the page and the cards.
        await page.locator("body").focus()
        for _ in range(40):
            await page.keyboard.press("Tab")
            focused = page.locator(":focus")
            if await focused.count() == 0:
                break
            measured = await focused.evaluate(CONTRAST_JS)
            if measured["outline"] < 3:
                low.append(f"{path} {measured['outline']:.2f}: {measured['what']}")
    assert not low, "focus ring below 3:1 against the background:\n" + "\n".join(low)


async def test_text_field_and_button_edges_contrast_3_to_1(page: Page, live: LiveServer) -> None:
    """A text field's edge and a button's (the red one of Delete and Revoke too) stand out
    3:1 or more."""
    root = await signed_in_admin(page, live)
    await service_key(live.context, root, "deploy")  # a row with a red-edged Revoke
    low: list[str] = []
    for path in ("/console/keys/new", "/console/admin/keys", "/console/password"):
        await page.goto(path)
        fields = page.locator(
            "input:visible:not([type=checkbox]), textarea:visible, select:visible"
        )
        assert await fields.count()
        # Every button with an edge (a link-styled one has none), the dialog's when open.
        buttons = page.locator("button:visible:not(.link), a.button:visible")
        if path == "/console/admin/keys":
            await expect(page.locator(".danger-outline:visible")).to_have_count(1)
        for controls in (fields, buttons):
            for index in range(await controls.count()):
                measured = await controls.nth(index).evaluate(CONTRAST_JS)
                if measured["border"] < 3:
                    low.append(f"{path} {measured['border']:.2f}: {measured['what']}")
    assert not low, "field or button edge below 3:1 against the background:\n" + "\n".join(low)


async def test_an_error_on_a_group_of_boxes_takes_focus_there(page: Page, live: LiveServer) -> None:
    """A refusal of the permission boxes alone (one was taken out of the catalog while the
    form was open) is read out: focus goes to the first box of the group marked invalid,
    whose description is the message, as it goes to a text field with an error."""
    await add_scope(live.context, "old:scope", "About to go")
    await signed_in_admin(page, live)
    await page.goto("/console/admin/devices")
    await page.get_by_label("Name", exact=True).fill("sensor-1")
    await page.get_by_label("old:scope", exact=True).check()
    async with live.context.database.sessionmaker() as session:
        await session.execute(sa_delete(Scope).where(Scope.name == "old:scope"))
        await session.commit()
    await page.get_by_role("button", name="Register device").click()
    group = page.get_by_role("group", name="Permissions")
    await expect(group).to_have_attribute("aria-invalid", "true")
    await expect(group).to_have_accessible_description(re.compile("Unknown permission"))
    await expect(group.locator(":focus")).to_have_count(1)


async def test_the_error_summary_is_read_once_with_the_page(page: Page, live: LiveServer) -> None:
    """The error summary (#form-errors) holds what no one field is wrong about. It takes the
    focus when no field has an error; else the field with one does, and is described by
    its own message and the summary's, so that both are read, each once."""
    await signed_in_admin(page, live)
    await page.goto("/console/admin/keys?client_id=nope&limit=0")
    summary = page.locator("#form-errors")
    await expect(summary).to_contain_text("The page size (limit) must be a number")
    field = page.get_by_label("Client ID")
    await expect(field).to_be_focused()
    await expect(field).to_have_accessible_description(
        re.compile(r"kc_.*The page size \(limit\) must be a number")
    )
    # Not a live region as well: focus already reads it, an alert would say it again.
    await expect(summary).not_to_have_attribute("role", re.compile("alert|status"))
    await expect(summary).not_to_have_attribute("aria-live", re.compile("."))

    await page.goto("/console/admin/keys?limit=0")
    await expect(summary).to_be_focused()


async def test_what_opens_another_page_is_a_link(page: Page, live: LiveServer) -> None:
    """A screen reader says "link" for what goes to another page and "button" for what acts
    on this one, so a control styled as a button but going elsewhere stays a link."""
    await create_principal(live.context, "alice", permissions=["api_keys:manage"])
    await sign_in(page, "alice")
    generate = page.get_by_role("link", name="Generate API key")
    await expect(generate).to_have_attribute("href", "/console/keys/new")
    await generate.focus()
    await page.keyboard.press("Enter")
    await page.get_by_label("Name", exact=True).fill("ci-bot")
    await page.get_by_role("button", name="Create key").click()
    done = page.get_by_role("link", name="Done")
    await expect(done).to_have_attribute("href", "/console/keys")
    # No <a href> anywhere in the console claims to be a button.
    for path in ("/console/keys", "/console/keys/new"):
        await page.goto(path)
        await expect(page.locator("a[href][role=button]")).to_have_count(0)
