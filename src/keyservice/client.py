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
import copy
import functools
import logging
import math
import os
import re
import ssl
import sys
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from dataclasses import dataclass, field, replace
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
# A Retry-After is honoured up to this long; a longer one (a misconfigured proxy) would
# otherwise lock the auth object out of the token endpoint for that long.
_MAX_RETRY_AFTER = 300.0
# After a token request failed for a passing reason while the held token is still alive,
# no new one is sent for this long: requests use the held token meanwhile, rather than each
# sending a token request (and logging a warning) to an endpoint that is down or struggling.
_OUTAGE_PAUSE = 5.0
# A token obtained because an API answered 401, and never accepted since, is not replaced
# for the same reason within this long: an API that refuses fresh tokens would otherwise
# cost the token endpoint one renewal per API request.
_PAUSE_AFTER_401 = 30.0
# Failures that happen before a request leaves: the service never saw it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_BLOCKED_LOOP = (
    "a synchronous request needs an access token while a task of this thread's event loop "
    "is getting one; waiting would block that event loop for good. In async code, use "
    "httpx.AsyncClient with this KeyServiceAuth"
)


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

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields, so that it crosses process boundaries (multiprocessing,
        # concurrent.futures) with the same message rather than the message as `error`.
        return (
            _rebuild_error,
            (self.error, self.description, self.status_code, self.retry_after),
        )


def _elapsed_clock() -> Callable[[], float]:
    """The clock of the SDK's deadlines: seconds that go on counting while the machine sleeps.

    `time.monotonic` stops in a system suspend on Linux and macOS: a laptop waking from a
    night's sleep held a token it took for fresh, expired hours ago by every other clock,
    and bridged a failed renewal with it. CLOCK_BOOTTIME (Linux) and macOS's
    CLOCK_MONOTONIC count the sleep and, like `monotonic`, never jump with the wall clock.
    """
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is None and sys.platform == "darwin":
        clock_id = getattr(time, "CLOCK_MONOTONIC", None)
    if clock_id is not None:
        try:
            time.clock_gettime(clock_id)
        except OSError:  # pragma: no cover - a kernel without it
            return time.monotonic
        return functools.partial(time.clock_gettime, clock_id)
    return time.monotonic  # pragma: no cover - Windows: its monotonic counts sleep


elapsed = _elapsed_clock()


def _rebuild_error(
    error: str, description: str | None, status_code: int | None, retry_after: float | None
) -> TokenExchangeError:
    return TokenExchangeError(error, description, status_code=status_code, retry_after=retry_after)


@dataclass(slots=True)
class _After401:
    """How a token obtained because an API answered 401 has fared since."""

    at: float  # when it was obtained (elapsed())
    accepted: bool = False  # whether an API has accepted it since


@dataclass(frozen=True, slots=True)
class _Token:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    # Deadlines on `elapsed()`, so wall-clock jumps cannot stretch a token's life and a
    # suspend cannot freeze it.
    refresh_at: float
    expires_at: float
    refresh_token_usable_until: float | None
    scope: str | None
    # Set if it replaced a token an API answered 401 to.
    after_401: _After401 | None = None

    def due(self, now: float) -> bool:
        return now >= self.refresh_at

    def refused(self, stale: _Token | None) -> bool:
        """Whether this token's access token is the one an API just answered 401 to."""
        return stale is not None and self.access_token == stale.access_token

    def live(self, now: float) -> bool:
        return now < self.expires_at

    def without_refresh_token(self, *, refused: bool) -> _Token:
        """This token with its refresh token forgotten (and, if refused, its access token)."""
        if refused:
            return replace(
                self,
                refresh_token=None,
                refresh_token_usable_until=None,
                refresh_at=-math.inf,
                expires_at=-math.inf,
            )
        return replace(self, refresh_token=None, refresh_token_usable_until=None)

    def can_refresh(self, now: float) -> bool:
        return (
            self.refresh_token is not None
            and self.refresh_token_usable_until is not None
            and now < self.refresh_token_usable_until
        )


def seconds_option(name: str, value: float, *, zero: bool = False) -> float:
    """Return a constructor's duration option, or raise ValueError saying what it must be.

    A negative, NaN or infinite number of seconds (NaN compares false with everything)
    would be taken silently and make caches and timers misbehave later, far from the
    mistake; a bool is refused too (True is 1 to Python, surely not what was meant).
    """
    wanted = "zero or more" if zero else "more than zero"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds ({wanted}), not {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a finite number of seconds, {wanted}; got {value!r}")
    return value


def plain_http_off_host(url: str) -> bool:
    """Whether url is plain http:// to anything but the local machine."""
    parsed = httpx.URL(url)
    return parsed.scheme == "http" and parsed.host not in _LOOPBACK


def shown_url(url: str) -> str:
    """url as a log line or repr shows it: a password in it (user:password@) hidden."""
    parsed = httpx.URL(url)
    if not parsed.password:
        return url
    return str(parsed.copy_with(username=parsed.username, password="***"))


def mask_api_key(api_key: str) -> str:
    """Return the API key with everything but its public client-id part hidden."""
    match = _PUBLIC_PART.match(api_key)
    return f"{match.group(1)}…" if match else "…"


def _clone(exc: Exception, *, retry_after: float | None = None) -> Exception:
    """A fresh exception like exc, without its traceback (which holds the request's frames)."""
    if isinstance(exc, TokenExchangeError):
        return TokenExchangeError(
            exc.error, exc.description, status_code=exc.status_code, retry_after=retry_after
        )
    try:
        return copy.copy(exc)
    except Exception:
        return exc


@dataclass(frozen=True, slots=True)
class _Failure:
    """A failed token request, shared with the callers that waited for it."""

    error: Exception
    at: float  # when it failed (elapsed())
    retry_at: float  # no new request before this (Retry-After); `at` if none was given
    transient: bool  # the endpoint or the network, not the key: the held token may bridge it

    @classmethod
    def of(cls, exc: Exception, now: float) -> _Failure:
        retry_after = exc.retry_after if isinstance(exc, TokenExchangeError) else None
        wait = min(retry_after, _MAX_RETRY_AFTER) if retry_after is not None else 0.0
        if isinstance(exc, TokenExchangeError):
            status = exc.status_code or 0
            transient = status == 429 or status >= 500
        else:
            transient = isinstance(exc, httpx.TransportError)
        return cls(_clone(exc, retry_after=retry_after), now, now + wait, transient)

    @property
    def summary(self) -> str:
        exc = self.error
        if isinstance(exc, TokenExchangeError):
            return f"{exc.error}, HTTP {exc.status_code}"
        return type(exc).__name__

    def again(self, now: float) -> Exception:
        """A fresh exception like the recorded one, for another caller to raise."""
        has_wait = isinstance(self.error, TokenExchangeError) and self.error.retry_after is not None
        # Each caller raises its own instance: one raised in several threads mixes tracebacks.
        return _clone(self.error, retry_after=max(0.0, self.retry_at - now) if has_wait else None)


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
        leeway = seconds_option("leeway", leeway, zero=True)
        timeout = seconds_option("timeout", timeout)
        if plain_http_off_host(url):
            logger.warning(
                "token URL %s is plain HTTP: the API key would cross the network unencrypted",
                shown_url(url),
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
        self._failure: _Failure | None = None  # the last token request, if it failed
        self._sunset_warned = False
        # Serialises token requests across threads (and across event loops in threads).
        self._thread_lock = threading.Lock()
        # The thread whose event loop holds _thread_lock across an await, if one does.
        self._async_holder: int | None = None
        # An asyncio.Lock belongs to one event loop: keep one per loop, made on first use.
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
        self._async_locks = weakref.WeakKeyDictionary()
        self._async_locks_guard = threading.Lock()
        _INSTANCES.add(self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(api_key={self._masked_key!r}, "
            f"token_url={shown_url(self.token_url)!r}, scope={self.scope!r})"
        )

    def _after_fork(self) -> None:
        """In a forked child: keep the access token, forget the refresh token, new locks.

        Parent and child would otherwise both present the one single-use refresh token,
        which the service takes for a replay (it revokes the family, the parent's next
        token with it, and raises a token.refresh_reuse alarm): the child gets its next
        token from the key. A lock another thread held at the fork stays held for good.
        """
        if self._token is not None:
            self._token = self._token.without_refresh_token(refused=False)
        self._failure = None
        self._thread_lock = threading.Lock()
        self._async_holder = None
        self._async_locks = weakref.WeakKeyDictionary()
        self._async_locks_guard = threading.Lock()

    # -- httpx.Auth -------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach a valid access token; on a 401 refresh once and retry once."""
        token = self._sync_token(stale=None)
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        response = yield request
        if not self._answered(response, token):
            return
        token = self._sync_token(stale=token)
        if _replayable(request):
            request.headers["Authorization"] = f"Bearer {token.access_token}"
            response = yield request
            self._answered(response, token)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Attach a valid access token; on a 401 refresh once and retry once."""
        token = await self._async_token(stale=None)
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        response = yield request
        if not self._answered(response, token):
            return
        token = await self._async_token(stale=token)
        if _replayable(request):
            request.headers["Authorization"] = f"Bearer {token.access_token}"
            response = yield request
            self._answered(response, token)

    def _answered(self, response: httpx.Response, token: _Token) -> bool:
        """Note an API's answer to a request with this token; True if it calls for a new one.

        A 401 does, unless the token itself replaced a refused one moments ago and no API
        has accepted it since: an API refusing fresh tokens (its clock or audience set
        wrong) refuses the next one too.
        """
        after_401 = token.after_401
        if response.status_code != 401:
            if after_401 is not None:
                after_401.accepted = True
            return False
        return (
            after_401 is None or after_401.accepted or elapsed() >= after_401.at + _PAUSE_AFTER_401
        )

    # -- token state --------------------------------------------------------------------

    def _current(self, stale: _Token | None) -> _Token | None:
        """Return the held token if it can be used as is (not due, not the rejected one)."""
        token = self._token
        if token is None or token.refused(stale) or token.due(elapsed()):
            return None
        return token

    def _settled(self, stale: _Token | None, arrived: float) -> _Token | None:
        """Under the lock: a token usable without a request, or None to make one; or raise.

        A caller that waited for the lock while another caller's token request failed
        shares that failure instead of repeating the request, so N callers on a refused key
        or an unreachable endpoint make one request, not N in a row (each waiting out its
        own timeout). Nobody asks again before a Retry-After has passed, nor, while a live
        token bridges a passing failure, for _OUTAGE_PAUSE seconds after it.
        """
        token = self._current(stale)
        if token is not None:
            return token
        failure = self._failure
        if failure is None:
            return None
        now = elapsed()
        held = self._held(failure, stale)
        if failure.at < arrived and now >= failure.retry_at:
            # A held token bridging an outage is used for a moment before asking again.
            return held if held is not None and now < failure.at + _OUTAGE_PAUSE else None
        if held is None:
            raise failure.again(now)
        return held

    def _held(self, failure: _Failure, stale: _Token | None) -> _Token | None:
        """Return the held token if it may bridge this failure: a passing one, token alive."""
        return self._alive(stale) if failure.transient else None

    def _alive(self, stale: _Token | None) -> _Token | None:
        """Return the held token if it has not expired and is not the one refused."""
        token = self._token
        if token is None or token.refused(stale) or not token.live(elapsed()):
            return None
        return token

    def _renewed(self, token: _Token, stale: _Token | None) -> _Token:
        if stale is not None:
            token = replace(token, after_401=_After401(elapsed()))
        self._token, self._failure = token, None
        return token

    def _after_failure(self, exc: Exception, stale: _Token | None) -> _Token | None:
        """Record a failed token request; return the held token if it may still be used."""
        now = elapsed()
        self._failure = failure = _Failure.of(exc, now)
        held = self._held(failure, stale)
        if held is not None:
            # The early refresh failed for a passing reason: the token has `leeway` seconds
            # left, so requests need not fail yet.
            logger.warning(
                "renewing the access token failed (%s); the current one is used until it "
                "expires in %.0f s",
                failure.summary,
                held.expires_at - now,
            )
        return held

    def _sync_token(self, *, stale: _Token | None) -> _Token:
        token = self._current(stale)
        if token is not None:
            return token
        arrived = elapsed()
        if not self._thread_lock.acquire(blocking=False):
            # Another caller is renewing the token: one still alive (due for its early
            # refresh) is used meanwhile rather than waiting, perhaps a timeout, for that.
            token = self._alive(stale)
            if token is not None:
                return token
            if self._async_holder == threading.get_ident():
                raise RuntimeError(_BLOCKED_LOOP)
            self._thread_lock.acquire()
        try:
            # Another thread may have refreshed (or failed to) while this one waited.
            token = self._settled(stale, arrived)
            if token is not None:
                return token
            try:
                return self._renewed(self._sync_obtain(stale), stale)
            except Exception as exc:
                token = self._after_failure(exc, stale)
                if token is None:
                    raise
                return token
        finally:
            self._thread_lock.release()

    async def _async_token(self, *, stale: _Token | None) -> _Token:
        token = self._current(stale)
        if token is not None:
            return token
        arrived = elapsed()
        lock = self._async_lock()
        if lock.locked() or self._thread_lock.locked():
            # Another caller is renewing the token: one still alive is used meanwhile.
            token = self._alive(stale)
            if token is not None:
                return token
        async with lock:
            token = self._settled(stale, arrived)
            if token is not None:
                return token
            # Tasks of this loop are serialised above; the thread lock also keeps other
            # threads and loops out, since a refresh token raced twice revokes its family.
            # Polling rather than a blocking acquire keeps the event loop running.
            while not self._thread_lock.acquire(blocking=False):
                await asyncio.sleep(0.005)
            self._async_holder = threading.get_ident()
            try:
                token = self._settled(stale, arrived)
                if token is not None:
                    return token
                try:
                    return self._renewed(await self._async_obtain(stale), stale)
                except Exception as exc:
                    token = self._after_failure(exc, stale)
                    if token is None:
                        raise
                    return token
            finally:
                self._async_holder = None
                self._thread_lock.release()

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._async_locks_guard:
            lock = self._async_locks.get(loop)
            if lock is None:
                lock = self._async_locks[loop] = asyncio.Lock()
            return lock

    def _sync_obtain(self, stale: _Token | None) -> _Token:
        current = self._token
        if current is not None and current.can_refresh(elapsed()):
            try:
                return self._sync_request(self._refresh_form(current))
            except BaseException as exc:
                if not self._refresh_failed(current, stale, exc):
                    raise
        return self._sync_request(self._exchange_form())

    async def _async_obtain(self, stale: _Token | None) -> _Token:
        current = self._token
        if current is not None and current.can_refresh(elapsed()):
            try:
                return await self._async_request(self._refresh_form(current))
            except BaseException as exc:  # CancelledError too: the answer is lost
                if not self._refresh_failed(current, stale, exc):
                    raise
        return await self._async_request(self._exchange_form())

    def _refresh_failed(self, current: _Token, stale: _Token | None, exc: BaseException) -> bool:
        """Forget a refresh token that failed, unless refused before use; True: exchange.

        A refused one (invalid_grant) never works again, and one whose answer never came
        (timeout, network error, 5xx, cancelled) may have been used by the service:
        presenting it again would look like a stolen token being replayed, which revokes
        its family and raises a token.refresh_reuse alarm (RFC 9700 §4.14.2). The next
        token comes from the key instead. Other 4xx answers (slow_down) left it unused, as
        does a connection that was never made.
        """
        if isinstance(exc, TokenExchangeError):
            status = exc.status_code or 0
            kept = 400 <= status < 500 and exc.error != "invalid_grant"
        else:
            kept = isinstance(exc, _NOT_SENT)
        if not kept:
            self._token = current.without_refresh_token(refused=current.refused(stale))
        if isinstance(exc, TokenExchangeError) and exc.error == "invalid_grant":
            logger.info("refresh token refused (invalid_grant); exchanging the API key")
            return True
        return False

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
        started = elapsed()
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
        started = elapsed()
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
        expires_at = started + expires_in
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
            expires_at=expires_at,
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
            # delay-seconds only (RFC 9110 §10.2.3): no "inf", "nan" or negative waits.
            if retry_after is not None and not 0 <= retry_after < math.inf:
                retry_after = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            description = body.get("error_description")
            return TokenExchangeError(
                body["error"],
                description[:_MAX_DESCRIPTION] if isinstance(description, str) else None,
                status_code=response.status_code,
                retry_after=retry_after,
            )
        description = "the token endpoint answered without an OAuth error body"
        if response.is_redirect:
            # Not followed on purpose (the key goes to token_url or nowhere); say so.
            location = response.headers.get("Location", "")[:200]
            description = (
                f"the token endpoint redirects to {location!r}; redirects are not followed "
                "with the key, so set token_url to the final URL"
            )
        return TokenExchangeError(
            "invalid_response",
            description,
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


# The auth objects of this process, for a forked child to forget their refresh tokens
# (a web server forking its workers after the app used its auth object at start-up).
_INSTANCES: weakref.WeakSet[KeyServiceAuth] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for auth in list(_INSTANCES):
        auth._after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
