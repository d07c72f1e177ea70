"""The scope catalog: list, create, and check names against it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit import service as audit
from keyservice.database import Database
from keyservice.exceptions import Conflict
from keyservice.scopes.models import Scope

log = logging.getLogger(__name__)


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
    session: AsyncSession,
    *,
    name: str,
    description: str,
    actor: str | None,
    ip: str | None,
    names: CatalogNames,
) -> Scope:
    """Add a scope to the catalog (409 if the name exists) and commit; `names`, this
    process's copy for the metadata, has it at once (other processes' within their ttl)."""
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
    names.invalidate()
    return scope


class CatalogNames:
    """The catalog's names as this process last read them, for the RFC 8414 metadata.

    Discovery must keep answering through a database blip (as jwks.json does from the
    keyring): the names are re-read when older than `ttl`, and the last good copy is served
    while the database fails. Only a process that never read them has nothing to serve.
    """

    def __init__(self, *, ttl: float) -> None:
        self.ttl = ttl
        self._names: list[str] | None = None
        self._checked_at = 0.0

    def invalidate(self) -> None:
        """Re-read on the next use: this process just changed the catalog."""
        self._checked_at = float("-inf")

    async def get(self, database: Database) -> list[str]:
        now = time.monotonic()
        if self._names is not None and now - self._checked_at < self.ttl:
            return self._names
        # Set before reading: concurrent requests serve the copy in hand meanwhile, and a
        # failed read is not retried by every request of an outage (each could wait for the
        # connect timeout) but after `ttl`.
        self._checked_at = now
        try:
            async with database.sessionmaker() as session:
                names = [scope.name for scope in await list_scopes(session)]
        except Exception as exc:
            if self._names is None:
                raise  # nothing to fall back on: the outage answer (503) or a bug's (500)
            log.warning(
                "scope catalog reload failed, serving the last copy: %s", type(exc).__name__
            )
            return self._names
        self._names = names
        return names
