"""Writing audit events. Reasons are fixed phrases: never a secret, token or password."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit.models import AuditEvent
from keyservice.paging import MAX_LIMIT, bad_cursor, page

DEFAULT_LIMIT = 100
_CURSOR_PREFIX = "seq:"
_MAX_SEQ = 2**63 - 1  # a BIGINT


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


def encode_cursor(seq: int) -> str:
    """Return the opaque cursor that continues a listing after the event `seq`."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Return the seq a cursor continues after; 422 for anything not made by encode_cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError(raw)
        digits = raw.removeprefix(_CURSOR_PREFIX)
        if not (digits.isascii() and digits.isdigit()) or int(digits) > _MAX_SEQ:
            raise ValueError(raw)  # past the column's range, the database itself would fail
        return int(digits)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_cursor() from None


async def list_events(
    session: AsyncSession,
    *,
    type: str | None = None,
    principal_id: str | None = None,
    key_id: str | None = None,
    since: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[AuditEvent], str | None]:
    """Return one page of events, newest first, and the cursor of the next page (or None).

    Keyset paging on `seq` (insertion order): events written while a client pages have
    higher seqs and never shift, duplicate or hide the older events of later pages.
    """
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(AuditEvent)
    if cursor is not None:
        query = query.where(AuditEvent.seq < decode_cursor(cursor))
    if type is not None:
        query = query.where(AuditEvent.type == type)
    if principal_id is not None:
        query = query.where(AuditEvent.principal_id == principal_id)
    if key_id is not None:
        query = query.where(AuditEvent.key_id == key_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    # One row more than asked tells whether a next page exists without an empty last page.
    rows = await session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit + 1))
    items, more = page(rows.all(), limit)
    return items, encode_cursor(items[-1].seq) if more else None


async def prune(session: AsyncSession, *, before: datetime) -> int:
    """Delete the events recorded before `before`; return how many, and commit."""
    result = await session.execute(delete(AuditEvent).where(AuditEvent.at < before))
    await session.commit()
    return int(getattr(result, "rowcount", 0) or 0)
