"""Audit events: who did what to which key, from where, and with what outcome."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keyservice.database import Base, UTCDateTime, new_ordered_id, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_event"

    # Insertion order, for cursor paging that stays correct while events are written.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_ordered_id)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    type: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(200), default=None)
    # No foreign keys: events outlive what they describe.
    principal_id: Mapped[str | None] = mapped_column(String(36), default=None)
    key_id: Mapped[str | None] = mapped_column(String(36), default=None)
    ip: Mapped[str | None] = mapped_column(String(45), default=None)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    reason: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        Index("ix_audit_event_type_seq", "type", "seq"),
        Index("ix_audit_event_principal_id_seq", "principal_id", "seq"),
        Index("ix_audit_event_key_id_seq", "key_id", "seq"),
        # Append-ordered, read in ranges (prune, `since`): BRIN (B-tree on SQLite).
        Index("ix_audit_event_at", "at", postgresql_using="brin"),
    )
