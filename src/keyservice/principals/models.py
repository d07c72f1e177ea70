"""Principals: users (people, with a password) and devices (machines, managed by admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import JSON, Boolean, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from keyservice.database import Base, UTCDateTime, new_id, utcnow

PrincipalKind = Literal["user", "device"]


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
    )

    @property
    def is_user(self) -> bool:
        return self.kind == "user"

    @property
    def usable(self) -> bool:
        return not self.disabled and self.deleted_at is None
