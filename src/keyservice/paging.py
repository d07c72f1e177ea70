"""Keyset paging for the admin lists (users, devices, all keys), as the audit log pages.

Optional: with no `limit` a list answers every item, as API.md v1 has it, and
`next_cursor` is null. With `limit` (1 or more, clamped to 500 like the audit log's) a
page holds at most that many items and `next_cursor` continues after its last one: the
cursor carries that item's sort key and id, and the next page reads
`WHERE (sort key, id) > cursor` in the list's order, never an OFFSET, so rows created or
changed between pages do not shift, duplicate or hide the others. The cursor is opaque
(base64url of `<list>:<JSON array>`); anything this service did not hand out for this
list is refused with 422 in the audit log's words.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import Query

from keyservice.exceptions import ValidationFailed

__all__ = [
    "MAX_LIMIT",
    "Cursor",
    "Limit",
    "bad_cursor",
    "clamp",
    "decode",
    "decode_time",
    "encode",
    "page",
]

MAX_LIMIT = 500  # the audit log's too

T = TypeVar("T")

_MAX_ID = 36
_MAX_TEXT = 100  # the longest name a principal can have

Limit = Annotated[
    int | None,
    Query(
        ge=1,
        description=(
            "Page size (at most 500 are returned); with none, every item is listed and "
            "`next_cursor` is null."
        ),
    ),
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=1000,
        description="The `next_cursor` of the previous page, to read the next one.",
    ),
]


def clamp(limit: int | None) -> int | None:
    """Return the page size to use: None (everything) or 1..MAX_LIMIT."""
    return None if limit is None else max(1, min(limit, MAX_LIMIT))


def encode(kind: str, *parts: str) -> str:
    """Return the opaque cursor that continues the `kind` list after the item `parts`."""
    raw = f"{kind}:" + json.dumps(list(parts), separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def bad_cursor() -> ValidationFailed:
    """The 422 for a cursor this service did not hand out (every paged list, the audit log)."""
    return ValidationFailed(
        "The cursor is not one this service returned; start over.",
        field="cursor",
        location="query",
    )


def decode(cursor: str, kind: str, count: int) -> list[str]:
    """Return the `count` parts of a `kind` cursor; 422 for anything encode did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(f"{kind}:"):
            raise ValueError("another list's cursor")
        parts = json.loads(raw.removeprefix(f"{kind}:"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_cursor() from None
    if (
        not isinstance(parts, list)
        or len(parts) != count
        or not all(isinstance(part, str) and 0 < len(part) <= _MAX_TEXT for part in parts)
        or len(parts[-1]) > _MAX_ID
        or "\x00" in "".join(parts)  # PostgreSQL text cannot hold one
    ):
        raise bad_cursor()
    return parts


def decode_time(value: str) -> datetime:
    """Return the timestamp part of a cursor (an isoformat with an offset); else 422."""
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("no offset")
        moment.astimezone(UTC)  # stored in UTC: 0001-01-01T00:00:00+14:00 has no place there
    except (ValueError, OverflowError):
        raise bad_cursor() from None
    return moment


def page(rows: Sequence[T], limit: int | None) -> tuple[list[T], bool]:
    """Split the `limit + 1` rows read into the page and whether a next page exists."""
    if limit is None:
        return list(rows), False
    return list(rows[:limit]), len(rows) > limit
