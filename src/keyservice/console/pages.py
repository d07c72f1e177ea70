"""Rendering console pages: templates, security headers, and errors as HTML pages.

Console routes use `ConsoleRoute`, which turns every error raised below a handler (service
errors, a refused CSRF token, a missing sign-in) into an HTML page or a redirect, and puts
the console's security headers on every answer. The JSON error handlers of the API never
see a console request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyservice.audit import refusals
from keyservice.audit.refusals import CONSOLE_REFUSAL
from keyservice.console.forms import FormErrors
from keyservice.console.session import COOKIE_NAME, COOKIE_PATH, ConsoleSession
from keyservice.exceptions import KeyServiceError

log = logging.getLogger("keyservice.console")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
# X-Content-Type-Options: nosniff comes from main.py's EdgeMiddleware, on every answer.
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Console pages are personal and some show a secret once: never cache them anywhere.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _when(value: datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d")


def _textarea(value: str) -> str:
    """A textarea's text as written in the page. The HTML parser drops a line break right
    after <textarea>: a text that starts with one (a description the API set) gets another
    in front, so that the form shows, and sends back, the text as stored."""
    return "\n" + value if value.startswith(("\n", "\r")) else value


environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters["when"] = _when
environment.filters["day"] = _day
environment.filters["textarea"] = _textarea


class SignInRequired(Exception):
    """No valid session: send the browser to the sign-in page.

    `ended`: a form was posted without a session (the browser drops the cookie when the
    session's hour is over) or with one that was signed out, so the sign-in page says why
    the form was not sent. `signed_out`: a page was asked for with a session that was
    signed out (in another tab, or the cookie is a copy), which the sign-in page says.
    """

    def __init__(self, *, ended: bool = False, signed_out: bool = False) -> None:
        super().__init__()
        self.ended = ended
        self.signed_out = signed_out


class PageError(Exception):
    """Refuse with an HTML page (403 for CSRF and missing permissions, 404, ...)."""

    def __init__(self, status_code: int, title: str, message: str) -> None:
        self.status_code = status_code
        self.title = title
        self.message = message
        super().__init__(message)


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> HTMLResponse:
    """Render a template with what every page needs (the viewer, the CSRF token)."""
    values: dict[str, Any] = {
        "request": request,
        "viewer": getattr(request.state, "console_viewer", None),
        "csrf_token": _csrf_token(request),
    }
    values.update(context or {})
    if status_code >= 400:
        # What a refused form says, for its audit event (audit/refusals.py).
        request.scope[CONSOLE_REFUSAL] = _refusal(values)
    html = environment.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code)


def _refusal(values: Mapping[str, Any]) -> str:
    """What a refused page says, wherever its template shows it: a form's field errors, the
    scope row's (`edit_errors`), an error page's `message`, a deletion's `refusal`, or the
    one `error` of the password form."""
    for name in ("errors", "edit_errors"):
        errors = values.get(name)
        if isinstance(errors, FormErrors) and errors:
            return "; ".join([*errors.general, *errors.fields.values()])
    return str(values.get("message") or values.get("refusal") or values.get("error") or "")


def _csrf_token(request: Request) -> str:
    session: ConsoleSession | None = getattr(request.state, "console_session", None)
    return session.csrf if session is not None else ""


def error_page(request: Request, status_code: int, title: str, message: str) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"title": title, "message": message, "status_code": status_code},
        status_code=status_code,
    )


def _answer_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SignInRequired):
        target = "/console/login"
        if exc.ended:
            target += "?session=ended"
        elif exc.signed_out:
            target += "?session=signed-out"
        response: Response = RedirectResponse(target, status_code=303)
        if COOKIE_NAME in request.cookies:
            # Only a cookie that was sent and is no good: one the browser kept back (a
            # SameSite=Strict cookie on a visit from another site) may be a live session.
            response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH)
        return response
    if isinstance(exc, PageError):
        return error_page(request, exc.status_code, exc.title, exc.message)
    if isinstance(exc, KeyServiceError):
        if exc.status_code >= 500:
            return error_page(request, exc.status_code, "Try again shortly", exc.description)
        titles = {404: "Not found", 409: "Not possible right now", 403: "Not allowed"}
        title = titles.get(exc.status_code, "Request refused")
        return error_page(request, exc.status_code, title, exc.description)
    if isinstance(exc, RequestValidationError):
        return error_page(request, 400, "Request refused", "The request is malformed.")
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return error_page(request, 404, "Not found", "There is nothing at this address.")
        # The edge's refusals (a NUL character in a form, a body too large) say what is wrong.
        return error_page(request, exc.status_code, "Request refused", str(exc.detail))
    raise exc


def _arrived_from_another_site(request: Request) -> bool:
    """A link on another site was followed here, so the SameSite=Strict cookie was not sent.

    Answering as if signed out would replace the session (the sign-in page sets a new
    cookie, a redirect to it deletes the old one): a link in a mail, chat or wiki signed
    the person out in every tab. Such a visit gets a page that loads the same address again
    from this site, when the browser sends the cookie if there is one. Sec-Fetch-* come
    from the browser (a page cannot set them); browsers without them keep the old answer.
    """
    headers = request.headers
    return (
        request.method == "GET"
        and headers.get("sec-fetch-site") == "cross-site"
        and headers.get("sec-fetch-mode") == "navigate"
        and COOKIE_NAME not in request.cookies
    )


def _same_url(request: Request) -> str:
    """This request's path and query: same origin, so the reload counts as same-site."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


class ConsoleRoute(APIRoute):
    """An APIRoute whose errors are HTML pages and whose answers carry strict headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                if _arrived_from_another_site(request):
                    response: Response = render(
                        request, "continue.html", {"target": _same_url(request)}
                    )
                else:
                    response = await handler(request)
            except (
                SignInRequired,
                PageError,
                KeyServiceError,
                RequestValidationError,
                StarletteHTTPException,
            ) as exc:
                response = _answer_error(request, exc)
            except Exception as exc:
                from keyservice.main import _is_db_outage, loggable_path

                if not _is_db_outage(exc):
                    path = loggable_path(request.url.path)
                    log.error("unhandled %s on %s", type(exc).__name__, path, exc_info=exc)
                    response = error_page(
                        request, 500, "Something went wrong", "The error has been logged."
                    )
                else:
                    response = error_page(
                        request,
                        503,
                        "Try again shortly",
                        "The database is not answering; try again shortly.",
                    )
            if request.method == "POST" and 400 <= response.status_code < 500:
                await refusals.record_console(request, status=response.status_code)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            if response.media_type == "text/html" or response.status_code in (302, 303):
                response.headers.update(NO_STORE)
            return response

        return console_handler
