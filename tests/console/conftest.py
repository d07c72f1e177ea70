"""Console fixtures: the real app under uvicorn on a loopback port, and headless Chromium.

Chromium is Debian's (/usr/bin/chromium), never a downloaded one. One browser per test:
Playwright objects belong to the event loop that made them, and the `context` fixture
(SQLite and PostgreSQL) lives in each test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from keyservice.console.session import SessionCodec
from keyservice.context import AppContext
from keyservice.main import create_app
from tests.factories import PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

expect.set_options(timeout=10_000)


@dataclass
class LiveServer:
    url: str
    context: AppContext


@contextlib.asynccontextmanager
async def serve(context: AppContext) -> AsyncIterator[str]:
    """Run create_app(context) under uvicorn on 127.0.0.1 and a free port; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(context=context),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(15):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before starting")
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


@pytest.fixture
async def live(context: AppContext) -> AsyncIterator[LiveServer]:
    async with serve(context) as url:
        yield LiveServer(url=url, context=context)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def browser_context(browser: Browser, live: LiveServer) -> AsyncIterator[BrowserContext]:
    bctx = await browser.new_context(base_url=live.url, accept_downloads=True)
    await bctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    try:
        yield bctx
    finally:
        await bctx.close()


@pytest.fixture
async def page(browser_context: BrowserContext) -> AsyncIterator[Page]:
    """A tab that fails the test on a script error or a Content-Security-Policy violation."""
    tab = await browser_context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    yield tab
    assert not problems, problems


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url) as client:
        yield client


async def sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    await page.goto("/console/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def textarea_value(written: str) -> str:
    """A textarea's value as a browser parses it from the page: CR and CRLF read as LF, and
    a line break right after the start tag dropped (HTML, "textarea" in the parser rules)."""
    value = written.replace("\r\n", "\n").replace("\r", "\n")
    return value.removeprefix("\n")


def has_secret(value: str, *pages: Any) -> bool:
    return any(value in text for text in pages)


def seal_payload(codec: SessionCodec, payload: dict[str, Any]) -> str:
    """A cookie sealed by `codec` around any payload (an older release's, a malformed one)."""
    import base64
    import json

    from keyservice.console import session as session_module

    nonce = b"n" * 12
    raw = nonce + codec._aead.encrypt(nonce, json.dumps(payload).encode(), session_module._AAD)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
