"""GET /me: the caller and warnings about its keys; GET /me/token: what its token carries."""

from __future__ import annotations

from fastapi import APIRouter

from keyservice.dependencies import ContextDep, CurrentPrincipal, SessionDep
from keyservice.principals import service
from keyservice.principals.schemas import MeRead, TokenRead
from keyservice.responses import JSONResponse
from keyservice.routing import TableRoute

router = APIRouter(tags=["me"], route_class=TableRoute)


@router.get("/me", response_model=MeRead)
async def me(principal: CurrentPrincipal, session: SessionDep, context: ContextDep) -> MeRead:
    return await service.describe(session, principal_id=principal.id, settings=context.settings)


@router.get("/me/token", response_model=TokenRead)
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
