"""What one running app holds: settings, database, keys, caches. Built by create_app()."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keyservice.auth.revocation import RevocationView
from keyservice.auth.store import make_token_store
from keyservice.auth.throttle import make_throttle
from keyservice.config import Settings
from keyservice.database import CONNECT_TIMEOUT_SECONDS, Database
from keyservice.scopes.service import CatalogNames
from keyservice.security.hashing import SecretHasher, derive_key
from keyservice.security.jwt import SIGNING_KEY_PURPOSE, SigningKeyring

if TYPE_CHECKING:
    from keyservice.metrics import Metrics


async def ticks(stop: asyncio.Event, seconds: float) -> AsyncIterator[None]:
    """Yield every `seconds` until `stop` is set.

    Background loops use this rather than being cancelled at shutdown: a cancellation in
    the middle of a query can leave a connection checked out and never closed.
    """
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            yield


@dataclass
class LastUsedTracker:
    """Coalesce `last_used_*` writes: at most one per key per interval per process."""

    interval: float
    _written: dict[str, float] = field(default_factory=dict)

    def due(self, key_id: str) -> bool:
        now = time.monotonic()
        last = self._written.get(key_id)
        if last is not None and now - last < self.interval:
            return False
        if len(self._written) > 100_000:
            self._written.clear()
        self._written[key_id] = now
        return True


class AppContext:
    def __init__(
        self,
        settings: Settings,
        database: Database | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.settings = settings
        self.database = database or Database(
            settings.effective_database_url,
            pool_size=settings.database_pool_size,
            log_audit_events=settings.audit_log,
            connect_timeout=connect_timeout,
        )
        secret = settings.server_secret()
        fallback = settings.server_secret_fallback()
        self.hasher = SecretHasher(secret, fallback)
        self.keyring = SigningKeyring(
            encryption_key=derive_key(secret, SIGNING_KEY_PURPOSE),
            fallback_key=derive_key(fallback, SIGNING_KEY_PURPOSE) if fallback else None,
            algorithm=settings.signing_algorithm,
            issuer=settings.effective_issuer,
            audience=settings.effective_audience,
            access_token_ttl=settings.access_token_ttl,
        )
        self.revocation = RevocationView(
            access_token_ttl=settings.access_token_ttl,
            poll_seconds=settings.revocation_poll_seconds,
        )
        self.throttle = make_throttle(
            settings, self.database, key=derive_key(secret, "keyservice/throttle-subject/v1")
        )
        self.tokens = make_token_store(self.database, async_commit=settings.token_commit == "async")
        # The revocation view's staleness is short enough for discovery documents too.
        self.scope_names = CatalogNames(ttl=settings.revocation_poll_seconds)
        self.last_used = LastUsedTracker(interval=settings.last_used_interval_seconds)
        # Keys hashed again under the current secret (auth.service.rehash_if_needed), at
        # most once a minute per key and process: while replicas restart from "old secret,
        # new as fallback" to "new secret, old as fallback", each kind moves a key used on
        # both back to its own secret, and this bounds those writes.
        self.rehashed = LastUsedTracker(interval=60)
        # The Prometheus metrics when KEYSERVICE_METRICS_PORT is set (create_app).
        self.metrics: Metrics | None = None
        # Set at shutdown: background loops finish their current step and return.
        self.stopping = asyncio.Event()

    async def reload_signing_keys(self) -> bool:
        """Reload the signing keys for a token naming a `kid` not loaded here yet; False if
        the rate limit refused (SigningKeyring.reload_for_unknown_kid)."""

        async def load() -> None:
            async with self.database.sessionmaker() as session:
                await self.keyring.load(session)

        return await self.keyring.reload_for_unknown_kid(load)
