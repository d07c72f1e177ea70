"""The OpenAPI docs page loads nothing from elsewhere that the page did not pin by hash."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx


async def test_docs_page_pins_its_cdn_files_and_sets_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    html = response.text
    # Every file from another origin is at an exact version and carries its SRI hash.
    external = re.findall(r"<(?:script|link)\b[^>]*(?:src|href)=\"(?:https?:)?//[^>]*>", html)
    assert len(external) == 2, external
    for tag in external:
        assert re.search(r'integrity="sha384-[A-Za-z0-9+/]{64}"', tag), tag
        assert 'crossorigin="anonymous"' in tag, tag
        assert re.search(r"swagger-ui-dist@\d+\.\d+\.\d+/", tag), tag  # not "@5": any 5.x
    assert "fastapi.tiangolo.com" not in html  # the favicon was fetched from there

    policy = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["connect-src"] == "'self'"
    script_sources = directives["script-src"].split()
    assert "'unsafe-inline'" not in script_sources and "https:" not in script_sources
    # The page's own inline script is allowed by its hash, and only it.
    inline = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in script_sources
    assert [s for s in script_sources if s.startswith("https://")] == [
        re.search(r'<script src="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    ]
