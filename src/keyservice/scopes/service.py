"""The scope catalog: list, create, and check names against it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit import service as audit
from keyservice.exceptions import Conflict
from keyservice.scopes.models import Scope


async def list_scopes(session: AsyncSession) -> Sequence[Scope]:
    return (await session.scalars(select(Scope).order_by(Scope.name))).all()


async def unknown(session: AsyncSession, *, names: Iterable[str]) -> list[str]:
    """Return the names that are not in the catalog."""
    wanted = set(names)
    if not wanted:
        return []
    known = set(await session.scalars(select(Scope.name).where(Scope.name.in_(wanted))))
    return sorted(wanted - known)


async def create(
    session: AsyncSession, *, name: str, description: str, actor: str | None, ip: str | None
) -> Scope:
    """Add a scope to the catalog (409 if the name exists) and commit."""
    if await session.get(Scope, name) is not None:
        raise Conflict(f"The scope '{name}' already exists.")
    scope = Scope(name=name, description=description)
    session.add(scope)
    audit.record(session, type="scope.created", actor=actor, ip=ip, reason=f"scope {name}")
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"The scope '{name}' already exists.") from None
    return scope
