"""Who may manage keys through the admin API: an admin that is a user, never a device."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from keyservice.dependencies import ContextDep, TokenPrincipal, client_ip, require_scope
from keyservice.exceptions import InsufficientScope
from keyservice.scopes.models import ADMIN


async def admin_user(
    principal: Annotated[TokenPrincipal, Depends(require_scope(ADMIN))],
) -> TokenPrincipal:
    """The calling admin; devices cannot manage keys, even holding `admin` (403)."""
    if principal.type != "user":
        raise InsufficientScope(ADMIN)
    return principal


AdminUser = Annotated[TokenPrincipal, Depends(admin_user)]


def request_ip(request: Request, context: ContextDep) -> str | None:
    """The caller's address as audit events record it."""
    address = client_ip(request, context)
    return str(address) if address is not None else None


RequestIp = Annotated[str | None, Depends(request_ip)]
