"""Brute-force protection at /token on every store: in-process, database, Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from keyservice.audit.models import AuditEvent
from keyservice.auth.throttle import (
    DatabaseThrottle,
    MemoryThrottle,
    RedisThrottle,
    Throttle,
)
from keyservice.auth.throttle_models import ThrottleFailure
from keyservice.context import AppContext
from keyservice.exceptions import SlowDown
from tests.conftest import client_for
from tests.factories import (
    PASSWORD,
    audit_events,
    create_key,
    create_principal,
    login,
    user_token,
)

REDIS_URL = os.environ.get("KEYSERVICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LIMITS: dict[str, Any] = {"client_limit": 3, "ip_limit": 5, "window_seconds": 60, "key": b"k" * 32}


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A unique key prefix per test, deleted afterwards."""
    import redis.asyncio as redis

    prefix = f"keyservice-test:{secrets.token_hex(6)}:"
    yield prefix
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in connection.scan_iter(match=prefix + "*")]
        if keys:
            await connection.delete(*keys)
    finally:
        await connection.aclose()


def make_store(kind: str, context: AppContext, prefix: str, **overrides: Any) -> Throttle:
    limits = {**LIMITS, **overrides}
    if kind == "memory":
        return MemoryThrottle(**limits)
    if kind == "database":
        return DatabaseThrottle(context.database, **limits)
    return RedisThrottle(REDIS_URL, prefix=prefix, **limits)


STORES = ["memory", "database", "redis"]


@pytest.mark.parametrize("kind", STORES)
async def test_client_locks_after_limit_and_others_are_unaffected(kind, context, redis_prefix):
    throttle = make_store(kind, context, redis_prefix)
    try:
        for _ in range(LIMITS["client_limit"]):
            await throttle.check(client="victim", ip="10.0.0.1")
            await throttle.failure(client="victim", ip="10.0.0.1")
        with pytest.raises(SlowDown) as raised:
            await throttle.check(client="victim", ip="10.0.0.9")
        retry_after = int(raised.value.headers["Retry-After"])
        assert 1 <= retry_after <= LIMITS["window_seconds"]
        await throttle.check(client="bystander", ip="10.0.0.2")  # another client: fine
    finally:
        await throttle.close()


@pytest.mark.parametrize("kind", STORES)
async def test_ip_locks_after_its_own_higher_limit(kind, context, redis_prefix):
    throttle = make_store(kind, context, redis_prefix)
    try:
        for n in range(LIMITS["ip_limit"]):
            await throttle.check(client=f"client-{n}", ip="2001:db8::1")
            await throttle.failure(client=f"client-{n}", ip="2001:db8::1")
        with pytest.raises(SlowDown):
            await throttle.check(client="fresh", ip="2001:db8::1")
        await throttle.check(client="fresh", ip="2001:db8::2")
    finally:
        await throttle.close()


@pytest.mark.parametrize("kind", STORES)
async def test_window_slides(kind, context, redis_prefix):
    throttle = make_store(kind, context, redis_prefix, window_seconds=1)
    try:
        for _ in range(LIMITS["client_limit"]):
            await throttle.failure(client="c", ip=None)
        with pytest.raises(SlowDown):
            await throttle.check(client="c", ip=None)
        await asyncio.sleep(1.2)
        await throttle.check(client="c", ip=None)
    finally:
        await throttle.close()


@pytest.mark.parametrize("kind", ["database", "redis"])
async def test_counts_are_shared_between_processes(kind, context, redis_prefix):
    """Two stores on one database (or one Redis) stand for two workers or replicas."""
    first = make_store(kind, context, redis_prefix)
    second = make_store(kind, context, redis_prefix)
    try:
        for n in range(LIMITS["client_limit"]):
            await (first if n % 2 else second).failure(client="shared", ip=None)
        for store in (first, second):
            with pytest.raises(SlowDown):
                await store.check(client="shared", ip=None)
    finally:
        await first.close()
        await second.close()


async def test_database_store_keeps_no_raw_subject_and_prunes(context):
    throttle = DatabaseThrottle(context.database, **{**LIMITS, "window_seconds": 1})
    await throttle.failure(client="user:hunter2-typed-as-a-username", ip="192.0.2.7")
    async with context.database.sessionmaker() as session:
        subjects = (await session.scalars(select(ThrottleFailure.subject))).all()
    assert len(subjects) == 2
    assert not any("hunter2" in s or "192.0.2.7" in s for s in subjects)
    await asyncio.sleep(1.1)
    throttle._pruned_at = 0.0  # prune on the next failure, not in 30 s
    await throttle.failure(client="other", ip=None)
    async with context.database.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ThrottleFailure)) == 1


async def test_redis_store_keeps_at_most_limit_entries(context, redis_prefix):
    throttle = make_store("redis", context, redis_prefix)
    assert isinstance(throttle, RedisThrottle)
    try:
        for _ in range(50):
            await throttle.failure(client="flood", ip=None)
        keys = [key async for key in throttle.redis.scan_iter(match=redis_prefix + "*")]
        assert len(keys) == 1
        assert await throttle.redis.zcard(keys[0]) == LIMITS["client_limit"]
        assert 0 < await throttle.redis.ttl(keys[0]) <= LIMITS["window_seconds"] + 1
    finally:
        await throttle.close()


async def test_app_picks_the_shared_store(context, backend):
    expected = MemoryThrottle if backend == "sqlite" else DatabaseThrottle
    assert type(context.throttle) is expected


async def _lock_out_over_http(context: AppContext, client) -> None:
    token = await user_token(context, client, "owner", ["api_keys:manage", "projects:read"])
    victim = await create_key(client, token, name="victim")
    bystander = await create_key(client, token, name="bystander")
    bad = {
        "grant_type": "client_credentials",
        "client_id": victim["client_id"],
        "client_secret": "C" * 43,
    }
    for _ in range(context.settings.throttle_client_failures):
        refused = await client.post("/token", data=bad)
        assert refused.status_code == 401
    # Even the right secret is refused now, from another address too.
    async with client_for(client._transport.app, ip="198.51.100.4") as elsewhere:
        locked = await elsewhere.post(
            "/token", data={"grant_type": "client_credentials", "api_key": victim["api_key"]}
        )
    assert locked.status_code == 429
    assert locked.json()["error"] == "slow_down"
    assert int(locked.headers["retry-after"]) >= 1
    assert locked.headers["cache-control"] == "no-store"
    ok = await client.post(
        "/token", data={"grant_type": "client_credentials", "api_key": bystander["api_key"]}
    )
    assert ok.status_code == 200
    async with context.database.sessionmaker() as session:
        throttled = (
            await session.scalars(select(AuditEvent).where(AuditEvent.reason == "throttled"))
        ).all()
    assert len(throttled) == 1
    assert throttled[0].type == "token.exchange"
    assert throttled[0].outcome == "failure"
    assert throttled[0].ip == "198.51.100.4"
    # A refusal for a known client id names its key and owner, even when throttled.
    assert throttled[0].key_id == victim["id"]
    assert throttled[0].principal_id == victim["owner_id"]
    assert throttled[0].actor == f"key:{victim['client_id']}"


async def test_http_lockout_on_the_default_store(client, context):
    await _lock_out_over_http(context, client)


@pytest.fixture
async def redis_app(
    client, database_url, tmp_path, redis_prefix
) -> AsyncIterator[tuple[AppContext, Any]]:
    """An app whose throttle is Redis, and its client (`client` empties the tables first)."""
    from keyservice.main import create_app
    from tests.conftest import make_settings

    settings = make_settings(database_url, tmp_path, redis_url=REDIS_URL)
    ctx = AppContext(settings)
    assert isinstance(ctx.throttle, RedisThrottle)
    ctx.throttle.prefix = redis_prefix
    app = create_app(context=ctx)
    async with app.router.lifespan_context(app), client_for(app) as http:
        yield ctx, http
    await ctx.database.dispose()


async def test_http_lockout_with_redis(redis_app):
    await _lock_out_over_http(*redis_app)


async def test_a_lockout_counted_by_another_replica_refuses_the_right_secret(
    redis_app, database_url, tmp_path, redis_prefix
):
    # The failures were answered by another replica sharing Redis: this process saw none of
    # them, and still refuses the client, the right secret included, until the window ends.
    from tests.conftest import make_settings

    context, client = redis_app
    token = await user_token(context, client, "owner", ["api_keys:manage"])
    victim = await create_key(client, token, name="victim")
    bystander = await create_key(client, token, name="bystander")
    replica = AppContext(make_settings(database_url, tmp_path, redis_url=REDIS_URL))
    assert isinstance(replica.throttle, RedisThrottle)
    replica.throttle.prefix = redis_prefix
    try:
        for _ in range(context.settings.throttle_client_failures):
            await replica.throttle.failure(client=victim["client_id"], ip="198.51.100.9")
        for _ in range(context.settings.throttle_ip_failures):
            await replica.throttle.failure(client=None, ip="203.0.113.7")
    finally:
        await replica.throttle.close()
        await replica.database.dispose()
    right = {"grant_type": "client_credentials", "api_key": victim["api_key"]}
    locked = await client.post("/token", data=right)
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"] == "slow_down"
    throttled = [
        e for e in await audit_events(context, "token.exchange") if e.reason == "throttled"
    ]
    assert [(e.key_id, e.actor) for e in throttled] == [
        (victim["id"], f"key:{victim['client_id']}")
    ]
    # So is any client calling from an address another replica locked out.
    async with client_for(client._transport.app, ip="203.0.113.7") as locked_address:
        refused = await locked_address.post(
            "/token", data={"grant_type": "client_credentials", "api_key": bystander["api_key"]}
        )
    assert refused.status_code == 429, refused.text
    ok = await client.post(
        "/token", data={"grant_type": "client_credentials", "api_key": bystander["api_key"]}
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("settings_overrides", [{"throttle_client_failures": 3}])
async def test_password_logins_lock_per_username(client, context):
    await user_token(context, client, "dora", ["api_keys:manage"])
    wrong = {"grant_type": "password", "username": "dora", "password": "nope"}
    for _ in range(context.settings.throttle_client_failures):
        assert (await client.post("/token", data=wrong)).status_code == 400
    locked = await client.post("/token", data=wrong)
    assert locked.status_code == 429
    assert locked.json()["error"] == "slow_down"
    throttled = [e for e in await audit_events(context, "login") if e.reason == "throttled"]
    assert len(throttled) == 1
    assert throttled[0].principal_id is not None
    assert throttled[0].actor == "user:dora"


def _statuses(responses: list[Any]) -> list[int]:
    return sorted(response.status_code for response in responses)


async def _burst_of_wrong_secrets(context: AppContext, client) -> None:
    """Every attempt of a burst passes the check before any has failed; the count holds."""
    limit = context.settings.throttle_client_failures
    token = await user_token(context, client, "owner", ["api_keys:manage"])
    victim = await create_key(client, token, name="victim")
    bad = {
        "grant_type": "client_credentials",
        "client_id": victim["client_id"],
        "client_secret": "C" * 43,
    }
    right = {"grant_type": "client_credentials", "api_key": victim["api_key"]}
    responses = await asyncio.gather(
        *[client.post("/token", data=form) for _ in range(4 * limit) for form in (bad, right)]
    )
    guesses, rights = responses[0::2], responses[1::2]
    assert _statuses(guesses) == [401] * limit + [429] * 3 * limit
    # The right secret too is answered only until the limit is reached (about `limit` of
    # those sent with the guesses come first), then refused like the guesses.
    served = _statuses(rights).count(200)
    assert _statuses(rights) == [200] * served + [429] * (4 * limit - served)
    assert served < 3 * limit
    assert (await client.post("/token", data=right)).status_code == 429
    throttled = [
        e for e in await audit_events(context, "token.exchange") if e.reason == "throttled"
    ]
    assert len(throttled) == 3 * limit + (4 * limit - served) + 1
    assert {e.key_id for e in throttled} == {victim["id"]}


async def test_concurrent_wrong_secrets_are_answered_only_up_to_the_limit(client, context):
    await _burst_of_wrong_secrets(context, client)


async def test_concurrent_wrong_secrets_with_redis(redis_app):
    # Each Redis check awaits a round trip, so many attempts are verified after others failed.
    await _burst_of_wrong_secrets(*redis_app)


async def test_the_right_secret_verified_after_the_limit_was_reached_is_throttled(
    client, context, monkeypatch
):
    # A shared store's check is a round trip: guesses may fail, and reach the limit, while a
    # request with the right secret waits for its answer. Its outcome is withheld (429), as
    # it would be had it arrived after them.
    token = await user_token(context, client, "owner", ["api_keys:manage"])
    victim = await create_key(client, token, name="victim")
    passed, go_on = asyncio.Event(), asyncio.Event()
    check = context.throttle.check

    async def slow_round_trip(**subjects: Any) -> None:
        await check(**subjects)
        if subjects["client"] == victim["client_id"] and not passed.is_set():
            passed.set()
            await go_on.wait()

    monkeypatch.setattr(context.throttle, "check", slow_round_trip)
    right = asyncio.create_task(
        client.post(
            "/token", data={"grant_type": "client_credentials", "api_key": victim["api_key"]}
        )
    )
    await passed.wait()
    bad = {
        "grant_type": "client_credentials",
        "client_id": victim["client_id"],
        "client_secret": "C" * 43,
    }
    for _ in range(context.settings.throttle_client_failures):
        assert (await client.post("/token", data=bad)).status_code == 401
    go_on.set()
    response = await right
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "slow_down"


async def test_concurrent_exchanges_with_the_right_secret_are_never_throttled(client, context):
    token = await user_token(context, client, "owner", ["api_keys:manage"])
    key = await create_key(client, token, name="busy")
    burst = [
        client.post("/token", data={"grant_type": "client_credentials", "api_key": key["api_key"]})
        for _ in range(4 * context.settings.throttle_client_failures)
    ]
    assert {response.status_code for response in await asyncio.gather(*burst)} == {200}


@pytest.mark.parametrize("settings_overrides", [{"throttle_client_failures": 3}])
async def test_concurrent_wrong_passwords_are_tried_only_up_to_the_limit(client, context):
    """Password checks of one username take turns, so a burst costs `limit` argon2 runs."""
    from keyservice.security.hashing import slow_hash_jobs

    limit = context.settings.throttle_client_failures
    await create_principal(context, "alice")
    wrong = {"grant_type": "password", "username": "alice", "password": "nope"}
    right = {**wrong, "password": PASSWORD}
    before = slow_hash_jobs()
    *guesses, guessed = await asyncio.gather(
        *[client.post("/token", data=wrong) for _ in range(8 * limit)],
        client.post("/token", data=right),
    )
    assert _statuses(guesses) == [400] * limit + [429] * 7 * limit
    assert guessed.status_code == 429
    assert slow_hash_jobs() - before == limit


async def test_failed_client_ids_do_not_count_against_a_username(client, context):
    # Failures are counted per subject: a client id as sent, a username as "user:<name>".
    # A client id sent as "user:dora" (no client id can look like that) was counted as
    # dora's failed sign-ins and locked her out, through refusals of token.exchange that
    # name no user, where the audit log gave no clue of the cause.
    await create_principal(context, "dora", permissions=["api_keys:manage"])
    bogus = {"grant_type": "client_credentials", "client_id": "user:dora", "client_secret": "x"}
    for _ in range(context.settings.throttle_client_failures + 1):
        assert (await client.post("/token", data=bogus)).status_code == 401
    await login(client, "dora")  # asserts 200


async def test_a_redis_outage_is_logged_as_redis_not_the_database(database_url, tmp_path, caplog):
    # It said "database unavailable during /token": the operator looked at the wrong server.
    from keyservice.main import create_app
    from tests.conftest import make_settings, refused_port

    url = f"redis://127.0.0.1:{refused_port()}/0"
    ctx = AppContext(make_settings(database_url, tmp_path, redis_url=url))
    app = create_app(context=ctx)
    wrong = {"grant_type": "password", "username": "nobody", "password": "nope"}
    async with app.router.lifespan_context(app), client_for(app) as http:
        answered = await http.post("/token", data=wrong)
    await ctx.database.dispose()
    assert answered.status_code == 503, answered.text
    assert answered.json()["error"] == "temporarily_unavailable"
    said = [r.getMessage() for r in caplog.records if "unavailable during" in r.getMessage()]
    assert said and all(
        line.startswith("Redis (KEYSERVICE_REDIS_URL) unavailable during /token") for line in said
    ), said
