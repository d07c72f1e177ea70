"""Console ids used up for good, shared by every worker and replica (see session.py).

A row per console session that signed out (its cookie, or any copy of it, is refused from
then on) and per key form that created or rotated a key (sent again, it creates nothing).
Only an HMAC of the id is stored (SessionCodec.spent_digest), never a cookie, with the end
of the session it belongs to: past that the cookie and the form's CSRF token are refused
anyway, and `keyservice prune` deletes the row an hour later (replicas' clocks differ).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from keyservice.database import Base, UTCDateTime

SESSION = "session"
FORM = "form"


class ConsoleSpent(Base):
    __tablename__ = "console_spent"

    # Hex HMAC-SHA256 of "<kind>:<id>" under a key derived from the server secret.
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # SESSION or FORM
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_console_spent_expires_at", "expires_at"),)
