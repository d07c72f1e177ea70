"""Writing audit events. Reasons are fixed phrases: never a secret, token or password."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit.models import AuditEvent


def record(
    session: AsyncSession,
    *,
    type: str,
    outcome: str = "success",
    actor: str | None = None,
    principal_id: str | None = None,
    key_id: str | None = None,
    ip: str | None = None,
    reason: str | None = None,
) -> AuditEvent:
    """Add an event to the session; it is written with the caller's transaction."""
    event = AuditEvent(
        type=type,
        outcome=outcome,
        actor=actor,
        principal_id=principal_id,
        key_id=key_id,
        ip=ip,
        reason=reason,
    )
    session.add(event)
    return event
