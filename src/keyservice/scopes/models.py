"""The scope catalog: the permission names keys and principals may hold."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keyservice.database import Base, UTCDateTime, utcnow

ADMIN = "admin"
API_KEYS_MANAGE = "api_keys:manage"
INTROSPECT = "introspect"
BUILTIN_SCOPES: dict[str, str] = {
    ADMIN: "Everything under /admin; implies the other built-in scopes.",
    API_KEYS_MANAGE: "Create, list, rotate and delete one's own API keys.",
    INTROSPECT: "Call /introspect (RFC 7662).",
}


class Scope(Base):
    __tablename__ = "scope"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def effective_permissions(permissions: list[str] | set[str] | frozenset[str]) -> frozenset[str]:
    """Return the permissions as held: `admin` implies the other built-ins."""
    held = frozenset(permissions)
    if ADMIN in held:
        held |= BUILTIN_SCOPES.keys()
    return held
