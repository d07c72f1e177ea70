"""Console dependencies: the session cookie, the signed-in viewer, CSRF-checked forms."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response
from starlette.datastructures import FormData

from keyservice.console.pages import PageError, SignInRequired
from keyservice.console.service import signed_out
from keyservice.console.session import (
    COOKIE_NAME,
    COOKIE_PATH,
    ConsoleSession,
    SessionCodec,
    new_session,
)
from keyservice.dependencies import ContextDep, RequestIp, SessionDep
from keyservice.exceptions import InvalidToken
from keyservice.principals.models import Principal
from keyservice.principals.schemas import MeRead
from keyservice.principals.service import describe
from keyservice.scopes.models import ADMIN, API_KEYS_MANAGE


def codec(request: Request) -> SessionCodec:
    """The app's cookie codec, built once (deriving the key reads the server secret)."""
    state = request.app.state
    found: SessionCodec | None = getattr(state, "console_codec", None)
    if found is None:
        found = SessionCodec(state.context.settings.server_secret())
        state.console_codec = found
    return found


def read_session(request: Request) -> ConsoleSession | None:
    """Open the session cookie (None if absent, forged or expired) and remember it."""
    if hasattr(request.state, "console_session"):
        cached: ConsoleSession | None = request.state.console_session
        return cached
    session = codec(request).open(request.cookies.get(COOKIE_NAME))
    request.state.console_session = session
    return session


def start_anonymous(request: Request) -> ConsoleSession:
    """Start a signed-out session (its cookie is written with the response)."""
    session = new_session(None)
    request.state.console_session = session
    return session


def secure_cookie(request: Request) -> bool:
    """Whether the session cookie is Secure: the request came over HTTPS, or the service's
    public URL (KEYSERVICE_ISSUER) is an https one.

    Behind the TLS-terminating proxy SECURITY.md asks for, the request reaches us over plain
    HTTP (uvicorn's proxy-header handling is off), so its own scheme alone left the cookie
    without Secure exactly where it matters: a browser then sent the session in clear to
    any http:// address of the host (a typed or linked one, before the proxy's redirect).
    """
    if request.url.scheme == "https":
        return True
    issuer: str = request.app.state.context.settings.effective_issuer
    return urlsplit(issuer).scheme == "https"  # the scheme in any case (RFC 3986 §3.1)


def write_session(request: Request, response: Response, session: ConsoleSession) -> None:
    request.state.console_session = session
    response.set_cookie(
        COOKIE_NAME,
        codec(request).seal(session),
        max_age=max(1, session.expires_at - int(time.time())),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure_cookie(request),
    )


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")


IpDep = RequestIp


@dataclass(frozen=True)
class Viewer:
    """The signed-in user, re-read from the database on every request."""

    principal: Principal
    me: MeRead

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset(self.me.permissions)

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.permissions

    @property
    def can_manage_keys(self) -> bool:
        return API_KEYS_MANAGE in self.permissions

    @property
    def actor(self) -> str:
        return f"user:{self.principal.name}"


async def checked_form(request: Request) -> FormData:
    """Parse a posted form and refuse it (403) unless it carries this session's CSRF token."""
    session = read_session(request)
    if session is None:
        # No session at all: its hour is over (or it was never there). "Form refused ... did
        # not come from a page of this console" would blame the person; say what happened.
        raise SignInRequired(ended=True)
    if request.headers.get("sec-fetch-site") in ("same-site", "cross-site"):
        # Sent by a page of another origin: a sibling subdomain (the SameSite=Strict cookie
        # goes along), or a site that planted a session of its own whose token it knows
        # (cookie tossing, a login CSRF). The browser sets the header; a page cannot.
        raise PageError(
            403,
            "Form refused",
            "This form was sent from a page of another site, not from this console. "
            "Open the console at its own address and try again.",
        )
    form = await request.form()
    token = form.get("csrf_token")
    if not session.csrf_matches(token if isinstance(token, str) else None):
        raise PageError(
            403,
            "Form refused",
            "This form did not come from a page of this console, or your session has "
            "changed since it was shown. Go back, reload the page and try again.",
        )
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]


async def current_viewer(request: Request, session: SessionDep, context: ContextDep) -> Viewer:
    """The signed-in user; anyone else is sent to the sign-in page."""
    console_session = read_session(request)
    if console_session is None or console_session.principal_id is None:
        raise SignInRequired()
    if await signed_out(session, codec(request), console_session):
        # A form posted with it was not saved: the page says so, as for an expired session.
        raise SignInRequired(ended=request.method == "POST", signed_out=True)
    try:
        me = await describe(
            session, principal_id=console_session.principal_id, settings=context.settings
        )
    except InvalidToken:
        raise SignInRequired() from None
    principal = await session.get(Principal, console_session.principal_id)
    if me.type != "user" or principal is None:
        raise SignInRequired()
    if not codec(request).current(console_session, principal.password_hash):
        raise SignInRequired()  # the password changed since this session signed in
    if principal.tokens_revoked(console_session.signed_in_at):
        raise SignInRequired()  # signed in before the user was disabled (and re-enabled)
    viewer = Viewer(principal=principal, me=me)
    request.state.console_viewer = viewer
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


async def key_manager(viewer: ViewerDep) -> Viewer:
    """A viewer who may manage their own keys (`api_keys:manage`)."""
    if not viewer.can_manage_keys:
        raise PageError(
            403,
            "Not allowed",
            "Managing API keys needs the permission 'api_keys:manage'; ask an administrator.",
        )
    return viewer


async def admin_viewer(viewer: ViewerDep) -> Viewer:
    """A viewer holding `admin`; anyone else gets a 403 page."""
    if not viewer.is_admin:
        raise PageError(403, "Not allowed", "This page is for administrators.")
    return viewer


KeyManagerDep = Annotated[Viewer, Depends(key_manager)]
AdminDep = Annotated[Viewer, Depends(admin_viewer)]
