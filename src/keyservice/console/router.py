"""The web console: server-rendered pages under /console (sign-in, own keys, admin pages)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyUpdate
from keyservice.console import service
from keyservice.console.admin import router as admin_router
from keyservice.console.dependencies import (
    CheckedForm,
    IpDep,
    KeyManagerDep,
    ViewerDep,
    clear_session,
    codec,
    read_session,
    start_anonymous,
    write_session,
)
from keyservice.console.forms import text
from keyservice.console.keys import Holder, KeyPlace, add_key_routes, key_notice
from keyservice.console.pages import STATIC, ConsoleRoute, PageError, render
from keyservice.console.session import new_session
from keyservice.database import utcnow
from keyservice.dependencies import ContextDep, SessionDep, client_ip
from keyservice.exceptions import Forbidden, OAuthError, SlowDown, ValidationFailed
from keyservice.principals.models import Principal
from keyservice.users import own_password

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """Serve the console's own CSS and JS (no CDN): a flat directory, nothing else."""
    path = STATIC / name
    suffix = path.suffix
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES or not path.is_file():
        raise PageError(404, "Not found", "There is nothing at this address.")
    return FileResponse(
        path,
        media_type=STATIC_TYPES[suffix],
        headers={"Cache-Control": "public, max-age=3600"},
    )


@router.get("")
async def home(request: Request) -> Response:
    session = read_session(request)
    target = "/console/keys" if session is not None and session.signed_in else "/console/login"
    return RedirectResponse(target, status_code=303)


# Sign-in ---------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request) -> Response:
    session = read_session(request)
    if session is not None and session.signed_in:
        return RedirectResponse("/console/keys", status_code=303)
    fresh = session is None
    if session is None:
        # A signed-out visitor gets an anonymous session: the form needs a CSRF token.
        session = start_anonymous(request)
    # Why the browser was sent here (pages.SignInRequired), said on the page in its own
    # words: not as `notice`, which base.html would show as written, so that a link's
    # query could put a stranger's words on the sign-in page.
    reason = request.query_params.get("session")
    response = render(request, "login.html", {"username": "", "session_reason": reason})
    if fresh:
        write_session(request, response, session)
    return response


@router.post("/login")
async def login(form: CheckedForm, request: Request, context: ContextDep) -> Response:
    username = text(form, "username").strip()
    password = text(form, "password")
    if not username or not password:
        return render(
            request,
            "login.html",
            {"username": username, "error": "Enter your username and password."},
            status_code=400,
        )
    try:
        user = await service.sign_in(
            context, username=username, password=password, ip=client_ip(request, context)
        )
    except SlowDown as exc:
        wait = exc.headers.get("Retry-After", "60")
        message = f"Too many failed sign-ins. Wait {wait} seconds, then try again."
        response = render(
            request, "login.html", {"username": username, "error": message}, status_code=429
        )
        response.headers["Retry-After"] = wait
        return response
    except OAuthError as exc:
        return render(
            request,
            "login.html",
            {"username": username, "error": exc.description},
            status_code=400,
        )
    redirect = RedirectResponse("/console/keys", status_code=303)
    write_session(
        request, redirect, new_session(user.id, codec(request).credential(user.password_hash))
    )
    return redirect


@router.post("/logout")
async def logout(_form: CheckedForm, request: Request, session: SessionDep, ip: IpDep) -> Response:
    """End the session on the server (every copy of its cookie), then delete the cookie.

    Idempotent: signing out a session already signed out (another tab's copy, a second
    click) changes nothing and is not audited twice.
    """
    console = read_session(request)
    if console is not None and console.signed_in:
        await service.sign_out(session, codec(request), console, ip=ip)
    response = RedirectResponse("/console/login", status_code=303)
    clear_session(response)
    return response


# Own password ----------------------------------------------------------------------------

PASSWORD_CHANGED = "Your password was changed. Every other sign-in with the old one has ended."


@router.get("/password")
async def password_page(request: Request, _viewer: ViewerDep) -> Response:
    notice = PASSWORD_CHANGED if request.query_params.get("done") == "1" else None
    return render(request, "password.html", {"section": "password", "notice": notice})


@router.post("/password")
async def change_password(
    form: CheckedForm,
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    context: ContextDep,
) -> Response:
    """Change the signed-in user's password; this session goes on, every other one ends."""
    current = text(form, "current_password")
    new = text(form, "new_password")

    def refused(message: str, status_code: int, field: str | None = None) -> Response:
        return render(
            request,
            "password.html",
            {"section": "password", "error": message, "field": field},
            status_code=status_code,
        )

    if not current or not new:
        return refused("Enter your current password and the new one, twice.", 400)
    if new != text(form, "confirm_password"):
        return refused("The two new passwords differ: type the same one twice.", 400, "new")
    try:
        user = await own_password.change(
            context,
            session,
            user_id=viewer.principal.id,
            current=current,
            new=new,
            ip=client_ip(request, context),
            via="console: ",
        )
    except SlowDown as exc:
        wait = exc.headers.get("Retry-After", "60")
        response = refused(
            f"Too many failed attempts. Wait {wait} seconds, then try again.", 429, "current"
        )
        response.headers["Retry-After"] = wait
        return response
    except Forbidden as exc:
        return refused(exc.description, 403, "current")
    except ValidationFailed as exc:
        return refused(exc.description, 422, "new")
    redirect = RedirectResponse("/console/password?done=1", status_code=303)
    # The session's credential was the old password's: this one goes on with the new one.
    write_session(
        request, redirect, new_session(user.id, codec(request).credential(user.password_hash))
    )
    return redirect


# Own API keys ----------------------------------------------------------------------------


@router.get("/keys")
async def keys_page(
    request: Request, viewer: ViewerDep, session: SessionDep, context: ContextDep
) -> Response:
    if not viewer.can_manage_keys:
        # Where sign-in lands: a user who may not manage keys has only their password here
        # (a 403 page was all they got after signing in).
        return RedirectResponse("/console/password", status_code=303)
    keys = await api_keys.list_for_owner(context, session, owner=viewer.principal)
    done = request.query_params.get("done", "")
    notice = key_notice(request, keys) or {"deleted": "The key was deleted."}.get(done)
    return render(
        request,
        "keys.html",
        {
            "keys": keys,
            "notice": notice,
            "limit": context.settings.max_keys_per_principal,
            "base": "/console/keys",
            "holds": await api_keys.rotation_holds(
                session, owner_id=viewer.principal.id, now=utcnow()
            ),
        },
    )


@dataclass(frozen=True)
class OwnKeys(KeyPlace):
    """The signed-in user's own keys, for those holding `api_keys:manage`."""

    section: ClassVar[str] = "keys"
    back_label: ClassVar[str] = "Back to the API keys"

    @property
    def home(self) -> str:
        return "/console/keys"

    @property
    def base(self) -> str:
        return "/console/keys"

    async def owner(self) -> Principal:
        return self.viewer.principal

    def holder(self, _owner: Principal) -> Holder:
        # The permissions as `me` read them at the request's start.
        return Holder(permissions=self.viewer.permissions, label=None)

    def deleted(self, _owner: Principal) -> str:
        return "/console/keys?done=deleted"

    async def create(self, data: ApiKeyCreate, ip: str | None) -> ApiKeyCreated:
        owner, actor = self.viewer.principal, self.viewer.actor
        return await api_keys.create(
            self.context, self.session, owner=owner, data=data, actor=actor, ip=ip
        )

    async def update(self, key_id: str, data: ApiKeyUpdate, ip: str | None) -> object:
        owner, actor = self.viewer.principal, self.viewer.actor
        return await api_keys.update(
            self.context, self.session, owner=owner, key_id=key_id, data=data, actor=actor, ip=ip
        )

    async def rotate(
        self, key_id: str, grace_seconds: int, ip: str | None
    ) -> tuple[ApiKeyCreated, datetime]:
        owner, actor = self.viewer.principal, self.viewer.actor
        key = await api_keys.get_owned(self.session, key_id=key_id, owner_id=owner.id)
        created = await api_keys.rotate(
            self.context,
            self.session,
            key=key,
            owner=owner,
            grace_seconds=grace_seconds,
            actor=actor,
            ip=ip,
        )
        return created, key.expires_at  # the old key's, as the rotation cut it short


async def own_keys(viewer: KeyManagerDep, session: SessionDep, context: ContextDep) -> OwnKeys:
    return OwnKeys(viewer, session, context)


add_key_routes(
    router,
    "/keys",
    own_keys,
    {
        "new": "new_key_page",
        "create": "create_key",
        "confirm_delete": "confirm_delete_page",
        "delete": "delete_key",
        "edit_page": "edit_key_page",
        "edit": "edit_key",
        "rotate_page": "rotate_page",
        "rotate": "rotate_key",
    },
)

router.include_router(admin_router)


@router.get("/{_path:path}")
async def not_found(request: Request, _path: str) -> Response:
    """Anything else under /console is a 404 page, not the API's JSON error."""
    if not _path:  # "/console/"
        return await home(request)
    raise PageError(404, "Not found", "There is nothing at this address.")
