"""Refresh tokens (single use, in families), family revocations and JWT signing keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from keyservice.database import Base, UTCDateTime, new_id, new_ordered_id, utcnow


class RefreshToken(Base):
    __tablename__ = "refresh_token"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_ordered_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Every token descended from one exchange shares the family id (the JWT's `sid`).
    family_id: Mapped[str] = mapped_column(String(36))
    parent_id: Mapped[str | None] = mapped_column(String(36), default=None)
    # No foreign keys (migration 0003): they locked the same parent rows on every insert.
    # Principals and keys are never deleted, and the refresh path joins both and refuses a
    # token whose owner or key row is missing.
    principal_id: Mapped[str] = mapped_column(String(36))
    key_id: Mapped[str | None] = mapped_column(String(36), default=None)
    scope: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        # Read in ranges only (prune): a BRIN summary, not a B-tree entry per token.
        Index("ix_refresh_token_expires_at", "expires_at", postgresql_using="brin"),
        # Password sign-ins (no key), ended by principal when the password changes.
        Index(
            "ix_refresh_token_password_sessions",
            "principal_id",
            postgresql_where=text("key_id IS NULL"),
            sqlite_where=text("key_id IS NULL"),
        ),
    )


class RevokedFamily(Base):
    """A revoked refresh-token family: all its refresh tokens and access tokens are dead."""

    __tablename__ = "revoked_family"

    family_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (Index("ix_revoked_family_revoked_at", "revoked_at"),)


class SigningKey(Base):
    __tablename__ = "signing_key"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    algorithm: Mapped[str] = mapped_column(String(16))
    # PKCS#8 DER, encrypted with AES-GCM under a key derived from the server secret.
    private_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when a newer key became current; published until every token it signed expired.
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
