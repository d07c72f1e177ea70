"""Ids as requests give them: a UUID in any letter case is the id in its stored form.

Ids of users, devices and keys are UUIDs stored as lowercase text (`database.new_id()`);
RFC 9562 §4 has UUIDs read case-insensitively on input, so an id pasted in uppercase names
the same row. Anything that is not a UUID is left as it came, to be refused as before
(not found, or too long for a filter).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Query
from pydantic import AfterValidator, StringConstraints

_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def canonical_id(value: str) -> str:
    """Return `value` in lowercase if it is a UUID in its 8-4-4-4-12 form, else unchanged."""
    return value.lower() if _UUID.fullmatch(value) else value


# An id in a route's path: `/admin/users/{user_id}` and the like.
PathId = Annotated[str, AfterValidator(canonical_id)]
# An optional id filter in a query string (`owner_id`, `principal_id`, `key_id`): at most
# 36 characters, as an id has.
IdFilter = Annotated[
    Annotated[str, StringConstraints(max_length=36), AfterValidator(canonical_id)] | None,
    Query(description="Only what concerns the principal or key with this id (a UUID)."),
]
