"""Admin pages of the console: users, devices and their keys, all keys, the scope catalog,
the audit log.

Every route needs a signed-in user holding `admin`, re-checked on each request. Actions
post a CSRF-checked form, call one service function and redirect back (post/redirect/get),
except key creation and rotation, whose answer is the page showing the secret once (a
form sent again is answered by once.py, and creates nothing).
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import ClassVar
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead, ApiKeyUpdate
from keyservice.audit import service as audit_service
from keyservice.console.dependencies import (
    AdminDep,
    CheckedForm,
    IpDep,
    codec,
    read_session,
    write_session,
)
from keyservice.console.forms import (
    FormErrors,
    lines,
    text,
    textarea,
    texts,
)
from keyservice.console.keys import Holder, KeyPlace, add_key_routes, catalog_choices, key_notice
from keyservice.console.pages import ConsoleRoute, PageError, render
from keyservice.database import utcnow
from keyservice.dependencies import ContextDep, SessionDep
from keyservice.devices import service as devices
from keyservice.devices.schemas import DeviceCreate
from keyservice.exceptions import KeyServiceError, ValidationFailed, echoable
from keyservice.ids import PathId, canonical_id
from keyservice.paging import MAX_LIMIT
from keyservice.principals.models import Principal
from keyservice.scopes import service as scopes
from keyservice.scopes.models import Scope, effective_permissions
from keyservice.scopes.schemas import NEW_SCOPE_NAME, ScopeCreate, ScopeUpdate
from keyservice.security.tokens import holds_api_key, is_client_id
from keyservice.users import service as users
from keyservice.users.schemas import NAME_PATTERN, UserCreate

router = APIRouter(prefix="/admin", route_class=ConsoleRoute)

AUDIT_TYPES = [
    "token.exchange",
    "token.refresh",
    "token.refresh_reuse",
    "token.revoke",
    "token.introspect",
    "login",
    "logout",
    "api_key.created",
    "api_key.deleted",
    "api_key.rotated",
    "api_key.updated",
    "user.created",
    "user.updated",
    "device.created",
    "device.updated",
    "device.deleted",
    "scope.created",
    "scope.updated",
    "scope.deleted",
    "signing_key.created",
    "signing_key.rotated",
    "audit.pruned",
    "schema.migrated",
    "server_secret.switched",
]
AUDIT_PAGE = 50
_NAME = re.compile(NAME_PATTERN)
# done=: (the banner naming the user or device, the banner without a name)
NOTICES = {
    "user-created": ("User {name} created.", "The user was created."),
    "user-updated": ("User {name} updated.", "The user was updated."),
    "password-reset": ("The password of {name} was reset.", "The password was reset."),
    "device-registered": ("Device {name} registered.", "The device was registered."),
    "device-updated": ("Device {name} updated.", "The device was updated."),
    "device-deleted": (
        "Device {name} deleted; its keys are revoked.",
        "The device was deleted; its keys are revoked.",
    ),
    "key-deleted": ("The key was deleted.", "The key was deleted."),
    "key-revoked": ("The key was revoked.", "The key was revoked."),
    "scope-created": ("Scope {name} added to the catalog.", "The scope was added."),
    "scope-updated": ("The description of {name} was saved.", "The description was saved."),
    # A deleted name is no longer one `known` can vouch for: named if echoable() allows it.
    "scope-deleted": ("Scope {name} deleted from the catalog.", "The scope was deleted."),
}
# done= whose name is checked as an error message quoting it is (a name in no list).
# A deleted scope is named only if it could be created today: that rule refuses "//", so a
# crafted link cannot make the banner announce an address ("Scope https://... deleted").
_ECHOED = {"scope-deleted": NEW_SCOPE_NAME}


def _notice(request: Request, *, known: Container[str] | None = None) -> str | None:
    """The banner after an admin action, named in the redirect's query.

    Anyone can send an admin a link with any query: the name is shown only if it could be a
    username or device name (no spaces, no URL), or, given `known`, only if it is one of
    those (a scope name may hold ':' and '/'), else left out, so that no sentence of a
    stranger's ("... sign in again at https://...") appears in a trusted banner. A name
    no longer anywhere (a deleted scope) is shown only as a 404 would quote it: echoable().
    """
    done = request.query_params.get("done", "")
    templates = NOTICES.get(done)
    if templates is None:
        return None
    named, unnamed = templates
    name = request.query_params.get("name", "")
    if done in _ECHOED:
        shown = echoable(name, _ECHOED[done])
    elif known is not None:
        shown = name in known
    else:
        shown = len(name) <= 100 and _NAME.fullmatch(name) is not None
    return named.format(name=name) if shown else unnamed


def _after(path: str, done: str, name: str) -> str:
    """The address of `path` with the banner for `done` naming `name` (_notice)."""
    return f"{path}?{urlencode({'done': done, 'name': name})}"


def _back(path: str, done: str, name: str) -> RedirectResponse:
    return RedirectResponse(_after(path, done, name), status_code=303)


def _flag(form_value: str) -> bool | None:
    return {"true": True, "false": False}.get(form_value)


# Users -----------------------------------------------------------------------------------


async def _users_page(
    request: Request,
    session: SessionDep,
    *,
    values: Mapping[str, object] | None = None,
    errors: FormErrors | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "admin/users.html",
        {
            "section": "users",
            "users": await users.list_users(session),
            "choices": await catalog_choices(session),
            "values": values or {"username": "", "permissions": ["api_keys:manage"]},
            "errors": errors or FormErrors(),
            "notice": _notice(request),
        },
        status_code=status_code,
    )


@router.get("/users")
async def users_page(request: Request, _admin: AdminDep, session: SessionDep) -> Response:
    return await _users_page(request, session)


@router.post("/users")
async def create_user(
    form: CheckedForm, request: Request, admin: AdminDep, session: SessionDep, ip: IpDep
) -> Response:
    errors = FormErrors()
    username, permissions = text(form, "username").strip(), texts(form, "permissions")
    try:
        data = UserCreate(
            username=username, password=text(form, "password"), permissions=permissions
        )
        user = await users.create(
            session,
            username=data.username,
            password=data.password,
            permissions=data.permissions,
            actor=admin.actor,
            ip=ip,
        )
    except ValidationError as exc:
        errors.add_validation(exc)
    except KeyServiceError as exc:
        if exc.status_code >= 500:
            raise
        if exc.status_code == 409:
            errors.add("username", exc.description)
        else:
            errors.add_service(exc)
    else:
        return _back("/console/admin/users", "user-created", user.name)
    values = {"username": username, "permissions": permissions}
    return await _users_page(request, session, values=values, errors=errors, status_code=422)


@router.get("/users/{user_id}")
async def user_page(
    user_id: PathId, request: Request, _admin: AdminDep, session: SessionDep
) -> Response:
    return await _user_page(request, session, user_id=user_id)


async def _user_page(
    request: Request,
    session: SessionDep,
    *,
    user_id: str,
    errors: FormErrors | None = None,
    status_code: int = 200,
) -> Response:
    user = await users.get(session, user_id=user_id)
    return render(
        request,
        "admin/user.html",
        {
            "section": "users",
            "user": user,
            "choices": await catalog_choices(session),
            "errors": errors or FormErrors(),
            "notice": _notice(request),
        },
        status_code=status_code,
    )


@router.post("/users/{user_id}")
async def update_user(
    user_id: PathId,
    form: CheckedForm,
    request: Request,
    admin: AdminDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    """One endpoint for the user page's forms; `action` says which one was sent."""
    action = text(form, "action")
    disabled = _flag(text(form, "disabled")) if action == "state" else None
    permissions = texts(form, "permissions") if action == "permissions" else None
    password = text(form, "password") if action == "password" else None
    try:
        user = await users.update(
            session,
            context,
            user_id=user_id,
            disabled=disabled,
            permissions=permissions,
            password=password,
            actor=admin.actor,
            ip=ip,
            actor_id=admin.principal.id,
        )
    except KeyServiceError as exc:
        if exc.status_code >= 500 or exc.status_code == 404:
            raise
        errors = FormErrors()
        errors.add_service(exc)
        return await _user_page(
            request, session, user_id=user_id, errors=errors, status_code=exc.status_code
        )
    done = "password-reset" if action == "password" else "user-updated"
    target = "/console/admin/users" if action == "state" else f"/console/admin/users/{user.id}"
    response = _back(target, done, user.name)
    current = read_session(request)
    if password is not None and user.id == admin.principal.id and current is not None:
        # An admin's own new password ends their other sessions, not this one.
        credential = codec(request).credential(user.password_hash)
        write_session(request, response, replace(current, credential=credential))
    return response


# Devices ---------------------------------------------------------------------------------


async def _devices_page(
    request: Request,
    session: SessionDep,
    *,
    values: Mapping[str, object] | None = None,
    errors: FormErrors | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "admin/devices.html",
        {
            "section": "devices",
            "devices": await devices.list_devices(session),
            "choices": await catalog_choices(session),
            "values": values or {"name": "", "description": "", "permissions": []},
            "errors": errors or FormErrors(),
            "notice": _notice(request),
        },
        status_code=status_code,
    )


@router.get("/devices")
async def devices_page(request: Request, _admin: AdminDep, session: SessionDep) -> Response:
    return await _devices_page(request, session)


@router.post("/devices")
async def register_device(
    form: CheckedForm, request: Request, admin: AdminDep, session: SessionDep, ip: IpDep
) -> Response:
    errors = FormErrors()
    name, description = text(form, "name").strip(), textarea(form, "description")
    permissions = texts(form, "permissions")
    try:
        data = DeviceCreate(name=name, description=description, permissions=permissions)
        device = await devices.create(
            session,
            name=data.name,
            description=data.description,
            permissions=data.permissions,
            actor=admin.actor,
            ip=ip,
        )
    except ValidationError as exc:
        errors.add_validation(exc)
    except KeyServiceError as exc:
        if exc.status_code >= 500:
            raise
        if exc.status_code == 409:
            errors.add("name", exc.description)
        else:
            errors.add_service(exc)
    else:
        return _back(f"/console/admin/devices/{device.id}", "device-registered", device.name)
    values = {"name": name, "description": description, "permissions": permissions}
    return await _devices_page(request, session, values=values, errors=errors, status_code=422)


async def _device_page(
    request: Request,
    session: SessionDep,
    context: ContextDep,
    *,
    device_id: str,
    errors: FormErrors | None = None,
    status_code: int = 200,
) -> Response:
    device = await devices.get(session, device_id=device_id)
    keys = await api_keys.list_for_owner(context, session, owner=device)
    return render(
        request,
        "admin/device.html",
        {
            "section": "devices",
            "device": device,
            "keys": keys,
            "holds": await api_keys.rotation_holds(session, owner_id=device.id, now=utcnow()),
            "base": f"/console/admin/devices/{device.id}/keys",
            "choices": await catalog_choices(session),
            "errors": errors or FormErrors(),
            "notice": key_notice(request, keys) or _notice(request),
            "limit": context.settings.max_keys_per_principal,
        },
        status_code=status_code,
    )


@router.get("/devices/{device_id}")
async def device_page(
    device_id: PathId, request: Request, _admin: AdminDep, session: SessionDep, context: ContextDep
) -> Response:
    return await _device_page(request, session, context, device_id=device_id)


@router.post("/devices/{device_id}")
async def update_device(
    device_id: PathId,
    form: CheckedForm,
    request: Request,
    admin: AdminDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    action = text(form, "action")
    try:
        device = await devices.update(
            session,
            context,
            device_id=device_id,
            disabled=_flag(text(form, "disabled")) if action == "state" else None,
            permissions=texts(form, "permissions") if action == "permissions" else None,
            actor=admin.actor,
            ip=ip,
        )
    except KeyServiceError as exc:
        if exc.status_code >= 500 or exc.status_code == 404:
            raise
        errors = FormErrors()
        errors.add_service(exc)
        return await _device_page(
            request,
            session,
            context,
            device_id=device_id,
            errors=errors,
            status_code=exc.status_code,
        )
    return _back(f"/console/admin/devices/{device.id}", "device-updated", device.name)


@router.get("/devices/{device_id}/delete")
async def confirm_delete_device(
    device_id: PathId, request: Request, _admin: AdminDep, session: SessionDep
) -> Response:
    device = await devices.get(session, device_id=device_id)
    return render(
        request,
        "confirm_delete.html",
        {
            "section": "devices",
            "what": "device",
            "key": device,
            "action": f"/console/admin/devices/{device.id}/delete",
            "cancel": f"/console/admin/devices/{device.id}",
        },
    )


@router.post("/devices/{device_id}/delete")
async def delete_device(
    device_id: PathId,
    _form: CheckedForm,
    admin: AdminDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    device = await devices.get(session, device_id=device_id)
    name = device.name
    await devices.delete(session, context, device_id=device_id, actor=admin.actor, ip=ip)
    return _back("/console/admin/devices", "device-deleted", name)


@dataclass(frozen=True)
class DeviceKeys(KeyPlace):
    """A device's keys, managed by an admin on the device's page. The changes go through
    the device services (devices.create_key, ...), which lock the device as the API does."""

    device_id: str
    section: ClassVar[str] = "devices"
    back_label: ClassVar[str] = "Back to the device"

    @property
    def home(self) -> str:
        return f"/console/admin/devices/{self.device_id}"

    @property
    def base(self) -> str:
        return f"{self.home}/keys"

    async def owner(self) -> Principal:
        return await devices.get(self.session, device_id=self.device_id)

    def holder(self, owner: Principal) -> Holder:
        permissions = effective_permissions(owner.permissions)
        return Holder(permissions=permissions, label=f"device {owner.name}")

    def deleted(self, owner: Principal) -> str:
        return _after(self.home, "key-deleted", owner.name)

    async def create(self, data: ApiKeyCreate, ip: str | None) -> ApiKeyCreated:
        device_id, actor = self.device_id, self.viewer.actor
        return await devices.create_key(
            self.context, self.session, device_id=device_id, data=data, actor=actor, ip=ip
        )

    async def update(self, key_id: str, data: ApiKeyUpdate, ip: str | None) -> object:
        """As PATCH /admin/devices/{id}/api-keys/{key_id}."""
        return await devices.update_key(
            self.context,
            self.session,
            device_id=self.device_id,
            key_id=key_id,
            data=data,
            actor=self.viewer.actor,
            ip=ip,
        )

    async def rotate(
        self, key_id: str, grace_seconds: int, ip: str | None
    ) -> tuple[ApiKeyCreated, datetime]:
        created = await devices.rotate_key(
            self.context,
            self.session,
            device_id=self.device_id,
            key_id=key_id,
            grace_seconds=grace_seconds,
            actor=self.viewer.actor,
            ip=ip,
        )
        old = await api_keys.get_owned(self.session, key_id=key_id, owner_id=created.owner_id)
        return created, old.expires_at


async def device_keys(
    device_id: PathId, admin: AdminDep, session: SessionDep, context: ContextDep
) -> DeviceKeys:
    return DeviceKeys(admin, session, context, device_id)


add_key_routes(
    router,
    "/devices/{device_id}/keys",
    device_keys,
    {
        "new": "new_device_key",
        "create": "create_device_key",
        "confirm_delete": "confirm_delete_device_key",
        "delete": "delete_device_key",
        "edit_page": "edit_device_key_page",
        "edit": "edit_device_key",
        "rotate_page": "rotate_device_key_page",
        "rotate": "rotate_device_key",
    },
)


# All API keys ----------------------------------------------------------------------------

KEYS_PAGE = 50
OWNER_TYPES = {"user": "Users", "device": "Devices"}
KEY_FILTERS = ("client_id", "owner_type", "owner_id", "status", "limit", "cursor")
# A refused client ID is shown again in its field only if this short (a client ID is 19):
# never a key string or a secret pasted there.
_ECHOED_CLIENT_ID = 24


def _key_filters(request: Request) -> dict[str, str]:
    """The all-keys list's query as given (filters, page size, cursor), blanks left out.

    A client ID that is not one (a pasted key string, say) is left out too: it is refused
    once (all_keys_page) and never carried on into the page's links and forms.
    """
    query = request.query_params
    found = {name: query.get(name, "").strip() for name in KEY_FILTERS}
    if not is_client_id(found["client_id"]):
        found["client_id"] = ""
    found["owner_id"] = canonical_id(found["owner_id"])
    return {name: value for name, value in found.items() if value}


def _keys_list(filters: Mapping[str, str], **more: str) -> str:
    """The all-keys page's address with these filters (built here, never taken as given)."""
    query = urlencode({**filters, **more})
    return "/console/admin/keys" + (f"?{query}" if query else "")


@router.get("/keys")
async def all_keys_page(
    request: Request, _admin: AdminDep, session: SessionDep, context: ContextDep
) -> Response:
    """Every principal's keys, newest first, filtered and paged as GET /admin/api-keys."""
    given = _key_filters(request)
    errors = FormErrors()
    owner_type, status = given.get("owner_type"), given.get("status")
    owner_id = given.get("owner_id")
    client_id = request.query_params.get("client_id", "").strip()
    typed_client_id = client_id
    try:
        if client_id:
            api_keys.check_client_id(client_id)
    except ValidationFailed as exc:
        errors.add("client_id", exc.description)
        if holds_api_key(client_id) or len(client_id) > _ECHOED_CLIENT_ID:
            typed_client_id = ""
    if owner_type is not None and owner_type not in OWNER_TYPES:
        errors.add("owner_type", "Choose users or devices.")
        owner_type = None
    if status is not None and status not in api_keys.KEY_STATUSES:
        errors.add("status", f"Choose one of: {', '.join(api_keys.KEY_STATUSES)}.")
        status = None
    if owner_id is not None and len(owner_id) > 36:
        errors.add("owner_id", "An owner ID has at most 36 characters.")
        owner_id = None
    limit = KEYS_PAGE
    if "limit" in given:
        try:
            limit = int(given["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            errors.add(None, f"The page size (limit) must be a number from 1 to {MAX_LIMIT}.")
            limit = KEYS_PAGE
    cursor = given.get("cursor")
    rows: list[tuple[ApiKeyRead, Principal]] = []
    next_cursor = None
    if "client_id" not in errors.fields:  # looking for one key: any other list misleads
        rows, next_cursor = await api_keys.list_all_with_owners(
            context,
            session,
            client_id=client_id or None,
            owner_type=owner_type,
            owner_id=owner_id,
            status=status,
            limit=limit,
            cursor=cursor,
        )
    active = {name: value for name, value in given.items() if name != "cursor"}
    return render(
        request,
        "admin/keys.html",
        {
            "section": "all-keys",
            "rows": rows,
            "filters": {name: given.get(name, "") for name in KEY_FILTERS}
            | {"client_id": typed_client_id},
            "owner_types": OWNER_TYPES,
            "statuses": api_keys.KEY_STATUSES,
            "errors": errors,
            "notice": _notice(request),
            "here": urlencode(given),
            "older": _keys_list(active, cursor=next_cursor) if next_cursor else None,
            "newest": _keys_list(active) if cursor else None,
        },
        status_code=422 if errors else 200,
    )


@router.get("/keys/{key_id}/revoke")
async def confirm_revoke_key(
    key_id: PathId, request: Request, _admin: AdminDep, session: SessionDep, context: ContextDep
) -> Response:
    key, owner = await api_keys.get_any(session, key_id=key_id)
    if key.revoked_at is not None:
        raise PageError(409, "Already revoked", "This key was revoked already.")
    here = urlencode(_key_filters(request))
    return render(
        request,
        "confirm_delete.html",
        {
            "section": "all-keys",
            "verb": "Revoke",
            "heading": f"Revoke API key {key.name} of {owner.kind} {owner.name}?",
            "key": api_keys.to_read(key, owner, context.settings, utcnow()),
            "action": f"/console/admin/keys/{key.id}/revoke" + (f"?{here}" if here else ""),
            "cancel": _keys_list(_key_filters(request)),
        },
    )


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    key_id: PathId,
    _form: CheckedForm,
    request: Request,
    admin: AdminDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    """Revoke any key (a leaked one, say), as DELETE /admin/api-keys/{id}; a key revoked
    already changes nothing (a second click)."""
    key, _owner = await api_keys.get_any(session, key_id=key_id)
    await api_keys.revoke(context, session, key=key, actor=admin.actor, ip=ip)
    back = _keys_list(_key_filters(request), done="key-revoked")
    return RedirectResponse(back, status_code=303)


# Scope catalog ---------------------------------------------------------------------------


async def _scopes_page(
    request: Request,
    session: SessionDep,
    *,
    values: Mapping[str, str] | None = None,
    errors: FormErrors | None = None,
    edit_errors: FormErrors | None = None,
    edited: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    """The catalog with a description form a row; `errors` are the add form's, `edit_errors`
    a refused edit's (above the table), `edited` the description typed there, kept."""
    catalog = await scopes.list_scopes(session)
    return render(
        request,
        "admin/scopes.html",
        {
            "section": "scopes",
            "scopes": catalog,
            "values": values or {"name": "", "description": ""},
            "errors": errors or FormErrors(),
            "edit_errors": edit_errors or FormErrors(),
            "edited": edited or {},
            "notice": _notice(request, known={scope.name for scope in catalog}),
        },
        status_code=status_code,
    )


@router.get("/scopes")
async def scopes_page(request: Request, _admin: AdminDep, session: SessionDep) -> Response:
    return await _scopes_page(request, session)


@router.post("/scopes")
async def create_scope(
    form: CheckedForm,
    request: Request,
    admin: AdminDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    """Add a scope as POST /admin/scopes does: its schema, its service, its audit event."""
    errors = FormErrors()
    name, description = text(form, "name").strip(), textarea(form, "description")
    try:
        data = ScopeCreate(name=name, description=description)
        scope = await scopes.create(
            session,
            name=data.name,
            description=data.description,
            actor=admin.actor,
            ip=ip,
            names=context.scope_names,
        )
    except ValidationError as exc:
        errors.add_validation(exc)
    except KeyServiceError as exc:
        if exc.status_code >= 500:
            raise
        if exc.status_code == 409:
            errors.add("name", exc.description)
        else:
            errors.add_service(exc)
    else:
        return _back("/console/admin/scopes", "scope-created", scope.name)
    values = {"name": name, "description": description}
    return await _scopes_page(request, session, values=values, errors=errors, status_code=422)


# A scope name may hold '/' and '.', so it travels in the form or the query, not the path.
@router.post("/scopes/edit")
async def edit_scope(
    form: CheckedForm,
    request: Request,
    admin: AdminDep,
    session: SessionDep,
    ip: IpDep,
) -> Response:
    """Change a scope's description as PATCH /admin/scopes/{name} does."""
    name, description = text(form, "name"), textarea(form, "description")
    errors = FormErrors()
    # The row as shown is the stored text with its line breaks read as LF: not an edit (no
    # audit event, and a stored CR or CRLF stays as the API set it).
    current = await session.get(Scope, name)
    sent = description
    if current is not None and lines(description) == lines(current.description):
        sent = current.description
    try:
        data = ScopeUpdate(description=sent)
        scope = await scopes.update(
            session, name=name, description=data.description, actor=admin.actor, ip=ip
        )
    except ValidationError as exc:
        errors.add_validation(exc)
        status_code = 422
    except KeyServiceError as exc:
        if exc.status_code >= 500:
            raise
        errors.add_service(exc)
        status_code = exc.status_code
    else:
        return _back("/console/admin/scopes", "scope-updated", scope.name)
    # The refusal in words above the table, with what was typed kept in that row (marked
    # invalid, so that it gets the focus), named if it is in the catalog: among many rows,
    # the admin sees which one. A name not in it is not quoted (the 404 does, if echoable).
    messages = [*errors.general, *errors.fields.values()]
    which = f"The description of {current.name}" if current is not None else "The description"
    shown = FormErrors(general=[f"{which} was not saved: {m}" for m in messages])
    return await _scopes_page(
        request, session, edit_errors=shown, edited={name: description}, status_code=status_code
    )


def _delete_page(
    request: Request, scope: Scope, *, refusal: str | None = None, status_code: int = 200
) -> Response:
    return render(
        request,
        "admin/scope_delete.html",
        {"section": "scopes", "scope": scope, "refusal": refusal},
        status_code=status_code,
    )


async def _refusal(session: SessionDep, scope: Scope) -> str | None:
    """Why a deletion would be refused now, in the API's words (None: it would not be)."""
    try:
        scopes.check_deletable(scope, await scopes.usage(session, name=scope.name))
    except KeyServiceError as exc:
        return exc.description
    return None


@router.get("/scopes/delete")
async def confirm_delete_scope(
    request: Request, _admin: AdminDep, session: SessionDep, name: str = ""
) -> Response:
    """The confirmation, or, for a scope that is built in or held, why it cannot go (409, as
    the Rotate and Edit pages answer for a key they cannot act on)."""
    scope = await scopes.get(session, name=name)
    refusal = await _refusal(session, scope)
    return _delete_page(request, scope, refusal=refusal, status_code=409 if refusal else 200)


@router.post("/scopes/delete")
async def delete_scope(
    form: CheckedForm,
    request: Request,
    admin: AdminDep,
    session: SessionDep,
    context: ContextDep,
    ip: IpDep,
) -> Response:
    """Delete a scope as DELETE /admin/scopes/{name} does; a refusal (409) in its words."""
    name = text(form, "name")
    try:
        await scopes.delete(session, name=name, actor=admin.actor, ip=ip, names=context.scope_names)
    except KeyServiceError as exc:
        if exc.status_code not in (404, 409):
            raise
        await session.rollback()
        if exc.status_code == 404:  # deleted meanwhile (another tab, another admin)
            shown = FormErrors(general=[f"The scope was not deleted: {exc.description}"])
            return await _scopes_page(request, session, edit_errors=shown, status_code=404)
        scope = await scopes.get(session, name=name)
        return _delete_page(request, scope, refusal=exc.description, status_code=409)
    return _back("/console/admin/scopes", "scope-deleted", name)


# Audit log -------------------------------------------------------------------------------


@router.get("/audit")
async def audit_page(request: Request, _admin: AdminDep, session: SessionDep) -> Response:
    query = request.query_params
    filters = {
        "type": query.get("type", "").strip(),
        "principal_id": canonical_id(query.get("principal_id", "").strip()),
        "key_id": canonical_id(query.get("key_id", "").strip()),
        "since": query.get("since", "").strip(),
    }
    errors = FormErrors()
    since: datetime | None = None
    if filters["since"]:
        try:
            day = date.fromisoformat(filters["since"])
            since = datetime(day.year, day.month, day.day, tzinfo=UTC)
        except ValueError:
            errors.add("since", "Enter a date such as 2026-11-01.")
    cursor = query.get("cursor") or None
    events, next_cursor = await audit_service.list_events(
        session,
        type=filters["type"] or None,
        principal_id=filters["principal_id"] or None,
        key_id=filters["key_id"] or None,
        since=since,
        limit=AUDIT_PAGE,
        cursor=cursor,
    )
    active = {name: value for name, value in filters.items() if value}
    older = urlencode({**active, "cursor": next_cursor}) if next_cursor else None
    return render(
        request,
        "admin/audit.html",
        {
            "section": "audit",
            "events": events,
            "filters": filters,
            "types": AUDIT_TYPES,
            "errors": errors,
            "older": older,
            "newest": urlencode(active) if cursor else None,
        },
        status_code=422 if errors else 200,
    )
