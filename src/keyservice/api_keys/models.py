"""API keys: a public client id plus a secret stored only as a peppered HMAC."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from keyservice.database import Base, UTCDateTime, new_id, utcnow

_SCOPES_CHANGED = text("scopes_changed_at IS NOT NULL")


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    # HMAC-SHA256(pepper, secret), hex. NULL for legacy keys, which use legacy_hash.
    secret_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principal.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    # None means the key inherits its owner's permissions at each exchange.
    scopes: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    allowed_ips: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_used_ip: Mapped[str | None] = mapped_column(String(45), default=None)
    rotated_from_id: Mapped[str | None] = mapped_column(String(36), default=None)
    # When `scopes` last changed (PATCH): the revocation view then refuses the key's access
    # tokens that carry a scope it no longer has (auth/revocation.py).
    scopes_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Keys imported from an older store: a passlib hash of the whole old key string, and an
    # HMAC of that string (set at import when known, or after the first successful use) so
    # later exchanges find the row without trying every slow hash.
    is_legacy: Mapped[bool] = mapped_column(Boolean, default=False)
    legacy_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    legacy_lookup: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    # The label of the server secret (hashing.secret_label) that `secret_hash` or
    # `legacy_lookup` was made under, so that a rotation of the secret can count the keys
    # still needing the old one. NULL: made before labels (0011), or no HMAC yet.
    hashed_under: Mapped[str | None] = mapped_column(String(16), default=None)

    __table_args__ = (
        Index("ix_api_key_principal_id", "principal_id"),
        # Revoked keys by when (the revocation view's reload, every few seconds in every
        # worker) and unrevoked ones by expiry (`keys expiring`, the status filters):
        # without it both read every key.
        Index("ix_api_key_revoked_at_expires_at", "revoked_at", "expires_at"),
        # Keys whose scopes changed lately, for the same reload: few rows, so partial.
        Index(
            "ix_api_key_scopes_changed_at",
            "scopes_changed_at",
            sqlite_where=_SCOPES_CHANGED,
            postgresql_where=_SCOPES_CHANGED,
        ),
    )

    def status(self, *, owner_usable: bool, now: datetime) -> str:
        """Derive the status in the order API.md gives: revoked, expired, suspended, valid."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if not owner_usable:
            return "suspended"
        return "valid"


# GET /admin/api-keys pages newest first (then by id): a page is an index range read from
# the cursor's (created_at, id) in the list's own order, not a sort of every key, even
# where many keys share a created_at (migration 0007).
Index("ix_api_key_created_at_id", ApiKey.created_at.desc(), ApiKey.id)
