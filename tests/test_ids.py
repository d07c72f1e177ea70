"""Ids: random UUIDv4 for things people name, UUIDv7 for rows inserted all day."""

from __future__ import annotations

import os
import time
import uuid

from sqlalchemy import select

from keyservice.auth.models import RefreshToken
from keyservice.database import _uuid_text, new_id, new_ordered_id
from tests.factories import audit_events, create_key, exchange, user_token


def test_ordered_ids_are_uuidv7_in_time_order():
    first = new_ordered_id()
    time.sleep(0.002)
    second = new_ordered_id()
    for value in (first, second):
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # canonical, lowercase, 36 characters
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        # The leading 48 bits are the creation time in milliseconds.
        assert abs((parsed.int >> 80) - time.time() * 1000) < 5_000
    assert first < second  # strings sort as the ids were made, ms apart
    assert len({new_ordered_id() for _ in range(10_000)}) == 10_000
    assert uuid.UUID(new_id()).version == 4


def test_uuid_text_is_what_uuid_prints():
    values = [0, 1, 2**128 - 1, 0x0193A1B2C3D47E5F8A9B0C1D2E3F4A5B]
    values += [int.from_bytes(os.urandom(16), "big") for _ in range(5_000)]
    for value in values:
        assert _uuid_text(value) == str(uuid.UUID(int=value))


async def test_an_exchange_inserts_its_rows_with_ordered_ids(client, context):
    token = await user_token(context, client, "ida", ["api_keys:manage"])
    created = await create_key(client, token, name="ids")
    response = await exchange(client, created["api_key"])
    assert response.status_code == 200, response.text
    async with context.database.sessionmaker() as session:
        rows = (await session.scalars(select(RefreshToken))).all()
    assert rows and all(uuid.UUID(row.id).version == 7 for row in rows)
    assert all(uuid.UUID(row.family_id).version == 7 for row in rows)
    events = await audit_events(context, "token.exchange")
    assert events and all(uuid.UUID(event.id).version == 7 for event in events)
