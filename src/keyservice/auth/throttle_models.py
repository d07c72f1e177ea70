"""Failed attempts at /token, shared by every worker and replica (see auth/throttle.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from keyservice.database import Base, UTCDateTime


class ThrottleFailure(Base):
    __tablename__ = "throttle_failure"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    # "c:" or "i:" + an HMAC of the client id, username or IP: never the value typed.
    subject: Mapped[str] = mapped_column(String(48))
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_throttle_failure_subject_at", "subject", "at"),
        Index("ix_throttle_failure_at", "at"),
    )
