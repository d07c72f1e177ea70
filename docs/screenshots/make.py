"""Take the console screenshots in this directory: `.venv/bin/python docs/screenshots/make.py`.

Starts the app on a throwaway SQLite database (loopback only), seeds a few users, keys and
a device, and drives Debian's headless Chromium (never a downloaded browser). Any key you
see in a picture belongs to that deleted database.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import uvicorn
from playwright.async_api import Page, async_playwright

from keyservice import migrations
from keyservice.api_keys import service as api_keys
from keyservice.api_keys.schemas import ApiKeyCreate
from keyservice.config import Settings
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.devices import service as devices
from keyservice.main import create_app
from keyservice.scopes import service as scopes
from keyservice.users import service as users

HERE = Path(__file__).parent
PASSWORD = "screenshots-only-password"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def seed(ctx: AppContext) -> None:
    async with ctx.database.sessionmaker() as session:
        for name, description in [
            ("projects:read", "Read projects and their settings"),
            ("projects:write", "Create and change projects"),
            ("billing:read", "Read invoices"),
        ]:
            await scopes.create(
                session,
                name=name,
                description=description,
                actor=None,
                ip=None,
                names=ctx.scope_names,
            )
        admin = await users.create(
            session,
            username="ada",
            password=PASSWORD,
            permissions=["admin", "projects:read", "projects:write", "billing:read"],
            actor="bootstrap",
            ip=None,
        )
        await users.create(
            session,
            username="grace",
            password=PASSWORD,
            permissions=["api_keys:manage", "projects:read"],
            actor="user:ada",
            ip="127.0.0.1",
        )
        bob = await users.create(
            session,
            username="bob",
            password=PASSWORD,
            permissions=["api_keys:manage"],
            actor="user:ada",
            ip="127.0.0.1",
        )
        await users.update(
            session, ctx, user_id=bob.id, disabled=True, actor="user:ada", ip="127.0.0.1"
        )
        for name, fields in [
            ("ci-deploy", {"scopes": ["projects:read", "projects:write"]}),
            ("billing-export", {"scopes": ["billing:read"], "allowed_ips": ["203.0.113.0/24"]}),
            ("nightly-report", {"expires_at": utcnow() + timedelta(days=3)}),
        ]:
            await api_keys.create(
                ctx,
                session,
                owner=admin,
                data=ApiKeyCreate(name=name, description="", **fields),  # type: ignore[arg-type]
                actor="user:ada",
                ip="127.0.0.1",
            )
        device = await devices.create(
            session,
            name="weather-station-7",
            description="Roof sensors, building B",
            permissions=["projects:write"],
            actor="user:ada",
            ip="127.0.0.1",
        )
        await devices.create_key(
            ctx,
            session,
            device_id=device.id,
            data=ApiKeyCreate(name="uplink"),
            actor="user:ada",
            ip="127.0.0.1",
        )


async def shoot(page: Page, name: str) -> None:
    await page.screenshot(path=str(HERE / f"{name}.png"), full_page=True)
    print("wrote", HERE / f"{name}.png")  # noqa: T201


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/keyservice.db"
        await asyncio.to_thread(migrations.upgrade, url)
        settings = Settings(database_url=url, secret_key="s" * 48, data_dir=Path(tmp))
        ctx = AppContext(settings)
        await seed(ctx)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(
            uvicorn.Config(create_app(context=ctx), log_level="warning", log_config=None)
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.05)
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                desk = await browser.new_context(
                    base_url=base, viewport={"width": 1200, "height": 760}
                )
                page = await desk.new_page()
                await page.goto("/console/login")
                await shoot(page, "sign-in")
                await page.get_by_label("Username").fill("ada")
                await page.get_by_label("Password").fill(PASSWORD)
                await page.get_by_role("button", name="Sign in").click()
                await page.get_by_role("heading", name="API keys").wait_for()
                await shoot(page, "api-keys")
                await page.get_by_role("button", name="Generate API key").click()
                await page.get_by_label("Name", exact=True).fill("staging-deploy")
                await page.get_by_label("projects:read", exact=True).check()
                await shoot(page, "generate")
                await page.get_by_role("button", name="Create key").click()
                await page.get_by_label("API key", exact=True).wait_for()
                await shoot(page, "show-once")
                await page.get_by_role("button", name="Done").click()
                await (
                    page.get_by_role("row", name="ci-deploy")
                    .get_by_role("button", name="Delete")
                    .click()
                )
                await page.get_by_role("dialog").wait_for()
                await shoot(page, "delete-dialog")
                await page.keyboard.press("Escape")
                await (
                    page.get_by_role("row", name="ci-deploy")
                    .get_by_role("link", name="Edit")
                    .click()
                )
                await page.get_by_role("button", name="Save changes").wait_for()
                await shoot(page, "edit-key")
                await page.goto("/console/password")
                await shoot(page, "password")
                await page.goto("/console/admin/users")
                await shoot(page, "admin-users")
                await page.goto("/console/admin/devices")
                await page.get_by_role("link", name="Manage").first.click()
                await shoot(page, "admin-device")
                await page.goto("/console/admin/audit")
                await shoot(page, "audit-log")
                phone = await browser.new_context(
                    base_url=base,
                    viewport={"width": 390, "height": 844},
                    device_scale_factor=2,
                    is_mobile=True,
                    has_touch=True,
                )
                await phone.add_cookies(await desk.cookies())
                mobile = await phone.new_page()
                await mobile.goto("/console/keys")
                await shoot(mobile, "api-keys-phone")
                await browser.close()
        finally:
            server.should_exit = True
            await task
            sock.close()
            await ctx.database.dispose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
