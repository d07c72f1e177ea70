"""Writing audit events. Reasons are fixed phrases: never a secret, token or password."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from keyservice.audit.models import AuditEvent
from keyservice.database import LOG_AUDIT_EVENTS
from keyservice.paging import MAX_LIMIT, bad_cursor, page
from keyservice.security.tokens import SECRET_LIKE, is_secret_like, may_hold_secret

DEFAULT_LIMIT = 100
REDACTED = "(secret not recorded)"
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
        actor=without_secrets(actor),
        principal_id=principal_id,
        key_id=key_id,
        ip=ip,
        reason=without_secrets(reason),
    )
    session.add(event)
    if session.info.get(LOG_AUDIT_EVENTS):
        session.info.setdefault(_TO_LOG, []).append(event)
    return event


# KEYSERVICE_AUDIT_LOG: each audit event, once its transaction has committed (never one
# rolled back), is also a line on this logger, for a log shipper to copy the log to a store
# the service's admins do not control (SECURITY.md). The database stays the record: a
# line waits up to half a second in the log handler, and a kill -9 loses those.
audit_log = logging.getLogger("keyservice.audit")
_TO_LOG = "keyservice.audit.to_log"


def log_event(
    *,
    id: str,
    at: datetime,
    type: str,
    outcome: str,
    actor: str | None,
    principal_id: str | None,
    key_id: str | None,
    ip: str | None,
    reason: str | None,
) -> None:
    """One committed event as a log line: its fields as JSON (one line, whatever `reason`
    holds), and as the record's `audit` attribute for the JSON log format."""
    fields: dict[str, Any] = {
        "id": id,
        "at": at.isoformat().replace("+00:00", "Z"),
        "type": type,
        "outcome": outcome,
        "actor": actor,
        "principal_id": principal_id,
        "key_id": key_id,
        "ip": ip,
        "reason": reason,
    }
    audit_log.info(
        "audit event %s", json.dumps(fields, ensure_ascii=False), extra={"audit": fields}
    )


@event.listens_for(Session, "after_commit")
def _log_committed(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the outer one may roll back
        return
    for committed in session.info.pop(_TO_LOG, ()):
        try:
            log_event(
                id=committed.id,
                at=committed.at,
                type=committed.type,
                outcome=committed.outcome,
                actor=committed.actor,
                principal_id=committed.principal_id,
                key_id=committed.key_id,
                ip=committed.ip,
                reason=committed.reason,
            )
        except Exception:  # the commit is done: a log failure must not fail the request
            audit_log.exception("an audit event could not be logged")


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # after `after_commit`; a rollback logs nothing
        session.info.pop(_TO_LOG, None)


def without_secrets(text: str | None) -> str | None:
    """`text` with anything shaped like a credential replaced (security/tokens.py
    SECRET_LIKE); every event's `actor` and `reason` go through it."""
    if text is None or not may_hold_secret(text):
        return text  # the token path's `key:kc_...` and fixed reasons: no regex
    return SECRET_LIKE.sub(lambda found: REDACTED if is_secret_like(found) else found.group(), text)


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


async def prune(
    session: AsyncSession, *, before: datetime, actor: str = "server", retention_days: int = 0
) -> int:
    """Delete the events recorded before `before`; return how many, and commit.

    Deleting any is itself an event (`audit.pruned`, in the same transaction), so that a
    reader of the log can tell events that aged out from events that were never written.
    """
    result = await session.execute(delete(AuditEvent).where(AuditEvent.at < before))
    deleted = int(getattr(result, "rowcount", 0) or 0)
    if deleted:
        record(
            session,
            type="audit.pruned",
            actor=actor,
            reason=f"{deleted} event(s) recorded before {before.isoformat()} deleted "
            f"({retention_days}-day retention)",
        )
    await session.commit()
    return deleted
