"""Request dependencies as Annotated aliases: context, session, the caller, authorization."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit.refusals import CALLER, REQUEST_SESSION
from keyservice.config import Settings
from keyservice.context import AppContext
from keyservice.exceptions import InsufficientScope, InvalidToken, MissingToken
from keyservice.principals.models import Principal
from keyservice.scopes.models import ADMIN, BUILTIN_SCOPES
from keyservice.security import ip as ipmod
from keyservice.security.jwt import TokenError, UnknownKeyError


# Dependencies are `async def` even when they do not await: FastAPI runs plain `def`
# dependencies in its thread pool, a hand-off that costs more than the work itself.
async def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings_dep(context: ContextDep) -> Settings:
    return context.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_session(request: Request, context: ContextDep) -> AsyncIterator[AsyncSession]:
    # aclosing: when the endpoint raises, the inner generator must still run its cleanup
    # now (rollback, return the connection), not whenever it is garbage-collected.
    async with contextlib.aclosing(context.database.session()) as sessions:
        async for session in sessions:
            # For the console's refusals, recorded while it is still open (audit/refusals.py).
            request.scope[REQUEST_SESSION] = session
            yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def client_ip(request: Request, context: AppContext) -> ipmod.IPAddress | None:
    peer = request.client.host if request.client else None
    return ipmod.client_ip(
        peer, request.headers.getlist("x-forwarded-for"), context.settings.trusted_proxies
    )


async def request_ip(request: Request, context: ContextDep) -> str | None:
    """The caller's address as audit events record it."""
    address = client_ip(request, context)
    return str(address) if address is not None else None


RequestIp = Annotated[str | None, Depends(request_ip)]


@dataclass(frozen=True)
class TokenPrincipal:
    """The caller, as its verified access token describes it."""

    id: str
    type: str
    scopes: frozenset[str]
    client_id: str | None
    sid: str | None
    claims: dict[str, Any]

    def holds(self, scope: str) -> bool:
        return scope in self.scopes or (scope in BUILTIN_SCOPES and ADMIN in self.scopes)

    @property
    def actor(self) -> str:
        return f"key:{self.client_id}" if self.client_id else f"{self.type}:{self.id}"


async def audit_actor(session: AsyncSession, principal: TokenPrincipal) -> str:
    """Name the caller in audit events as sign-ins, self-service and the console do:
    `key:<client id>` for a key's token, else `user:<username>` or `device:<name>`."""
    if principal.client_id:
        return principal.actor
    name = await session.scalar(select(Principal.name).where(Principal.id == principal.id))
    return f"{principal.type}:{name}" if name is not None else principal.actor


def authenticate_bearer(context: AppContext, authorization: str | None) -> TokenPrincipal:
    """Verify `Authorization: Bearer <JWT>` (RFC 6750) and the revocation view."""
    if not authorization:
        raise MissingToken()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        # Another scheme (Basic, a bare key) sends no bearer credentials: RFC 6750 §3.1 has
        # no error code for that, only the challenge saying which scheme is accepted.
        raise MissingToken(
            "This endpoint accepts only an access token: Authorization: Bearer <JWT>."
        )
    token = token.strip()
    if not token:
        raise InvalidToken("Send the access token as: Authorization: Bearer <JWT>.")
    try:
        principal = context.keyring.verify_as(token, _principal_from_claims)
    except UnknownKeyError as exc:
        raise UnknownSigningKey(str(exc)) from None
    except TokenError as exc:
        raise InvalidToken(str(exc)) from None
    reason = context.revocation.reason(principal.claims)  # every time: it changes
    if reason is not None:
        raise InvalidToken(f"The access token is no longer valid: {reason}.")
    return principal


def _principal_from_claims(claims: dict[str, Any]) -> TokenPrincipal:
    scope = claims.get("scope")
    return TokenPrincipal(
        id=claims["sub"],
        type=str(claims.get("principal_type", "user")),
        scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
        client_id=claims.get("client_id"),
        sid=claims.get("sid"),
        claims=claims,
    )


async def get_current_principal(request: Request) -> TokenPrincipal:
    # get_context called, not declared as a sub-dependency: each level of FastAPI's
    # dependency solving costs every authenticated request several microseconds.
    context = await get_context(request)
    authorization = request.headers.get("authorization")
    try:
        principal = authenticate_bearer(context, authorization)
    except UnknownSigningKey:
        if not await context.reload_signing_keys():
            raise InvalidToken(
                "The access token was not signed by a key of this service."
            ) from None
        principal = authenticate_bearer(context, authorization)
    # Who is refused, should this request be (audit/refusals.py): one dict entry.
    request.scope[CALLER] = principal
    return principal


class UnknownSigningKey(InvalidToken):
    """The token names a signing key this process has not loaded yet."""


CurrentPrincipal = Annotated[TokenPrincipal, Depends(get_current_principal)]


def require_scope(scope: str) -> Callable[[TokenPrincipal], Awaitable[TokenPrincipal]]:
    """Declare on a route that the caller's token must carry `scope` (403 otherwise)."""

    async def dependency(principal: CurrentPrincipal) -> TokenPrincipal:
        if not principal.holds(scope):
            raise InsufficientScope(scope)
        return principal

    dependency.required_scope = scope  # type: ignore[attr-defined]  # for apidoc.py
    return dependency


AdminPrincipal = Annotated[TokenPrincipal, Depends(require_scope(ADMIN))]
