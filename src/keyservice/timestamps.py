"""Timestamps as the contract takes them: RFC 3339 date-times with an offset.

pydantic's lax datetime parsing also reads Unix numbers (1800000000, "1800000000"), bare
dates and times without an offset; each of those guesses a moment the caller may not have
meant, so bodies, query parameters and import files use `Timestamp` instead.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

# RFC 3339 §5.6 date-time; the space instead of "T" is the readability variant its note allows.
_DATE_TIME = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?"
_WITH_OFFSET = re.compile(_DATE_TIME + r"(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_WITHOUT_OFFSET = re.compile(_DATE_TIME, re.ASCII)
# What "+01:00" becomes in a query string when the + was not written as %2B.
_PLUS_AS_SPACE = re.compile(_DATE_TIME + r" \d{2}:\d{2}", re.ASCII)
EXAMPLE = "2027-01-01T00:00:00Z"


def _rfc3339(value: object) -> object:
    """Let through an RFC 3339 string with an offset (or an aware datetime from Python)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value  # built by our own code (the console's date fields), not parsed
    if isinstance(value, str) and _WITH_OFFSET.fullmatch(value):
        return value  # pydantic then checks the ranges (month 13, hour 25)
    if isinstance(value, datetime) or (isinstance(value, str) and _WITHOUT_OFFSET.fullmatch(value)):
        raise PydanticCustomError("timestamp_offset", f"needs a time-zone offset, e.g. {EXAMPLE}")
    if isinstance(value, str) and _PLUS_AS_SPACE.fullmatch(value):
        raise PydanticCustomError(
            "timestamp_format", "has a space where the offset's + belongs: write + as %2B in a URL"
        )
    raise PydanticCustomError(
        "timestamp_format", f"must be an RFC 3339 date-time with an offset, e.g. {EXAMPLE}"
    )


def _in_utc_range(value: datetime) -> datetime:
    """Refuse a moment that exists only in its own offset: stored and compared in UTC, it
    would overflow (0001-01-01T00:00:00+14:00 is before year 1), a 500 where it was used."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "timestamp_range", "is out of range: in UTC it falls before year 1 or after 9999"
        ) from None
    return value


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_in_utc_range)]
