"""GET /me: the caller and warnings about its keys."""

from __future__ import annotations

from fastapi import APIRouter

from keyservice.dependencies import ContextDep, CurrentPrincipal, SessionDep
from keyservice.principals import service
from keyservice.principals.schemas import MeRead

router = APIRouter(tags=["me"])


@router.get("/me", response_model=MeRead)
async def me(principal: CurrentPrincipal, session: SessionDep, context: ContextDep) -> MeRead:
    return await service.describe(session, principal_id=principal.id, settings=context.settings)
