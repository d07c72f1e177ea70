"""Brute-force protection at /token: failures counted per client id / username and per IP.

A sliding window of failure times per subject. Client ids lock out after a handful of
failures a minute; an IP only after many more, so clients behind one NAT address are not
locked out by one bad neighbour. Three stores share one interface:

- `MemoryThrottle`: in-process; the embedded SQLite default and single-process deployments.
- `DatabaseThrottle`: the `throttle_failure` table; PostgreSQL deployments, so that every
  worker and replica sees the same counts.
- `RedisThrottle`: one sorted set per subject; used when `KEYSERVICE_REDIS_URL` is set.

Subjects are keyed by an HMAC, never stored as typed: a username field sometimes holds a
password pasted into the wrong box. Only the `limit` most recent failures of a subject
matter (the window is full once there are `limit` of them), so each store keeps at most
that many per subject and an attacker cannot grow it without bound.

Concurrent attempts all pass `check` before any of them has failed, so the grants check
again, in this process's view (`check_local`, no I/O), once an attempt's outcome is known:
past the limit a failure is not counted and its outcome, success included, is withheld
(429) as it is for an attempt that arrives after the lock-out. Each process thus reveals at
most about `limit` outcomes per subject per window; processes sharing the database or Redis
at most `limit` each, plus what they answer before the database mirror catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import secrets
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select

from keyservice.database import Database, utcnow
from keyservice.exceptions import SlowDown

if TYPE_CHECKING:
    from keyservice.auth.service import Caller
    from keyservice.config import Settings
    from keyservice.context import AppContext

_MAX_SUBJECTS = 100_000
_PRUNE_EVERY_SECONDS = 30.0


class _Turn:
    """A lock and how many attempts hold it or wait for it (dropped when none do)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Throttle(ABC):
    """Count failures per subject; refuse a subject that is over its limit."""

    def __init__(
        self, *, client_limit: int, ip_limit: int, window_seconds: int, key: bytes = b""
    ) -> None:
        self.client_limit = client_limit
        self.ip_limit = ip_limit
        self.window = window_seconds
        self._key = key or secrets.token_bytes(32)
        self._turns: dict[str, _Turn] = {}

    def _subjects(self, client: str | None, ip: str | None) -> Iterator[tuple[str, int]]:
        if client:
            yield self._digest("c", client), self.client_limit
        if ip:
            yield self._digest("i", ip), self.ip_limit

    def _digest(self, kind: str, value: str) -> str:
        mac = hmac.new(self._key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"{kind}:{mac.hexdigest()[:40]}"

    def _retry_after(self, limit_th_most_recent: float, now: float) -> int:
        # The window frees up once the limit-th most recent failure has aged out.
        return max(1, math.ceil(limit_th_most_recent + self.window - now))

    @abstractmethod
    async def check(self, *, client: str | None, ip: str | None) -> None:
        """Raise SlowDown if the client or the IP is over its failure limit."""

    @abstractmethod
    def check_local(self, *, client: str | None, ip: str | None) -> None:
        """Raise SlowDown if this process's view has the client or the IP over its limit."""

    @abstractmethod
    async def failure(self, *, client: str | None, ip: str | None) -> None:
        """Count one failed attempt for the client and the IP.

        This process's view counts it before the first await, so that no other attempt's
        `check_local` can run in between and miss it.
        """

    @contextlib.asynccontextmanager
    async def turn(self, client: str) -> AsyncIterator[None]:
        """Hold the client's turn in this process: one attempt at a time (password checks)."""
        subject = self._digest("c", client)
        turn = self._turns.setdefault(subject, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[subject]

    async def close(self) -> None:
        """Release connections (Redis); nothing to do for the others."""
        return None


class MemoryThrottle(Throttle):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, subject: str, now: float) -> deque[float] | None:
        entries = self._failures.get(subject)
        if entries is None:
            return None
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        if not entries:
            del self._failures[subject]
            return None
        return entries

    async def check(self, *, client: str | None, ip: str | None) -> None:
        self.check_local(client=client, ip=ip)

    def check_local(self, *, client: str | None, ip: str | None) -> None:
        if not self._failures:
            return
        now = time.monotonic()
        for subject, limit in self._subjects(client, ip):
            entries = self._recent(subject, now)
            if entries is not None and len(entries) >= limit:
                raise SlowDown(self._retry_after(entries[len(entries) - limit], now))

    async def failure(self, *, client: str | None, ip: str | None) -> None:
        self.record(client=client, ip=ip)

    def record(self, *, client: str | None, ip: str | None) -> None:
        """Count one failure, synchronously."""
        now = time.monotonic()
        if len(self._failures) > _MAX_SUBJECTS:
            for subject in list(self._failures)[: _MAX_SUBJECTS // 10]:
                self._recent(subject, now)
        for subject, limit in self._subjects(client, ip):
            self._failures.setdefault(subject, deque(maxlen=limit)).append(now)


class DatabaseThrottle(Throttle):
    """Failure events in the `throttle_failure` table, shared by every worker and replica.

    Checking must not cost a query per request (it runs on every exchange), so each
    process mirrors the subjects that have reached a limit, re-read at most once every
    `refresh_seconds` when a check finds the mirror stale, and applies its own failures to
    the mirror at once. A lock-out reached through other replicas is thus seen within
    about a second; one reached here, immediately.
    """

    def __init__(self, database: Database, *, refresh_seconds: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.database = database
        self.refresh_seconds = refresh_seconds
        self._pruned_at = 0.0
        self._loaded_at = -math.inf
        self._reload: asyncio.Future[None] | None = None
        # subject -> failure times (epoch seconds), newest last, at most `limit` of them
        self._mirror: dict[str, deque[float]] = {}

    def _limit_of(self, subject: str) -> int:
        return self.client_limit if subject.startswith("c:") else self.ip_limit

    async def _refresh(self) -> None:
        from keyservice.auth.throttle_models import ThrottleFailure

        now = utcnow()
        since = now - timedelta(seconds=self.window)
        threshold = min(self.client_limit, self.ip_limit)
        crowded = (
            select(ThrottleFailure.subject)
            .where(ThrottleFailure.at > since)
            .group_by(ThrottleFailure.subject)
            .having(func.count() >= threshold)
        )
        async with self.database.token_sessionmaker() as session:
            rows = (
                await session.execute(
                    select(ThrottleFailure.subject, ThrottleFailure.at)
                    .where(ThrottleFailure.at > since, ThrottleFailure.subject.in_(crowded))
                    .order_by(ThrottleFailure.at)
                )
            ).all()
        mirror: dict[str, deque[float]] = {}
        for subject, at in rows:
            mirror.setdefault(subject, deque(maxlen=self._limit_of(subject))).append(_epoch(at))
        # Keep failures of this process that the read may have raced past.
        for subject, times in self._mirror.items():
            merged = mirror.setdefault(subject, deque(maxlen=self._limit_of(subject)))
            for moment in times:
                if moment > _epoch(since) and moment not in merged:
                    merged.append(moment)
            mirror[subject] = deque(sorted(merged), maxlen=self._limit_of(subject))
        self._mirror = {subject: times for subject, times in mirror.items() if times}
        self._loaded_at = time.monotonic()

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at < self.refresh_seconds:
            return
        if self._reload is None or self._reload.done():
            # One reload at a time; concurrent checks wait for the same one.
            self._reload = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._reload)

    async def close(self) -> None:
        """Let a mirror reload in flight finish, so no connection is left checked out."""
        if self._reload is not None and not self._reload.done():
            with contextlib.suppress(Exception):
                await self._reload

    async def check(self, *, client: str | None, ip: str | None) -> None:
        await self._fresh()
        self.check_local(client=client, ip=ip)

    def check_local(self, *, client: str | None, ip: str | None) -> None:
        if not self._mirror:
            return
        now = time.time()
        for subject, limit in self._subjects(client, ip):
            times = self._mirror.get(subject)
            if times is None:
                continue
            recent = [moment for moment in times if moment > now - self.window]
            if len(recent) >= limit:
                raise SlowDown(self._retry_after(recent[len(recent) - limit], now))

    async def failure(self, *, client: str | None, ip: str | None) -> None:
        from keyservice.auth.throttle_models import ThrottleFailure

        now = utcnow()
        for subject, limit in self._subjects(client, ip):
            self._mirror.setdefault(subject, deque(maxlen=limit)).append(_epoch(now))
        async with self.database.sessionmaker() as session:
            for subject, _limit in self._subjects(client, ip):
                session.add(ThrottleFailure(subject=subject, at=now))
            if time.monotonic() - self._pruned_at > _PRUNE_EVERY_SECONDS:
                self._pruned_at = time.monotonic()
                cutoff = now - timedelta(seconds=self.window)
                await session.execute(delete(ThrottleFailure).where(ThrottleFailure.at <= cutoff))
            await session.commit()


class RedisThrottle(Throttle):
    """One sorted set per subject (score = time), trimmed to the window and to `limit`."""

    def __init__(self, url: str, *, prefix: str = "keyservice:throttle:", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import redis.asyncio as redis

        self.redis = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=30
        )
        self.prefix = prefix
        # This process's own failures, for check_local.
        self._local = MemoryThrottle(
            client_limit=self.client_limit,
            ip_limit=self.ip_limit,
            window_seconds=self.window,
            key=self._key,
        )

    async def check(self, *, client: str | None, ip: str | None) -> None:
        now = time.time()
        subjects = list(self._subjects(client, ip))
        async with self.redis.pipeline(transaction=False) as pipe:
            for subject, limit in subjects:
                pipe.zrevrangebyscore(
                    self.prefix + subject, "+inf", f"({now - self.window}", 0, limit, True
                )
            results = await pipe.execute()
        for (_subject, limit), entries in zip(subjects, results, strict=True):
            if len(entries) >= limit:
                raise SlowDown(self._retry_after(float(entries[-1][1]), now))

    def check_local(self, *, client: str | None, ip: str | None) -> None:
        self._local.check_local(client=client, ip=ip)

    async def failure(self, *, client: str | None, ip: str | None) -> None:
        self._local.record(client=client, ip=ip)
        now = time.time()
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            for subject, limit in self._subjects(client, ip):
                key = self.prefix + subject
                pipe.zadd(key, {member: now})
                pipe.zremrangebyscore(key, "-inf", now - self.window)
                pipe.zremrangebyrank(key, 0, -(limit + 1))
                pipe.expire(key, self.window + 1)
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()


def _epoch(value: datetime) -> float:
    return value.timestamp()


def make_throttle(settings: Settings, database: Database, *, key: bytes) -> Throttle:
    """Pick the store: Redis if configured, the database if shared, else in-process."""
    limits: dict[str, Any] = {
        "client_limit": settings.throttle_client_failures,
        "ip_limit": settings.throttle_ip_failures,
        "window_seconds": settings.throttle_window_seconds,
        "key": key,
    }
    if settings.redis_url:
        return RedisThrottle(settings.redis_url, **limits)
    if not database.is_sqlite:
        return DatabaseThrottle(database, **limits)
    return MemoryThrottle(**limits)


async def enforce(ctx: AppContext, *, client: str | None, caller: Caller, event: str) -> None:
    """Check the throttle; a throttled request is audited (reason "throttled") and refused."""
    try:
        await ctx.throttle.check(client=client, ip=caller.ip_text)
    except SlowDown as exc:
        from keyservice.auth import service

        await service.refuse(ctx, exc, event=event, reason="throttled", caller=caller)
