"""Principals: users (people, with a password) and devices (machines, managed by admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import JSON, Boolean, ColumnElement, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from keyservice.database import Base, UTCDateTime, new_id, utcnow

PrincipalKind = Literal["user", "device"]

_LIVE = text("deleted_at IS NULL")
_UNUSABLE = text("disabled OR deleted_at IS NOT NULL")
_PERMISSIONS_CHANGED = text("permissions_changed_at IS NOT NULL")
_TOKENS_REVOKED = text("tokens_revoked_at IS NOT NULL")


class Principal(Base):
    __tablename__ = "principal"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))
    # The username of a user or the name of a device.
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # When `permissions` last changed: the revocation view then refuses this principal's
    # access tokens that carry more than it now holds (auth/revocation.py).
    permissions_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Set when the principal is disabled (and moved up when it is re-enabled,
    # principals/service.py): every token issued up to then, in that second or before, is
    # dead for good, so re-enabling does not bring back what was out there.
    tokens_revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Devices are deleted softly: their keys stay listed as revoked and audit stays readable.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        Index(
            "uq_principal_kind_name_live",
            "kind",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # What the revocation view reloads every few seconds in every worker: the
        # principals that cannot sign in, recent permission changes and recent cut-offs
        # of a disabled principal's tokens. Few rows each, so partial indexes instead of a
        # read of every principal.
        Index(
            "ix_principal_unusable",
            "id",
            sqlite_where=_UNUSABLE,
            postgresql_where=_UNUSABLE,
        ),
        Index(
            "ix_principal_permissions_changed_at",
            "permissions_changed_at",
            sqlite_where=_PERMISSIONS_CHANGED,
            postgresql_where=_PERMISSIONS_CHANGED,
        ),
        Index(
            "ix_principal_tokens_revoked_at",
            "tokens_revoked_at",
            sqlite_where=_TOKENS_REVOKED,
            postgresql_where=_TOKENS_REVOKED,
        ),
    )

    @property
    def is_user(self) -> bool:
        return self.kind == "user"

    @property
    def usable(self) -> bool:
        return not self.disabled and self.deleted_at is None

    def tokens_revoked(self, issued_at: datetime) -> bool:
        """Whether a token issued at `issued_at` was revoked by disabling the principal."""
        if self.tokens_revoked_at is None:
            return False
        return int(issued_at.timestamp()) <= revoked_through(self.tokens_revoked_at)


# Names are one whatever their letter case: "Alice" signs in as "alice" too, and no one may
# create "alice" beside her (a look-alike in lists and audit trails, and a second throttle
# count for her password). The name is kept as typed; this index says which are taken.
# Names are ASCII (users/schemas.py NAME_PATTERN), where every database's lower() agrees.
# The (kind, name) index above stays: lists page by it.
Index(
    "uq_principal_kind_lower_name_live",
    Principal.kind,
    func.lower(Principal.name),
    unique=True,
    sqlite_where=_LIVE,
    postgresql_where=_LIVE,
)


def named(name: str) -> ColumnElement[bool]:
    """The principals called `name`, whatever its letter case (the index above).

    `name` is lowered by Python, as the sign-in throttle's subject is (auth/grants/
    password.py), not by the database: PostgreSQL's lower() follows its locale ("İ" to
    "i"), so a name it matched could count as another subject, a fresh allowance of
    guesses. The stored names are ASCII, which every lower() folds alike.
    """
    return func.lower(Principal.name) == name.lower()


def revoked_through(tokens_revoked_at: datetime) -> int:
    """The last second whose tokens `tokens_revoked_at` revokes.

    A JWT's `iat` is whole seconds (floored), so a token issued in the very second of the
    disable cannot be told apart from one issued just before it: the whole second is
    revoked. Tokens issued right after a quick re-enable would be refused too, so issuing
    waits for the next second then (auth.service.past_revocation).
    """
    return int(tokens_revoked_at.timestamp())
