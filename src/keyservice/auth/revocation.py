"""The per-process revocation view: what makes a still-unexpired access token dead.

Three sets, small because they only hold what was revoked within one access-token lifetime
(older tokens have expired anyway: the keyring honours none for longer than the current
lifetime from its `iat`, even one issued before the lifetime was shortened): revoked keys
(by client id), revoked refresh-token families (the JWT's `sid`), and disabled or deleted
principals; the current permissions of each principal whose permissions changed within
that lifetime, since a token carries the scopes its principal held when it was issued (one
carrying a permission taken away since is refused); likewise the current scopes of each
key whose scopes were edited within that lifetime (by client id; a key switched to inherit
its owner's permissions has none of its own to check); and, for each principal disabled or
re-enabled within that lifetime, the last second whose tokens that revoked (re-enabling it
does not bring its old tokens back). Checking them costs no database round trip. The
view is re-read every `revocation_poll_seconds` as the safety net, and on PostgreSQL a
LISTEN connection applies changes from any replica within milliseconds. A process that
makes a change applies it to its own view as its transaction commits (`publish`), so it
is in effect here before the request that made it answers, and a change rolled back never
reaches any view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from keyservice.api_keys.models import ApiKey
from keyservice.auth.models import RevokedFamily
from keyservice.database import Database, utcnow
from keyservice.principals.models import Principal, revoked_through
from keyservice.scopes.models import effective_permissions

log = logging.getLogger(__name__)
CHANNEL = "keyservice_revocation"
# PostgreSQL's limit on a NOTIFY payload is 8000 bytes (less than the page size by default).
NOTIFY_PAYLOAD_MAX = 7999


def _beyond(allowed: frozenset[str] | None, claims: Mapping[str, Any]) -> bool:
    """Whether the token carries a scope outside `allowed` (None: nothing to check)."""
    scope = claims.get("scope")
    return allowed is not None and isinstance(scope, str) and not allowed.issuperset(scope.split())


class RevocationView:
    def __init__(self, *, access_token_ttl: int, poll_seconds: float) -> None:
        self.access_token_ttl = access_token_ttl
        self.poll_seconds = poll_seconds
        self.revoked_clients: set[str] = set()
        self.revoked_families: set[str] = set()
        self.disabled_principals: set[str] = set()
        # Those of them deleted (a device deleted by an admin), told apart only in the
        # refusal's wording: every one of them is in `disabled_principals`.
        self.deleted_principals: set[str] = set()
        # principal id -> the permissions it holds now (as held: `admin` implies the other
        # built-ins), for principals whose permissions changed within the horizon.
        self.permissions: dict[str, frozenset[str]] = {}
        # client id -> the scopes the key has now, for keys whose scopes changed within the
        # horizon and that have scopes of their own (an inheriting key restricts nothing).
        self.key_scopes: dict[str, frozenset[str]] = {}
        # principal id -> the last second (a JWT `iat`) whose tokens its last disable or
        # re-enable revoked (Principal.tokens_revoked_at), for those within the horizon.
        self.revoked_through: dict[str, int] = {}
        self.loaded = False
        # Changes applied while a reload's queries run: the reload replaces the sets with
        # what it read, which may predate them, so they are applied again afterwards.
        self._reloading = 0
        self._during_reload: list[str] = []
        self.on_signing_keys_changed: list[Any] = []

    def reason(self, claims: Mapping[str, Any]) -> str | None:
        """Return why a verified token is no longer honoured, or None if it still is."""
        sub = claims.get("sub")
        if sub in self.disabled_principals:
            if sub in self.deleted_principals:
                return "the account behind this token was deleted"
            return "the account behind this token is disabled"
        if self.revoked_through:
            through = self.revoked_through.get(str(sub))
            iat = claims.get("iat")
            # Equal counts as before: `iat` is whole seconds (principals/models.py).
            if through is not None and not (isinstance(iat, int) and iat > through):
                return "its account was disabled after it was issued; get a new token"
        if claims.get("sid") in self.revoked_families:
            return "this token's session was revoked"
        if claims.get("client_id") in self.revoked_clients:
            return "the API key behind this token was revoked"
        if self.permissions and _beyond(self.permissions.get(str(claims.get("sub"))), claims):
            return "a permission it carries has since been taken away; get a new token"
        if self.key_scopes and _beyond(self.key_scopes.get(str(claims.get("client_id"))), claims):
            return "its API key no longer has a scope it carries; get a new token"
        return None

    async def reload(self, session: AsyncSession) -> None:
        horizon = utcnow() - timedelta(seconds=self.access_token_ttl + 60)
        self._reloading += 1
        try:
            clients = set(
                await session.scalars(
                    select(ApiKey.client_id).where(
                        ApiKey.revoked_at.is_not(None), ApiKey.revoked_at > horizon
                    )
                )
            )
            families = set(
                await session.scalars(
                    select(RevokedFamily.family_id).where(RevokedFamily.revoked_at > horizon)
                )
            )
            unusable = (
                await session.execute(
                    select(Principal.id, Principal.deleted_at.is_not(None)).where(
                        Principal.disabled | Principal.deleted_at.is_not(None)
                    )
                )
            ).all()
            changed = (
                await session.execute(
                    select(Principal.id, Principal.permissions).where(
                        Principal.permissions_changed_at > horizon
                    )
                )
            ).all()
            edited = (
                await session.execute(
                    select(ApiKey.client_id, ApiKey.scopes).where(
                        ApiKey.scopes_changed_at > horizon
                    )
                )
            ).all()
            cut = (
                await session.execute(
                    select(Principal.id, Principal.tokens_revoked_at).where(
                        Principal.tokens_revoked_at > horizon
                    )
                )
            ).all()
        finally:
            self._reloading -= 1
        self.revoked_clients = clients
        self.revoked_families = families
        self.disabled_principals = {id_ for id_, _ in unusable}
        self.deleted_principals = {id_ for id_, deleted in unusable if deleted}
        self.permissions = {id_: effective_permissions(held) for id_, held in changed}
        self.key_scopes = {
            client_id: frozenset(scopes) for client_id, scopes in edited if scopes is not None
        }
        self.revoked_through = {id_: revoked_through(at) for id_, at in cut if at is not None}
        for message in self._during_reload:
            self._apply(message)
        if not self._reloading:
            self._during_reload.clear()
        self.loaded = True

    def apply(self, message: str) -> None:
        """Apply one change, as sent by `notify` (`kind:value`)."""
        if self._reloading:
            self._during_reload.append(message)
        self._apply(message)

    def _apply(self, message: str) -> None:
        kind, _, value = message.partition(":")
        if kind == "client":
            self.revoked_clients.add(value)
        elif kind == "family":
            self.revoked_families.add(value)
        elif kind == "principal-disabled":
            self.disabled_principals.add(value)
        elif kind == "principal-deleted":
            self.disabled_principals.add(value)
            self.deleted_principals.add(value)
        elif kind == "principal-enabled":
            self.disabled_principals.discard(value)
        elif kind == "principal-tokens":
            principal_id, _, through = value.rpartition(":")
            self.revoked_through[principal_id] = max(
                int(through), self.revoked_through.get(principal_id, 0)
            )
        elif kind == "principal-permissions":
            change = json.loads(value)
            self.permissions[change["id"]] = effective_permissions(change["held"])
        elif kind == "key-scopes":
            change = json.loads(value)
            if change["scopes"] is None:
                self.key_scopes.pop(change["client_id"], None)
            else:
                self.key_scopes[change["client_id"]] = frozenset(change["scopes"])

    async def run(
        self,
        database: Database,
        stop: asyncio.Event,
        on_signing_keys: Any = None,
        *,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        """Keep the view fresh until `stop`: LISTEN on PostgreSQL, polling everywhere.

        `on_failure` is called for each reload that failed (the metrics count them).
        """
        from keyservice.context import ticks

        listener = None
        if not database.is_sqlite:
            listener = await self._listen(database, on_signing_keys)
        try:
            async for _ in ticks(stop, self.poll_seconds):
                try:
                    async with database.sessionmaker() as session:
                        await self.reload(session)
                except Exception as exc:  # the database may be restarting; keep the last view
                    log.warning("revocation view reload failed: %s", type(exc).__name__)
                    if on_failure is not None:
                        on_failure()
                if not database.is_sqlite and (listener is None or listener.is_closed()):
                    listener = await self._listen(database, on_signing_keys)
        finally:
            if listener is not None and not listener.is_closed():
                with contextlib.suppress(Exception):
                    await listener.close(timeout=2)

    async def _listen(self, database: Database, on_signing_keys: Any) -> Any:
        import asyncpg  # type: ignore[import-untyped]

        url = make_url(database.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)

        def _callback(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            if payload == "signing-keys" and on_signing_keys is not None:
                asyncio.get_running_loop().create_task(on_signing_keys())
            else:
                self.apply(payload)

        connecting = asyncio.ensure_future(asyncpg.connect(dsn, timeout=5))
        try:
            connection = await asyncio.shield(connecting)
            await connection.add_listener(CHANNEL, _callback)
        except asyncio.CancelledError:
            # Shutting down mid-connect: finish the connect and close it, leaking nothing.
            with contextlib.suppress(Exception):
                await (await connecting).close(timeout=2)
            raise
        except Exception as exc:
            log.warning("revocation LISTEN unavailable, polling only: %s", type(exc).__name__)
            return None
        return connection


async def publish(session: AsyncSession, view: RevocationView, message: str) -> None:
    """Send a change (`kind:value`) to every replica's view and to `view`, this process's,
    when `session` commits; a rollback sends nothing.

    Every revocation goes through here, never `view.apply` before the commit: a
    transaction that rolls back later (a refused check, an error, a retry) would leave
    this process refusing tokens that nothing revoked until the next reload. NOTIFY is
    transactional already; `view` gets the messages from the commit itself, in order.
    Savepoints (`begin_nested`) are not used with it: one rolled back alone would not
    take its messages back.
    """
    if not session.in_transaction():  # on SQLite nothing may have begun one yet
        await session.begin()
    await notify(session, message)
    session.info.setdefault(_PENDING, []).append((view, message))


_PENDING = "keyservice.revocation.pending"


@event.listens_for(Session, "after_commit")
def _apply_committed(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the outer one may roll back
        return
    for view, message in session.info.pop(_PENDING, ()):
        # The commit is done: a failure here must not turn it into an error answer or
        # drop the messages after it. The view's next reload reads the change anyway.
        try:
            view.apply(message)
        except Exception as exc:
            kind = message.partition(":")[0]
            log.warning("revocation %s not applied at commit: %s", kind, type(exc).__name__)


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, transaction: Any) -> None:
    # After `after_commit` on a commit; on a rollback or a close, what was published is
    # dropped: the next transaction of the same session starts with nothing pending.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


async def notify(session: AsyncSession, message: str) -> None:
    """Tell every replica (on commit) about a change; a no-op on SQLite. Revocations go
    through `publish`, which tells this process too."""
    if session.get_bind().dialect.name == "postgresql":
        if len(message.encode()) > NOTIFY_PAYLOAD_MAX:
            # PostgreSQL refuses a longer payload, which would fail the whole change (a key
            # or principal given ~100 long scope names). The other replicas read it at their
            # next reload instead (every `revocation_poll_seconds`, 2 by default).
            return
        from sqlalchemy import func

        await session.execute(select(func.pg_notify(CHANNEL, message)))
