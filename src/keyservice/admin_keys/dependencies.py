"""Who may manage keys through the admin API: an admin that is a user, never a device."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from keyservice.dependencies import RequestIp, TokenPrincipal, require_scope

__all__ = ["AdminUser", "RequestIp", "admin_user"]
from keyservice.exceptions import InsufficientScope
from keyservice.scopes.models import ADMIN


async def admin_user(
    principal: Annotated[TokenPrincipal, Depends(require_scope(ADMIN))],
) -> TokenPrincipal:
    """The calling admin; devices cannot manage keys, even holding `admin` (403)."""
    if principal.type != "user":
        raise InsufficientScope(
            ADMIN,
            "Only a user admin can create, rotate or revoke API keys: a device's token "
            "cannot, even one that carries 'admin'.",
        )
    return principal


AdminUser = Annotated[TokenPrincipal, Depends(admin_user)]
