"""The web console: server-rendered pages under /console (sign-in, own keys, admin pages)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.schemas import ApiKeyUpdate
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
from keyservice.console.forms import (
    FormErrors,
    expiry_limits,
    read_grace,
    read_key_form,
    text,
)
from keyservice.console.keys import (
    edit_form_page,
    edit_key_answer,
    key_form_page,
    key_notice,
    rotate_form_page,
)
from keyservice.console.once import already_done_page, claim, posted_form_id
from keyservice.console.pages import STATIC, ConsoleRoute, PageError, render
from keyservice.console.session import new_session
from keyservice.database import utcnow
from keyservice.dependencies import ContextDep, SessionDep, client_ip
from keyservice.exceptions import (
    Forbidden,
    KeyServiceError,
    OAuthError,
    SlowDown,
    ValidationFailed,
)
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


@router.get("/keys/new")
async def new_key_page(
    request: Request, viewer: KeyManagerDep, session: SessionDep, context: ContextDep
) -> Response:
    return await key_form_page(
        request,
        context,
        session,
        permissions=viewer.permissions,
        action="/console/keys",
        cancel="/console/keys",
    )


@router.post("/keys")
async def create_key(
    form: CheckedForm,
    request: Request,
    viewer: KeyManagerDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    form_id = posted_form_id(form)
    if not await claim(request, session, form_id):
        return already_done_page(
            request,
            back="/console/keys",
            back_label="Back to the API keys",
            rotated=False,
            section="keys",
        )
    errors = FormErrors()
    values, data = read_key_form(form, errors, expiry_limits(context.settings))
    if data is not None:
        try:
            created = await api_keys.create(
                context, session, owner=viewer.principal, data=data, actor=viewer.actor, ip=ip
            )
        except KeyServiceError as exc:
            if exc.status_code >= 500:
                raise
            errors.add_service(exc, {"expires_at": "expires_on"})
        else:
            return render(
                request,
                "show_once.html",
                {"created": created, "back": "/console/keys", "section": "keys"},
            )
    status = 409 if errors.general else 422
    return await key_form_page(
        request,
        context,
        session,
        permissions=viewer.permissions,
        action="/console/keys",
        cancel="/console/keys",
        values=values,
        errors=errors,
        status_code=status,
    )


@router.get("/keys/{key_id}/delete")
async def confirm_delete_page(
    key_id: str, request: Request, viewer: KeyManagerDep, session: SessionDep, context: ContextDep
) -> Response:
    """The confirmation page for browsers without JavaScript (others use a dialog)."""
    key = await api_keys.get_owned(session, key_id=key_id, owner_id=viewer.principal.id)
    read = api_keys.to_read(key, viewer.principal, context.settings, utcnow())
    return render(
        request,
        "confirm_delete.html",
        {
            "section": "keys",
            "key": read,
            "action": f"/console/keys/{read.id}/delete",
            "cancel": "/console/keys",
        },
    )


@router.post("/keys/{key_id}/delete")
async def delete_key(
    key_id: str,
    _form: CheckedForm,
    viewer: KeyManagerDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    key = await api_keys.get_owned(session, key_id=key_id, owner_id=viewer.principal.id)
    await api_keys.revoke(context, session, key=key, actor=viewer.actor, ip=ip)
    return RedirectResponse("/console/keys?done=deleted", status_code=303)


@router.get("/keys/{key_id}/edit")
async def edit_key_page(
    key_id: str, request: Request, viewer: KeyManagerDep, session: SessionDep, context: ContextDep
) -> Response:
    key = await api_keys.get_owned(session, key_id=key_id, owner_id=viewer.principal.id)
    return await edit_form_page(
        request,
        context,
        session,
        key=api_keys.to_read(key, viewer.principal, context.settings, utcnow()),
        permissions=viewer.permissions,
        action=f"/console/keys/{key.id}/edit",
        back="/console/keys",
        back_label="Back to the API keys",
    )


@router.post("/keys/{key_id}/edit")
async def edit_key(
    key_id: str,
    form: CheckedForm,
    request: Request,
    viewer: KeyManagerDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    key = await api_keys.get_owned(session, key_id=key_id, owner_id=viewer.principal.id)

    async def save(data: ApiKeyUpdate) -> object:
        return await api_keys.update(
            context,
            session,
            owner=viewer.principal,
            key_id=key.id,
            data=data,
            actor=viewer.actor,
            ip=ip,
        )

    return await edit_key_answer(
        request,
        context,
        session,
        form=form,
        key=api_keys.to_read(key, viewer.principal, context.settings, utcnow()),
        save=save,
        permissions=viewer.permissions,
        action=f"/console/keys/{key.id}/edit",
        back="/console/keys",
        back_label="Back to the API keys",
    )


@router.get("/keys/{key_id}/rotate")
async def rotate_page(
    key_id: str, request: Request, viewer: KeyManagerDep, session: SessionDep, context: ContextDep
) -> Response:
    key = await api_keys.get_owned(session, key_id=key_id, owner_id=viewer.principal.id)
    read = api_keys.to_read(key, viewer.principal, context.settings, utcnow())
    return await rotate_form_page(
        request,
        session,
        key=read,
        action=f"/console/keys/{read.id}/rotate",
        back="/console/keys",
        back_label="Back to the API keys",
    )


@router.post("/keys/{key_id}/rotate")
async def rotate_key(
    key_id: str,
    form: CheckedForm,
    request: Request,
    viewer: KeyManagerDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    form_id = posted_form_id(form)
    if not await claim(request, session, form_id):
        return already_done_page(
            request,
            back="/console/keys",
            back_label="Back to the API keys",
            rotated=True,
            section="keys",
        )
    key = await api_keys.get_owned(session, key_id=key_id, owner_id=viewer.principal.id)
    created = await api_keys.rotate(
        context,
        session,
        key=key,
        owner=viewer.principal,
        grace_seconds=read_grace(form),
        actor=viewer.actor,
        ip=ip,
    )
    return render(
        request,
        "show_once.html",
        {
            "created": created,
            "back": "/console/keys",
            "rotated": True,
            "old_expires": key.expires_at,
            "section": "keys",
        },
    )


router.include_router(admin_router)


@router.get("/{_path:path}")
async def not_found(request: Request, _path: str) -> Response:
    """Anything else under /console is a 404 page, not the API's JSON error."""
    if not _path:  # "/console/"
        return await home(request)
    raise PageError(404, "Not found", "There is nothing at this address.")
