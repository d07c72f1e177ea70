"""Refused changes: an admin or self-service write the service refused is an event too.

A security reviewer reads the audit log for what was tried, not only for what was done:
a user without `admin` calling the admin API, an admin's attempt to disable the last admin,
a probe for another user's key id. Each refused write by a caller whose access token was
verified is recorded with the type the change would have had, `outcome: failure` and the
answer's status and description as `reason` (descriptions never quote a secret:
exceptions.py). Unauthenticated requests are not recorded: they name nobody, and anyone
could fill the log with them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit import service as audit
from keyservice.ids import canonical_id

if TYPE_CHECKING:
    from keyservice.context import AppContext
    from keyservice.dependencies import TokenPrincipal

log = logging.getLogger(__name__)

# Where get_current_principal leaves the verified caller in the request's scope.
CALLER = "keyservice.caller"

# The event type of each audited write, by method and route path.
EVENT_TYPES: dict[tuple[str, str], str] = {
    ("POST", "/admin/users"): "user.created",
    ("PATCH", "/admin/users/{user_id}"): "user.updated",
    ("POST", "/admin/devices"): "device.created",
    ("PATCH", "/admin/devices/{device_id}"): "device.updated",
    ("DELETE", "/admin/devices/{device_id}"): "device.deleted",
    ("POST", "/admin/devices/{device_id}/api-keys"): "api_key.created",
    ("PATCH", "/admin/devices/{device_id}/api-keys/{key_id}"): "api_key.updated",
    ("POST", "/admin/devices/{device_id}/api-keys/{key_id}/rotate"): "api_key.rotated",
    ("DELETE", "/admin/api-keys/{key_id}"): "api_key.deleted",
    ("POST", "/admin/scopes"): "scope.created",
    ("PATCH", "/admin/scopes/{name:path}"): "scope.updated",
    ("DELETE", "/admin/scopes/{name:path}"): "scope.deleted",
    ("POST", "/api-keys"): "api_key.created",
    ("PATCH", "/api-keys/{key_id}"): "api_key.updated",
    ("DELETE", "/api-keys/{key_id}"): "api_key.deleted",
    ("POST", "/api-keys/{key_id}/rotate"): "api_key.rotated",
    ("POST", "/me/password"): "user.updated",
}

# The console's forms for the same changes (audited with the same types), under /console.
CONSOLE_EVENT_TYPES: dict[str, str] = {
    "/keys": "api_key.created",
    "/keys/{key_id}/delete": "api_key.deleted",
    "/keys/{key_id}/edit": "api_key.updated",
    "/keys/{key_id}/rotate": "api_key.rotated",
    "/admin/users": "user.created",
    "/admin/users/{user_id}": "user.updated",
    "/admin/devices": "device.created",
    "/admin/devices/{device_id}": "device.updated",
    "/admin/devices/{device_id}/delete": "device.deleted",
    "/admin/devices/{device_id}/keys": "api_key.created",
    "/admin/devices/{device_id}/keys/{key_id}/delete": "api_key.deleted",
    "/admin/devices/{device_id}/keys/{key_id}/edit": "api_key.updated",
    "/admin/devices/{device_id}/keys/{key_id}/rotate": "api_key.rotated",
    "/admin/keys/{key_id}/revoke": "api_key.deleted",
    "/admin/scopes": "scope.created",
    "/admin/scopes/edit": "scope.updated",
    "/admin/scopes/delete": "scope.deleted",
    "/password": "user.updated",
}
# Where get_session leaves the request's session.
REQUEST_SESSION = "keyservice.session"
# Where the console's render() leaves what a refused form's page says.
CONSOLE_REFUSAL = "keyservice.console_refusal"

# Ids as this service makes them; anything else in a path (a typo, a pasted key string)
# is not copied into the event.
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _path_id(request: Request, name: str) -> str | None:
    value = request.scope.get("path_params", {}).get(name)
    if not isinstance(value, str):
        return None
    value = canonical_id(value)  # the route read it so (ids.PathId)
    return value if _ID.fullmatch(value) else None


async def record(request: Request, *, status: int, description: str) -> None:
    """Record the refusal of an audited API write by a verified caller; nothing otherwise."""
    caller: TokenPrincipal | None = request.scope.get(CALLER)
    path = getattr(request.scope.get("route"), "path", "")
    event = EVENT_TYPES.get((request.method, path))
    if caller is None or event is None or not 400 <= status < 500:
        return
    from keyservice.dependencies import audit_actor

    async def actor(session: AsyncSession) -> str:
        return await audit_actor(session, caller)

    # Self-service: one's own keys, or one's own password.
    own = caller.id if path.startswith(("/api-keys", "/me/")) else None
    await _write(request, event, actor, own=own, status=status, description=description)


async def record_console(request: Request, *, status: int) -> None:
    """Record the refusal of a console form that makes an audited change, by a signed-in
    user; the reason is what the page said (render() leaves it in the request's scope)."""
    viewer = getattr(request.state, "console_viewer", None)
    # The route's own path: the admin pages' routes carry their router's prefix only.
    path = getattr(request.scope.get("route"), "path", "").removeprefix("/console")
    event = CONSOLE_EVENT_TYPES.get(path)
    if viewer is None or event is None or request.method != "POST" or not 400 <= status < 500:
        return
    # From `me` (read at the request's start): the handler may have rolled back its
    # session, expiring the ORM principal, whose attributes would then need a read.
    name = f"user:{viewer.me.username}"

    async def actor(_session: AsyncSession) -> str:
        return name

    own = viewer.me.id if path.startswith(("/keys", "/password")) else None
    # The page is rendered, the request's session still open (its dependency ends after
    # the answer): end its transaction, whose reads would hold off SQLite's write below.
    request_session: AsyncSession | None = request.scope.get(REQUEST_SESSION)
    if request_session is not None:
        await request_session.rollback()
    description = request.scope.get(CONSOLE_REFUSAL) or "the form was refused"
    await _write(request, event, actor, own=own, status=status, description=description)


async def _write(
    request: Request,
    event: str,
    actor: Callable[[AsyncSession], Awaitable[str]],
    *,
    own: str | None,
    status: int,
    description: str,
) -> None:
    """Write the event in its own transaction (the request's was rolled back). A failure
    to write it is logged and does not change the answer."""
    from keyservice.dependencies import request_ip

    context: AppContext = request.app.state.context
    principal_id = _path_id(request, "user_id") or _path_id(request, "device_id") or own
    try:
        async with context.database.sessionmaker() as session:
            audit.record(
                session,
                type=event,
                outcome="failure",
                actor=await actor(session),
                principal_id=principal_id,
                key_id=_path_id(request, "key_id"),
                ip=await request_ip(request, context),
                reason=f"refused ({status}): {description}",
            )
            await session.commit()
    except Exception as exc:  # the refusal is answered all the same
        # The error's name, as the other background writers log theirs: its text is the
        # statement and the database's lines, which would break the one-line log.
        log.warning("could not record a refused %s: %s", event, type(exc).__name__)
        if context.metrics is not None:
            context.metrics.audit_write_failure()
