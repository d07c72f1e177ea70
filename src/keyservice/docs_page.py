"""The OpenAPI docs page (/docs): Swagger UI at a pinned version, its files checked by hash.

FastAPI's own page loads `swagger-ui-dist@5` (whatever 5.x the CDN serves that day) with
no Subresource Integrity, and a favicon from FastAPI's site: a script chosen by a third
party ran in this service's origin, the console's, where a same-origin request carries
the console's session cookie (SameSite=Strict, Path=/console), so a bad CDN file could read
a signed-in admin's console pages and send its forms. Here the version is exact, the
browser refuses the script and the stylesheet unless their bytes match the hashes below
(SRI), and a Content-Security-Policy allows those two files and the page's own inline
script, nothing else from elsewhere. The favicon is none.

The page still needs the CDN (it does not work offline); /openapi.json does not.
Upgrading: set SWAGGER_UI_VERSION and the two hashes of that version's npm package files,
`openssl dgst -sha384 -binary swagger-ui-bundle.js | openssl base64 -A` (and the CSS).
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

SWAGGER_UI_VERSION = "5.36.0"
_BASE = f"https://cdn.jsdelivr.net/npm/swagger-ui-dist@{SWAGGER_UI_VERSION}"
SWAGGER_JS = f"{_BASE}/swagger-ui-bundle.js"
SWAGGER_CSS = f"{_BASE}/swagger-ui.css"
SWAGGER_JS_SRI = "sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+"
SWAGGER_CSS_SRI = "sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc"
NO_FAVICON = "data:,"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _with_integrity(html: str, attribute: str, url: str, digest: str) -> str:
    needle = f'{attribute}="{url}"'
    if html.count(needle) != 1:  # FastAPI changed its page: fail at start-up, not silently
        raise RuntimeError(f"the docs page does not load {url} exactly once")
    return html.replace(needle, f'{needle} integrity="{digest}" crossorigin="anonymous"')


def docs_page(app: FastAPI) -> tuple[bytes, str]:
    """The page's HTML and its Content-Security-Policy, built once per app."""
    assert app.openapi_url is not None
    html = bytes(
        get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
            swagger_js_url=SWAGGER_JS,
            swagger_css_url=SWAGGER_CSS,
            swagger_favicon_url=NO_FAVICON,
        ).body
    ).decode()
    html = _with_integrity(html, "src", SWAGGER_JS, SWAGGER_JS_SRI)
    html = _with_integrity(html, "href", SWAGGER_CSS, SWAGGER_CSS_SRI)
    inline = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {SWAGGER_JS} {' '.join(inline)}",
            # Swagger UI sets inline styles as it renders.
            f"style-src {SWAGGER_CSS} 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",  # the OpenAPI document, and "Try it out"
            "frame-ancestors 'none'",
            "form-action 'self'",
            "base-uri 'none'",
        ]
    )
    return html.encode(), csp


def replace_docs_route(app: FastAPI, routes: list[BaseRoute]) -> None:
    """Put our docs page in place of FastAPI's own /docs route in `routes`, same place."""
    html, csp = docs_page(app)
    headers = {"Content-Security-Policy": csp}

    async def swagger_ui(_request: Request) -> Response:
        return HTMLResponse(html, headers=headers)

    for index, route in enumerate(routes):
        if isinstance(route, Route) and route.path == app.docs_url:
            routes[index] = Route(app.docs_url, swagger_ui, include_in_schema=False)
            return
    raise RuntimeError("FastAPI made no docs route")
