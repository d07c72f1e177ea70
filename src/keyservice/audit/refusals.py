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
from typing import TYPE_CHECKING

from fastapi import Request

from keyservice.audit import service as audit

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
}

# Ids as this service makes them; anything else in a path (a typo, a pasted key string)
# is not copied into the event.
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _path_id(request: Request, name: str) -> str | None:
    value = request.scope.get("path_params", {}).get(name)
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


async def record(request: Request, *, status: int, description: str) -> None:
    """Record the refusal of an audited write by a verified caller; nothing otherwise.

    Written in its own transaction (the request's was rolled back). A failure to write it
    is logged and does not change the answer.
    """
    caller: TokenPrincipal | None = request.scope.get(CALLER)
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    event = EVENT_TYPES.get((request.method, path or ""))
    if caller is None or event is None or not 400 <= status < 500:
        return
    from keyservice.dependencies import audit_actor, request_ip

    context: AppContext = request.app.state.context
    principal_id = _path_id(request, "user_id") or _path_id(request, "device_id")
    if principal_id is None and path is not None and path.startswith("/api-keys"):
        principal_id = caller.id  # self-service: the caller's own keys
    try:
        async with context.database.sessionmaker() as session:
            audit.record(
                session,
                type=event,
                outcome="failure",
                actor=await audit_actor(session, caller),
                principal_id=principal_id,
                key_id=_path_id(request, "key_id"),
                ip=await request_ip(request, context),
                reason=f"refused ({status}): {description}",
            )
            await session.commit()
    except Exception as exc:  # the refusal is answered all the same
        log.warning("could not record the refusal of %s %s: %s", request.method, path, exc)
