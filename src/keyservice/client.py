"""httpx authentication that exchanges a keyservice API key for short-lived access tokens.

    import httpx
    from keyservice.client import KeyServiceAuth

    auth = KeyServiceAuth(token_url="https://keys.example.com/token")  # key from env
    with httpx.Client(base_url="https://api.example.com", auth=auth) as client:
        client.get("/projects")

The API key is sent to the token endpoint only, never on ordinary requests. The access
token is refreshed with the (single-use, rotating) refresh token shortly before it expires
and once after a 401; when the refresh token is spent or expired the key is exchanged
again. This module imports nothing from the server side (no FastAPI, SQLAlchemy, pydantic).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["KeyServiceAuth", "TokenExchangeError"]

logger = logging.getLogger(__name__)

API_KEY_ENV = "KEYSERVICE_API_KEY"
TOKEN_URL_ENV = "KEYSERVICE_TOKEN_URL"

# `ksk_` + the 16-char client id body + `_` + secret and checksum. Only the public part is
# ever shown; legacy (imported) keys have no known layout and are masked entirely.
_PUBLIC_PART = re.compile(r"^(ksk_[A-Za-z0-9]{16}_)")
# Used when the token endpoint omits expires_in (RFC 6749 makes it RECOMMENDED only): a
# short guess costs a few extra refreshes, a long one costs failed requests.
_DEFAULT_EXPIRES_IN = 60.0
_MAX_DESCRIPTION = 300
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class TokenExchangeError(Exception):
    """The token endpoint refused a key exchange or a refresh (RFC 6749 §5.2)."""

    def __init__(
        self,
        error: str,
        description: str | None = None,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.error = error
        self.description = description
        self.status_code = status_code
        self.retry_after = retry_after
        message = f"token endpoint refused the request: {error}"
        if status_code is not None:
            message += f" (HTTP {status_code})"
        if description:
            message += f": {description}"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class _Token:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    # Deadlines on the monotonic clock, so wall-clock jumps cannot stretch a token's life.
    refresh_at: float
    refresh_token_usable_until: float | None
    scope: str | None

    def due(self, now: float) -> bool:
        return now >= self.refresh_at

    def can_refresh(self, now: float) -> bool:
        return (
            self.refresh_token is not None
            and self.refresh_token_usable_until is not None
            and now < self.refresh_token_usable_until
        )


def mask_api_key(api_key: str) -> str:
    """Return the API key with everything but its public client-id part hidden."""
    match = _PUBLIC_PART.match(api_key)
    return f"{match.group(1)}…" if match else "…"


def _replayable(request: httpx.Request) -> bool:
    # A generator or file body has been consumed by the first attempt; resending it would
    # raise StreamConsumed or send a truncated body, so only in-memory bodies are retried.
    return isinstance(request.stream, httpx.ByteStream) or hasattr(request, "_content")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class KeyServiceAuth(httpx.Auth):
    """Authenticate httpx requests with access tokens obtained from a keyservice API key.

    Works with both ``httpx.Client`` and ``httpx.AsyncClient``; one object may be shared
    by many threads and tasks, and at most one exchange or refresh runs at a time.
    Token requests go through a dedicated client (``token_client`` /
    ``async_token_client`` if given, else a short-lived one per request), never through
    the client being authenticated, so its base URL, headers and hooks do not leak into
    them and the key never reaches the API being called.
    """

    def __init__(
        self,
        api_key: str | None = None,
        token_url: str | None = None,
        *,
        scope: str | Iterable[str] | None = None,
        leeway: float = 60,
        timeout: float = 10.0,
        verify: ssl.SSLContext | bool = True,
        token_client: httpx.Client | None = None,
        async_token_client: httpx.AsyncClient | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        # Keys pasted into env files often carry a trailing newline.
        key = key.strip() if key else key
        if not key:
            raise ValueError(f"no API key: pass api_key or set {API_KEY_ENV}")
        url = token_url if token_url is not None else os.environ.get(TOKEN_URL_ENV)
        if not url:
            raise ValueError(f"no token URL: pass token_url or set {TOKEN_URL_ENV}")
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        parsed = httpx.URL(url)
        if parsed.scheme == "http" and parsed.host not in _LOOPBACK:
            logger.warning(
                "token URL %s is plain HTTP: the API key would cross the network unencrypted",
                url,
            )
        self._api_key = key
        self._masked_key = mask_api_key(key)
        self.token_url = url
        self.scope = scope if scope is None or isinstance(scope, str) else " ".join(scope)
        self.leeway = float(leeway)
        self._timeout = timeout
        self._verify = verify
        self._token_client = token_client
        self._async_token_client = async_token_client
        self._token: _Token | None = None
        self._sunset_warned = False
        # Serialises token requests across threads (and across event loops in threads).
        self._thread_lock = threading.Lock()
        # An asyncio.Lock belongs to one event loop: keep one per loop, made on first use.
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
        self._async_locks = weakref.WeakKeyDictionary()
        self._async_locks_guard = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(api_key={self._masked_key!r}, "
            f"token_url={self.token_url!r}, scope={self.scope!r})"
        )

    # -- httpx.Auth -------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach a valid access token; on a 401 refresh once and retry once."""
        token = self._sync_token(stale=None)
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        response = yield request
        if response.status_code != 401:
            return
        token = self._sync_token(stale=token)
        if _replayable(request):
            request.headers["Authorization"] = f"Bearer {token.access_token}"
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Attach a valid access token; on a 401 refresh once and retry once."""
        token = await self._async_token(stale=None)
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        response = yield request
        if response.status_code != 401:
            return
        token = await self._async_token(stale=token)
        if _replayable(request):
            request.headers["Authorization"] = f"Bearer {token.access_token}"
            yield request

    # -- token state --------------------------------------------------------------------

    def _current(self, stale: _Token | None) -> _Token | None:
        """Return the held token if it can be used as is (not due, not the rejected one)."""
        token = self._token
        if token is None or token is stale or token.due(time.monotonic()):
            return None
        return token

    def _sync_token(self, *, stale: _Token | None) -> _Token:
        token = self._current(stale)
        if token is not None:
            return token
        with self._thread_lock:
            # Another thread may have refreshed while this one waited for the lock.
            token = self._current(stale)
            if token is None:
                token = self._sync_obtain(self._token)
                self._token = token
            return token

    async def _async_token(self, *, stale: _Token | None) -> _Token:
        token = self._current(stale)
        if token is not None:
            return token
        async with self._async_lock():
            token = self._current(stale)
            if token is not None:
                return token
            # Tasks of this loop are serialised above; the thread lock also keeps other
            # threads and loops out, since a refresh token raced twice revokes its family.
            # Polling rather than a blocking acquire keeps the event loop running.
            while not self._thread_lock.acquire(blocking=False):
                await asyncio.sleep(0.005)
            try:
                token = self._current(stale)
                if token is None:
                    token = await self._async_obtain(self._token)
                    self._token = token
                return token
            finally:
                self._thread_lock.release()

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._async_locks_guard:
            lock = self._async_locks.get(loop)
            if lock is None:
                lock = self._async_locks[loop] = asyncio.Lock()
            return lock

    def _sync_obtain(self, current: _Token | None) -> _Token:
        if current is not None and current.can_refresh(time.monotonic()):
            try:
                return self._sync_request(self._refresh_form(current))
            except TokenExchangeError as exc:
                if exc.error != "invalid_grant":
                    raise
                logger.info("refresh token refused (invalid_grant); exchanging the API key")
        return self._sync_request(self._exchange_form())

    async def _async_obtain(self, current: _Token | None) -> _Token:
        if current is not None and current.can_refresh(time.monotonic()):
            try:
                return await self._async_request(self._refresh_form(current))
            except TokenExchangeError as exc:
                if exc.error != "invalid_grant":
                    raise
                logger.info("refresh token refused (invalid_grant); exchanging the API key")
        return await self._async_request(self._exchange_form())

    def _exchange_form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials", "api_key": self._api_key}
        if self.scope:
            form["scope"] = self.scope
        return form

    @staticmethod
    def _refresh_form(token: _Token) -> dict[str, str]:
        assert token.refresh_token is not None
        # No scope: a refreshed token keeps the scope of the exchange it descends from.
        return {"grant_type": "refresh_token", "refresh_token": token.refresh_token}

    # -- token endpoint I/O ---------------------------------------------------------------

    _HEADERS = {"Accept": "application/json"}

    def _sync_request(self, form: dict[str, str]) -> _Token:
        started = time.monotonic()
        # Redirects are not followed: the key must reach the configured URL or nowhere.
        if self._token_client is not None:
            response = self._token_client.post(
                self.token_url, data=form, headers=self._HEADERS, follow_redirects=False
            )
        else:
            with httpx.Client(timeout=self._timeout, verify=self._verify) as client:
                response = client.post(
                    self.token_url, data=form, headers=self._HEADERS, follow_redirects=False
                )
        return self._parse(response, started)

    async def _async_request(self, form: dict[str, str]) -> _Token:
        started = time.monotonic()
        if self._async_token_client is not None:
            response = await self._async_token_client.post(
                self.token_url, data=form, headers=self._HEADERS, follow_redirects=False
            )
        else:
            async with httpx.AsyncClient(timeout=self._timeout, verify=self._verify) as client:
                response = await client.post(
                    self.token_url, data=form, headers=self._HEADERS, follow_redirects=False
                )
        return self._parse(response, started)

    def _parse(self, response: httpx.Response, started: float) -> _Token:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            raise self._error(response, body)
        access_token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access_token, str) or not access_token:
            raise TokenExchangeError(
                "invalid_response",
                "the token endpoint answered 200 without an access_token",
                status_code=response.status_code,
            )
        self._warn_sunset(response)
        expires_in = _number(body.get("expires_in"))
        if expires_in is None or expires_in <= 0:
            expires_in = _DEFAULT_EXPIRES_IN
        # Refresh `leeway` seconds early, but never so early that a short-lived token
        # (seconds, in tests) would be refreshed on every request.
        refresh_at = started + expires_in - min(self.leeway, expires_in / 2)
        refresh_token = body.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            refresh_token = None
        usable_until = None
        refresh_expires_in = _number(body.get("refresh_token_expires_in"))
        if refresh_token is not None:
            if refresh_expires_in is None:
                # Unknown lifetime: try it; an invalid_grant falls back to an exchange.
                usable_until = float("inf")
            else:
                # A small margin avoids presenting a token that expires in flight.
                usable_until = started + refresh_expires_in - min(5.0, refresh_expires_in / 2)
        scope = body.get("scope")
        return _Token(
            access_token=access_token,
            refresh_token=refresh_token,
            refresh_at=refresh_at,
            refresh_token_usable_until=usable_until,
            scope=scope if isinstance(scope, str) else None,
        )

    @staticmethod
    def _error(response: httpx.Response, body: Any) -> TokenExchangeError:
        retry_after = None
        if "Retry-After" in response.headers:
            try:
                retry_after = float(response.headers["Retry-After"])
            except ValueError:
                retry_after = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            description = body.get("error_description")
            return TokenExchangeError(
                body["error"],
                description[:_MAX_DESCRIPTION] if isinstance(description, str) else None,
                status_code=response.status_code,
                retry_after=retry_after,
            )
        return TokenExchangeError(
            "invalid_response",
            "the token endpoint answered without an OAuth error body",
            status_code=response.status_code,
            retry_after=retry_after,
        )

    def _warn_sunset(self, response: httpx.Response) -> None:
        sunset = response.headers.get("Sunset")
        if sunset is None or self._sunset_warned:
            return
        self._sunset_warned = True
        logger.warning(
            "API key %s expires at %s (Sunset header from the token endpoint); "
            "rotate it before then",
            self._masked_key,
            sunset[:100],
        )
