"""Legacy keys imported from an older key store (see `keyservice keys import-legacy`)."""

from __future__ import annotations

from sqlalchemy import select, update

from keyservice.api_keys.models import ApiKey
from keyservice.auth.service import load_key
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from keyservice.security.hashing import LEGACY_KEYS, run_slow_hash

# Old key strings arrive in the `api_key` form field; bound their size before hashing.
MAX_LEGACY_KEY_LENGTH = 512


async def authenticate(ctx: AppContext, key_string: str) -> tuple[ApiKey, Principal] | None:
    """Find the legacy key for a whole old key string, or None.

    A key imported with its plaintext has an HMAC lookup and is found in one query. One
    imported only as a bcrypt/argon2 hash is found by verifying the candidates that have
    no lookup yet; the first success records the lookup so later exchanges are O(1).
    """
    if not key_string or len(key_string) > MAX_LEGACY_KEY_LENGTH:
        return None
    lookups = ctx.hasher.lookups("legacy:" + key_string)
    client_id = await _find(ctx, key_string, lookups)
    # Outside the session above: on SQLite it holds the write lock the read would wait for.
    return await load_key(ctx, client_id=client_id) if client_id is not None else None


async def _find(ctx: AppContext, key_string: str, lookups: list[str]) -> str | None:
    lookup = lookups[0]  # under the current secret; a later one is the fallback's
    async with ctx.database.sessionmaker() as session:
        found = (
            await session.execute(
                select(ApiKey.id, ApiKey.client_id, ApiKey.legacy_lookup).where(
                    ApiKey.legacy_lookup.in_(lookups), ApiKey.is_legacy
                )
            )
        ).first()
        if found is not None:
            if found.legacy_lookup != lookup:
                # Made under the secret being rotated away from: moved to the current one.
                await session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == found.id, ApiKey.legacy_lookup == found.legacy_lookup)
                    .values(legacy_lookup=lookup, hashed_under=ctx.hasher.label)
                )
                await session.commit()
            return str(found.client_id)
        now = utcnow()
        legacy_until = ctx.settings.legacy_keys_until
        if legacy_until is not None and now >= legacy_until:
            # No legacy key is accepted any more: verifying the unused ones, a slow hash
            # each, for every string anyone sends would be work for nothing, and the
            # cheapest way to load the hashing pool that sign-ins need.
            return None
        candidates = (
            await session.execute(
                select(ApiKey.id, ApiKey.client_id, ApiKey.legacy_hash).where(
                    ApiKey.is_legacy,
                    ApiKey.legacy_lookup.is_(None),
                    ApiKey.revoked_at.is_(None),
                    ApiKey.expires_at > now,  # an expired key is refused anyway
                )
            )
        ).all()
    # The slow hashes run with no transaction open: one kept a pooled connection for their
    # whole length and, on SQLite, the write lock every other request waits for (an
    # unauthenticated junk `api_key` stalled all exchanges for as long as they took).
    for candidate in candidates:
        if candidate.legacy_hash and await run_slow_hash(
            LEGACY_KEYS.verify, key_string, candidate.legacy_hash
        ):
            async with ctx.database.sessionmaker() as session:
                await session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == candidate.id, ApiKey.legacy_lookup.is_(None))
                    .values(legacy_lookup=lookup, hashed_under=ctx.hasher.label)
                )
                await session.commit()
            return str(candidate.client_id)
    return None
