"""The scope catalog: the permission names keys and principals may hold."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, String, Text, func
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


# `Admin` beside `admin` reads alike in lists, tokens and audit trails: names differing only
# in letter case are one entry of the catalog (service.create says so first; this index
# settles two creates at once). Names are ASCII (schemas.py SCOPE_NAME), where every
# database's lower() agrees. The name stays case-sensitive at /token (RFC 6749 §3.3).
Index("uq_scope_lower_name", func.lower(Scope.name), unique=True)


def effective_permissions(permissions: list[str] | set[str] | frozenset[str]) -> frozenset[str]:
    """Return the permissions as held: `admin` implies the other built-ins."""
    held = frozenset(permissions)
    if ADMIN in held:
        held |= BUILTIN_SCOPES.keys()
    return held
