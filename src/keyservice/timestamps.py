"""Timestamps as the contract takes them (RFC 3339 date-times with an offset), and as
messages and audit reasons write them (`format_utc`).

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
_DATE_TIME = r"\d{4}-\d{2}-\d{2}[Tt ](?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.\d+)?"
_WITH_OFFSET = re.compile(
    _DATE_TIME + r"(?:[Zz]|[+-](?P<offset_hour>\d{2}):(?P<offset_minute>\d{2}))", re.ASCII
)
_WITHOUT_OFFSET = re.compile(_DATE_TIME, re.ASCII)
# What "+01:00" becomes in a query string when the + was not written as %2B.
_PLUS_AS_SPACE = re.compile(_DATE_TIME + r" \d{2}:\d{2}", re.ASCII)
EXAMPLE = "2027-01-01T00:00:00Z"


def _rfc3339(value: object) -> object:
    """Let through an RFC 3339 string with an offset (or an aware datetime from Python)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value  # built by our own code (the console's date fields), not parsed
    if isinstance(value, str) and (match := _WITH_OFFSET.fullmatch(value)):
        _check_time_ranges(match)
        return value  # pydantic then checks the date's ranges (month 13, February 30)
    if isinstance(value, datetime) or (isinstance(value, str) and _WITHOUT_OFFSET.fullmatch(value)):
        raise PydanticCustomError("timestamp_offset", f"needs a time-zone offset, e.g. {EXAMPLE}")
    if isinstance(value, str) and _PLUS_AS_SPACE.fullmatch(value):
        raise PydanticCustomError(
            "timestamp_format", "has a space where the offset's + belongs: write + as %2B in a URL"
        )
    raise PydanticCustomError(
        "timestamp_format", f"must be an RFC 3339 date-time with an offset, e.g. {EXAMPLE}"
    )


def _check_time_ranges(match: re.Match[str]) -> None:
    """Refuse an hour, minute, second or offset out of range, in words.

    pydantic says only "unexpected extra characters at the end of the input" for each of
    them. RFC 3339 allows second 60 for a leap second (§5.7), which a datetime cannot hold.
    """
    for field, highest in (("hour", 23), ("minute", 59), ("second", 59)):
        if int(match[field]) > highest:
            leap = (
                " (a leap second, not accepted)"
                if (field, match[field]) == ("second", "60")
                else ""
            )
            raise PydanticCustomError(
                "timestamp_range",
                f"has {field} {match[field]}{leap}: {field}s must be 00-{highest}",
            )
    if match["offset_hour"] is not None and (
        int(match["offset_hour"]) > 23 or int(match["offset_minute"]) > 59
    ):
        raise PydanticCustomError(
            "timestamp_range", "has an offset out of range: it must be within ±23:59 (±HH:MM)"
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


def format_utc(moment: datetime) -> str:
    """An aware moment as messages and audit reasons write it: RFC 3339 in UTC, to the
    whole second (2027-01-01T00:00:00Z), as a person reads an expiry or a deadline."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
