"""Creating and rotating a key reads the owner's keys, not every key there is (PostgreSQL).

The limit of live keys per owner (count_live) and the rotation holds (rotation_holds)
look for a key's replacement by `rotated_from_id`, which has no index: matched against
the whole table, every key created or rotated for one device read every key of the
fleet, a cost that grew with each key ever made. A replacement always has its key's
owner, so the owner's index finds it. Seeded and ANALYZEd as the revocation plans are
(tests/auth/test_revocation_plans.py), so that the planner can tell an index from a
sequential read; the statements are the ones the code sends, captured as it runs.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from keyservice.api_keys import service as keys_service
from keyservice.context import AppContext
from keyservice.principals.models import Principal
from tests.auth.test_revocation_plans import Captured, _plans, _seed
from tests.factories import service_key


async def _seeded_device(context: AppContext) -> Principal:
    """A device of the seed's, enabled and not deleted, holding no key yet."""
    await _seed(context)
    async with context.database.sessionmaker() as session:
        device = await session.scalar(
            select(Principal).where(
                Principal.kind == "device",
                Principal.disabled.is_(False),
                Principal.deleted_at.is_(None),
            )
        )
    assert device is not None
    return device


# The indexes that find one owner's keys, or one key; the others (by expiry, by creation
# time) range over the keys of every owner.
_ONE_OWNERS = {"pk_api_key", "ix_api_key_principal_id", "uq_api_key_client_id"}


def _no_full_key_reads(plans: list[tuple[str, list]]) -> None:
    assert plans
    for statement, scans in plans:
        assert ("Seq Scan", "api_key", None) not in scans, (statement, scans)
        key_indexes = {index for _node, _table, index in scans if index and "api_key" in index}
        assert key_indexes <= _ONE_OWNERS, (statement, scans)


@pytest.mark.postgresql_only
async def test_creating_a_key_does_not_read_every_key(context):
    device = await _seeded_device(context)
    with Captured(context) as captured:
        created = await service_key(context, device, "fleet key")
    assert created.owner_id == device.id

    _no_full_key_reads(await _plans(context, captured))


@pytest.mark.postgresql_only
async def test_rotating_a_key_does_not_read_every_key(context):
    device = await _seeded_device(context)
    created = await service_key(context, device, "fleet key")
    with Captured(context) as captured:
        async with context.database.sessionmaker() as session:
            key = await keys_service.get_owned(session, key_id=created.id, owner_id=device.id)
            rotated = await keys_service.rotate(
                context,
                session,
                key=key,
                owner=device,
                grace_seconds=60,
                actor="test",
                ip=None,
            )
    assert rotated.name == "fleet key"

    plans = await _plans(context, captured)
    _no_full_key_reads(plans)
    # The holds of the rotated key were read (the replaced-by query among them).
    assert any("rotated_from_id" in statement for statement, _ in plans)
