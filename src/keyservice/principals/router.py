"""GET /me: the caller and warnings about its keys; GET /me/token: what its token carries;
POST /me/password: a user changes their own password."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from keyservice import apidoc
from keyservice.dependencies import ContextDep, CurrentPrincipal, SessionDep, client_ip
from keyservice.exceptions import Forbidden
from keyservice.principals import service
from keyservice.principals.schemas import MeRead, PasswordChange, TokenRead
from keyservice.responses import JSONResponse
from keyservice.routing import TableRoute
from keyservice.users import own_password

router = APIRouter(tags=["me"], route_class=TableRoute)


@router.get(
    "/me",
    summary="The caller: principal, permissions and key-expiry warnings",
    response_model=MeRead,
)
async def me(principal: CurrentPrincipal, session: SessionDep, context: ContextDep) -> MeRead:
    return await service.describe(session, principal_id=principal.id, settings=context.settings)


@router.get(
    "/me/token",
    summary="The presented access token as this service reads it",
    response_model=TokenRead,
)
async def me_token(principal: CurrentPrincipal) -> JSONResponse:
    """Describe the presented access token as this service sees it (no database work)."""
    # A response of our own, built from claims this service signed and has just verified:
    # going through TokenRead (FastAPI's response_model machinery, or the model built and
    # dumped here) cost ~9 us of a ~60 us request (bench/README). response_model still
    # documents the body; a test holds the two to the same shape.
    claims = principal.claims
    return JSONResponse(
        {
            "sub": principal.id,
            "principal_type": principal.type,
            "scope": sorted(principal.scopes),
            "client_id": principal.client_id,
            "sid": principal.sid,
            "exp": claims["exp"],
            "iat": claims["iat"],
        }
    )


@router.post(
    "/me/password",
    summary="Change the calling user's own password",
    status_code=204,
    responses={
        403: apidoc.error(
            "`forbidden`: a wrong current password, a device, or an API key's token "
            "(only a password sign-in may change the password)."
        ),
        429: apidoc.error(
            "`slow_down`: too many failed sign-ins.", headers={"Retry-After": "Seconds to wait."}
        ),
    },
)
async def change_password(
    body: PasswordChange,
    principal: CurrentPrincipal,
    session: SessionDep,
    context: ContextDep,
    request: Request,
) -> Response:
    """Change the caller's own password, the current one first.

    Only a person signed in with the password (a password-grant token): an API key's token
    is refused, so a leaked key is no way to the account's password. A wrong current
    password counts as a failed sign-in (throttled, audited as `login`). Every sign-in
    session of the user ends, this one included: sign in again with the new password.
    """
    if principal.type != "user":
        raise Forbidden("Only users have a password; a device signs in with its API keys.")
    if principal.client_id is not None:
        raise Forbidden(
            "A password is changed by its owner signed in with it (the password grant or "
            "the console), not with an API key's token."
        )
    await own_password.change(
        context,
        session,
        user_id=principal.id,
        current=body.current_password,
        new=body.new_password,
        ip=client_ip(request, context),
    )
    return Response(status_code=204)
