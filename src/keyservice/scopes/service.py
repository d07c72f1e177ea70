"""The scope catalog: list, create, edit, delete, and check names against it.

Permissions and key scopes are JSON lists of names, which no foreign key can tie to the
catalog; the catalog's row locks do instead (PostgreSQL; SQLite's write lock serialises
every transaction here). A transaction that writes names into a principal's permissions
or a key's scopes first `hold`s their rows (FOR KEY SHARE) and refuses the names that are
gone; `delete` locks the row it deletes (FOR UPDATE) before it counts who holds the name.
So whichever comes second waits for the first to commit, and then either the deletion
counts the new holder (409) or the grant finds the name gone (422): no principal or key
is left holding a name the catalog no longer has. `delete` takes no other lock, so no
lock order can deadlock against it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from sqlalchemy import ColumnElement, String, exists, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.database import Database
from keyservice.exceptions import Conflict, NotFound, ValidationFailed, echoable, quoted_names
from keyservice.principals.models import Principal
from keyservice.scopes.models import Scope
from keyservice.scopes.schemas import SCOPE_NAME

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


async def hold(session: AsyncSession, *, names: Iterable[str]) -> list[str]:
    """Return the names that are not in the catalog, and keep the others in it until this
    transaction ends: a `delete` of one waits for it, then sees what it wrote.

    Call it in the transaction that writes the names, after anything that commits early
    (a slow password hash). FOR KEY SHARE: an edit of a description does not wait for it.
    """
    wanted = set(names)
    if not wanted:
        return []
    query = select(Scope.name).where(Scope.name.in_(wanted))
    known = set(await session.scalars(query.with_for_update(read=True, key_share=True)))
    return sorted(wanted - known)


def not_in_catalog(missing: Sequence[str], *, field: str) -> ValidationFailed:
    """The 422 for permissions or key scopes that name what the catalog does not hold."""
    what = "permission(s)" if field == "permissions" else "scope(s)"
    return ValidationFailed(
        f"Unknown {what}: {quoted_names(missing, SCOPE_NAME)}. Add them to the scope catalog "
        "first (POST /admin/scopes, as an admin).",
        field=field,
    )


async def create(
    session: AsyncSession,
    *,
    name: str,
    description: str,
    actor: str | None,
    ip: str | None,
    names: CatalogNames,
) -> Scope:
    """Add a scope to the catalog (409 if the name or a look-alike exists) and commit;
    `names`, this process's copy for the metadata, has it at once (other processes' within
    their ttl)."""
    await _refuse_taken(session, name=name)
    scope = Scope(name=name, description=description)
    session.add(scope)
    audit.record(session, type="scope.created", actor=actor, ip=ip, reason=f"scope {name}")
    try:
        await session.commit()
    except IntegrityError:
        # A create of the name or a look-alike committed between the read and the insert
        # (PostgreSQL; SQLite's write lock serialises them), and the primary key or the
        # index on lower(name) refused this one: the read, afresh, now finds it and says so.
        await session.rollback()
        await _refuse_taken(session, name=name)
        raise Conflict(f"The scope '{name}' already exists.") from None  # deleted meanwhile
    names.invalidate()
    return scope


async def _refuse_taken(session: AsyncSession, *, name: str) -> None:
    """409 if the catalog holds `name`, or a name differing from it only in letter case."""
    # Scope names are case-sensitive at /token (RFC 6749 §3.3), but `Admin` beside `admin`
    # reads alike in a list, a token or an audit trail: an admin granting it could believe
    # they granted the other. Refused, as usernames differing in case are (the scope names
    # are ASCII, SCOPE_NAME, where every database's lower() agrees); the unique index on
    # lower(name) (models.py) makes it hold under concurrent creates. One read finds both.
    alike = await session.scalar(
        select(Scope.name)
        .where(func.lower(Scope.name) == name.lower())
        .order_by(Scope.name != name)  # the name itself first, if it is there
        .limit(1)
    )
    if alike == name:
        raise Conflict(f"The scope '{name}' already exists.")
    if alike is not None:
        raise Conflict(
            f"The scope '{name}' differs from the existing scope '{alike}' only in letter "
            "case; scope names are case-sensitive, so the two would be told apart only by "
            "it. Use the existing one, or a name of its own."
        )


def _no_such_scope(name: str) -> NotFound:
    if echoable(name, SCOPE_NAME):
        return NotFound(f"The scope '{name}' is not in the catalog.")
    return NotFound("No scope with this name is in the catalog.")


async def get(
    session: AsyncSession, *, name: str, for_update: bool = False, key_share: bool = False
) -> Scope:
    """Return the catalog's scope of this name; 404 if there is none.

    `for_update` locks the row (PostgreSQL; SQLite serialises writers) and reads it afresh;
    with `key_share` as FOR NO KEY UPDATE, which `hold`'s FOR KEY SHARE does not conflict with.
    """
    lock = {"key_share": key_share} if for_update else None
    scope = await session.get(Scope, name, with_for_update=lock, populate_existing=for_update)
    if scope is None:
        raise _no_such_scope(name)
    return scope


async def update(
    session: AsyncSession,
    *,
    name: str,
    description: str | None,
    actor: str | None,
    ip: str | None,
) -> Scope:
    """Change a scope's description (`None`: none was sent, 422), audit it and commit.

    The name cannot change: principals, keys and tokens out there hold it.
    """
    if description is None:
        raise ValidationFailed('Nothing to change: give a description ("" for none).')
    # FOR NO KEY UPDATE: concurrent edits apply in turn, and the grants holding the row FOR
    # KEY SHARE (`hold`) neither wait for it nor make it wait.
    scope = await get(session, name=name, for_update=True, key_share=True)
    if description == scope.description:  # nothing to write or audit
        await session.commit()
        return scope
    scope.description = description
    audit.record(
        session, type="scope.updated", actor=actor, ip=ip, reason=f"scope {name}: description"
    )
    await session.commit()
    return scope


def _lists(column: InstrumentedAttribute[list[str]] | InstrumentedAttribute[list[str] | None],
           name: str, dialect: str) -> ColumnElement[bool]:  # fmt: skip
    """SQL for "the JSON list in `column` has the element `name`", exactly.

    Whole elements are compared, so `bench:read` does not match `bench:read:all` (as a
    LIKE on the JSON text would). JSON null and SQL NULL (a key that inherits) hold none.
    """
    if dialect == "postgresql":
        # jsonb containment: ["a", "b"] @> ["a"]; a non-array (null) contains no array.
        contains: ColumnElement[bool] = column.cast(JSONB).contains(
            func.jsonb_build_array(literal(name, String))
        )
        return contains
    elements = func.json_each(column).table_valued("value")
    return exists(select(1).select_from(elements).where(elements.c.value == name))


async def usage(session: AsyncSession, *, name: str) -> tuple[int, int, int]:
    """How many users, devices and API keys hold the scope: every principal that is not
    deleted (disabled ones too: re-enabling brings their permissions back) and every key
    that is not revoked (expired ones too: simpler and safe, as an expiry can be read
    wrong but a revocation cannot be undone). Counts only: no row is loaded."""
    dialect = session.get_bind().dialect.name
    principals = (
        await session.execute(
            select(Principal.kind, func.count())
            .where(Principal.deleted_at.is_(None), _lists(Principal.permissions, name, dialect))
            .group_by(Principal.kind)
        )
    ).all()
    by_kind: dict[str, int] = {}
    for kind, count in principals:
        by_kind[kind] = count
    keys = await session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.revoked_at.is_(None), _lists(ApiKey.scopes, name, dialect))
    )
    return by_kind.get("user", 0), by_kind.get("device", 0), keys or 0


def _counted(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


async def delete(
    session: AsyncSession,
    *,
    name: str,
    actor: str | None,
    ip: str | None,
    names: CatalogNames,
) -> None:
    """Remove a scope from the catalog, audit it and commit; 409 for a built-in one or one
    that any user, device or unrevoked key holds (the module's docstring: why the lock)."""
    scope = await get(session, name=name, for_update=True)
    check_deletable(scope, await usage(session, name=name))
    await session.delete(scope)
    audit.record(session, type="scope.deleted", actor=actor, ip=ip, reason=f"scope {name}")
    await session.commit()
    names.invalidate()


def check_deletable(scope: Scope, held: tuple[int, int, int]) -> None:
    """409 for a built-in scope, or one held by (`usage`) users, devices or keys."""
    name = scope.name
    if scope.builtin:
        raise Conflict(
            f"The scope '{name}' is built in: the service itself checks it, so it cannot be "
            "deleted."
        )
    users, devices, keys = held
    if users or devices or keys:
        holders = [
            _counted(users, "user", "users"),
            _counted(devices, "device", "devices"),
            _counted(keys, "API key that is not revoked", "API keys that are not revoked"),
        ]
        raise Conflict(
            f"The scope '{name}' is in use: held by {', '.join(holders[:2])} and "
            f"{holders[2]}. Take it away first (edit those users' and devices' permissions, "
            "edit those keys' scopes or delete the keys), then delete it."
        )


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
