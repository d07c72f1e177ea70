"""Verify keyservice access tokens in a resource server (RFC 9068 JWTs, keys from JWKS).

    verifier = TokenVerifier(
        "https://keys.example.com/.well-known/jwks.json",
        issuer="https://keys.example.com",
        audience="https://keys.example.com",
    )
    claims = verifier.verify(token)                      # or: await verifier.averify(token)

    @app.get("/projects")
    async def projects(claims=Depends(require_scopes(verifier, "projects:read"))): ...

Only httpx and PyJWT are imported here; FastAPI is imported when require_scopes is called,
so a client that only verifies tokens does not pull in the server stack.
"""

# No `from __future__ import annotations`: FastAPI reads the dependency's annotations at
# run time and, since fastapi is imported inside require_scopes, could not resolve them
# as strings from this module's globals.

import asyncio
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
import jwt
from jwt.algorithms import get_default_algorithms

from keyservice.client import (
    TokenExchangeError,
    elapsed,
    plain_http_off_host,
    seconds_option,
    shown_url,
)

__all__ = [
    "REQUIRED_CLAIMS",
    "InvalidTokenError",
    "TokenVerifier",
    "VerifierUnavailableError",
    "require_scopes",
]

logger = logging.getLogger(__name__)

REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti")
# RFC 9068 §2.1: `at+jwt`; §4 asks verifiers to accept the full media type as well.
_ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# A JWKS of a few keys is a few kilobytes; a larger answer is not a JWKS worth holding.
MAX_JWKS_BYTES = 1 << 20
_HEADER_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')
# A Cache-Control directive (RFC 9111 §5.2) and the delta-seconds of max-age and Age.
_DIRECTIVE = re.compile(r'\s*([A-Za-z-]+)\s*(?:=\s*"?([^"]*)"?)?\s*')
_SECONDS = re.compile(r"[0-9]{1,10}")
# JWK members that hold private or secret key material (RFC 7518 §6.2.2, §6.3.2, §6.4.1,
# RFC 8037 §2): a public JWKS never carries them.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class InvalidTokenError(Exception):
    """The token is not a valid access token for this resource server.

    The message says why in plain words and never contains the token.
    """


class VerifierUnavailableError(Exception):
    """The JWKS or introspection endpoint could not be used, so the token was not judged."""


def _check_algorithms(algorithms: Iterable[str]) -> tuple[str, ...]:
    algs = tuple(algorithms)
    if not algs:
        raise ValueError("at least one algorithm is required")
    known = get_default_algorithms()
    for alg in algs:
        # `none` has no signature, and HS* would let anyone holding the public key (the
        # JWKS is public) sign tokens: neither is ever acceptable for keyservice tokens.
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise ValueError(f"algorithm {alg!r} is never accepted")
        if alg not in known:
            raise ValueError(f"unknown algorithm {alg!r}")
    return algs


def _check_jwks_length(response: httpx.Response) -> None:
    length = response.headers.get("Content-Length", "").strip()
    if length.isdigit() and int(length) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWKS answer is larger than {MAX_JWKS_BYTES} bytes")


def _freshness(headers: httpx.Headers) -> float | None:
    """How long a JWKS response says it may be cached, in seconds; None if it does not say.

    Its `Cache-Control` `max-age` (`no-store` / `no-cache`: not at all) less its `Age` (the
    time it already spent in a shared cache on the way), as a private cache would keep it
    (RFC 9111 §4.2). A directive that does not parse says nothing.
    """
    lifetime: float | None = None
    for directive in ",".join(headers.get_list("Cache-Control")).split(","):
        match = _DIRECTIVE.fullmatch(directive)
        if match is None:
            continue
        name, value = match.group(1).lower(), (match.group(2) or "").strip()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age" and _SECONDS.fullmatch(value):
            lifetime = float(value) if lifetime is None else min(lifetime, float(value))
    if lifetime is None:
        return None
    age = headers.get("Age", "").strip()
    return max(0.0, lifetime - float(age)) if _SECONDS.fullmatch(age) else lifetime


def _short(value: object, limit: int = 40) -> str:
    # Header values come from the token's author: keep them short in messages.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _claim(token: str, name: str) -> str:
    """A claim of a token whose signature verified (so one of the issuer's), for a message.

    Named so that a verifier set up with another issuer or audience than the service's
    (a trailing slash, http for https) says what to change.
    """
    try:
        value = jwt.decode(token, options={"verify_signature": False}).get(name)
    except jwt.PyJWTError:  # pragma: no cover - it was decoded a moment ago
        value = None
    return _short(value, 200)


class TokenVerifier:
    """Verify access tokens against the issuer's JWKS, optionally confirming by introspection.

    The JWKS is cached for as long as its ``Cache-Control: max-age`` says (the service
    says 60 seconds), at most ``jwks_ttl`` seconds, so a key the issuer withdrew is not
    trusted for longer than it intends. It is fetched again at once for an unknown
    ``kid`` (a rotated key), but never more often than every ``jwks_refetch_interval``
    seconds, so a flood of junk tokens cannot turn into a flood of JWKS requests. Key
    URLs in token headers (``jku``, ``jwk``, ``x5u``) are ignored: keys come only from
    ``jwks_url``, and never a symmetric key or one published with its private part. A
    JWKS answer over ``MAX_JWKS_BYTES`` or slower than ``timeout`` in all is given up on.

    With ``introspect_url``, every verification also asks the issuer whether the token is
    still active (RFC 7662), which catches revoked keys before the token expires.
    ``introspect_token`` authenticates that call: a Bearer token string, or better an
    ``httpx.Auth`` such as ``KeyServiceAuth`` for a key holding the ``introspect`` scope.
    """

    def __init__(
        self,
        jwks_url: str,
        issuer: str,
        audience: str,
        *,
        algorithms: Iterable[str] = ("ES256",),
        leeway: float = 30,
        introspect_url: str | None = None,
        introspect_token: str | httpx.Auth | None = None,
        jwks_ttl: float = 300,
        jwks_refetch_interval: float = 10,
        timeout: float = 5.0,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
    ) -> None:
        leeway = seconds_option("leeway", leeway, zero=True)
        jwks_ttl = seconds_option("jwks_ttl", jwks_ttl)
        jwks_refetch_interval = seconds_option(
            "jwks_refetch_interval", jwks_refetch_interval, zero=True
        )
        timeout = seconds_option("timeout", timeout)
        if introspect_url is not None and introspect_token is None:
            raise ValueError("introspect_url needs introspect_token (the introspect scope)")
        if plain_http_off_host(jwks_url):
            # Whoever can alter the JWKS in transit can sign tokens this verifier accepts.
            logger.warning(
                "JWKS URL %s is plain HTTP: its keys could be swapped in transit",
                shown_url(jwks_url),
            )
        if introspect_url is not None and plain_http_off_host(introspect_url):
            logger.warning(
                "introspection URL %s is plain HTTP: tokens would cross the network unencrypted",
                shown_url(introspect_url),
            )
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.algorithms = _check_algorithms(algorithms)
        self.leeway = leeway
        self.introspect_url = introspect_url
        self._introspect_credential = introspect_token
        self.jwks_ttl = jwks_ttl
        self.jwks_refetch_interval = jwks_refetch_interval
        self._timeout = timeout
        self._http_client = http_client
        self._async_http_client = async_http_client
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful JWKS fetch (elapsed())
        self._max_age: float | None = None  # how long that JWKS said it may be cached
        self._attempted_at: float | None = None  # last fetch attempt, for the rate limit
        self._last_fetch_failed = False
        self._lock = threading.Lock()
        # The thread whose event loop holds _lock across an await (a JWKS fetch), if one does.
        self._async_holder: int | None = None
        # An asyncio.Lock belongs to one event loop: keep one per loop, made on first use.
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
        self._async_locks = weakref.WeakKeyDictionary()
        self._async_locks_guard = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(jwks_url={shown_url(self.jwks_url)!r}, issuer={self.issuer!r}, "
            f"audience={self.audience!r}, algorithms={self.algorithms!r})"
        )

    # -- public API ---------------------------------------------------------------------

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid access token; raise InvalidTokenError otherwise."""
        header = self._check_header(token)
        key = self._sync_key(header["kid"])
        claims = self._decode(token, key, header["alg"])
        if self.introspect_url is not None:
            self._sync_introspect(token)
        return claims

    async def averify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid access token; raise InvalidTokenError otherwise."""
        header = self._check_header(token)
        key = await self._async_key(header["kid"])
        claims = self._decode(token, key, header["alg"])
        if self.introspect_url is not None:
            await self._async_introspect(token)
        return claims

    # -- checks that need no key --------------------------------------------------------

    def _check_header(self, token: str) -> dict[str, Any]:
        if not isinstance(token, str) or not token.strip():
            raise InvalidTokenError("no token given")
        if token.startswith("ksk_"):
            raise InvalidTokenError(
                "an API key was given where an access token is expected; "
                "exchange the key at the token endpoint and send the access token"
            )
        if token.startswith("ksr_"):
            raise InvalidTokenError(
                "a refresh token was given where an access token is expected; "
                "refresh tokens are only for the token endpoint"
            )
        if token[:7].lower() == "bearer ":
            raise InvalidTokenError("give the token without the 'Bearer ' prefix")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidTokenError("malformed token: not a signed JWT") from None
        except jwt.PyJWTError as exc:
            # e.g. an unsupported critical header extension (RFC 7515 §4.1.11).
            raise InvalidTokenError(f"unacceptable token header: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidTokenError(f"signing algorithm {_short(alg)} is not accepted")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES:
            raise InvalidTokenError(f"token type {_short(typ)} is not an access token (at+jwt)")
        if "crit" in header:
            # RFC 7515 §4.1.11: critical extensions we do not implement must be refused.
            raise InvalidTokenError("token uses critical header extensions")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidTokenError("token has no key id (kid)")
        return header

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError(f"token has expired{self._skew(token, 'exp', 'ago')}") from None
        except jwt.ImmatureSignatureError as exc:
            # PyJWT names the claim: "The token is not yet valid (iat)" or "(nbf)".
            name = "nbf" if "(nbf)" in str(exc) else "iat"
            raise InvalidTokenError(
                f"token is not valid yet: its {name!r} is in the future"
                f"{self._skew(token, name, 'ahead')}; check this machine's clock and the "
                "service's"
            ) from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError(
                f"token is meant for audience {_claim(token, 'aud')}, not {self.audience!r} "
                "(the verifier's audience: the service's KEYSERVICE_AUDIENCE)"
            ) from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError(
                f"token comes from issuer {_claim(token, 'iss')}, not {self.issuer!r} "
                "(the verifier's issuer: the service's KEYSERVICE_ISSUER)"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidTokenError(f"token lacks the required {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("token signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidTokenError("token algorithm does not match its signing key") from None
        except jwt.PyJWTError as exc:
            # PyJWT's messages describe the defect, never the token itself.
            raise InvalidTokenError(f"invalid token: {exc}") from None
        for claim in ("sub", "jti"):
            if not isinstance(claims[claim], str):
                raise InvalidTokenError(f"token claim {claim!r} is not a string")
        for claim in ("exp", "iat", "nbf"):
            # PyJWT takes "9999999999" (a string) for a time; RFC 7519 §2 says a JSON number.
            value = claims.get(claim, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidTokenError(f"token claim {claim!r} is not a number of seconds")
        if not isinstance(claims.get("scope", ""), str):
            raise InvalidTokenError("token claim 'scope' is not a space-separated string")
        return claims

    def _skew(self, token: str, name: str, direction: str) -> str:
        """How far the (verified) token's time claim is from this machine's clock, for a message.

        A clock set wrong shows as tokens that expired long ago or are not valid yet.
        """
        try:
            value = jwt.decode(token, options={"verify_signature": False}).get(name)
        except jwt.PyJWTError:  # pragma: no cover - it was decoded a moment ago
            value = None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return ""
        seconds = abs(value - time.time())
        return f" ({seconds:.0f} s {direction} by this machine's clock; leeway {self.leeway:g} s)"

    # -- JWKS cache ------------------------------------------------------------------------

    def _lookup(self, kid: str) -> tuple[jwt.PyJWK | None, bool]:
        """Return the cached key for kid and whether a JWKS fetch should happen now."""
        now = elapsed()
        key = self._keys.get(kid)
        ttl = self.jwks_ttl if self._max_age is None else min(self.jwks_ttl, self._max_age)
        fresh = self._fetched_at is not None and now - self._fetched_at < ttl
        if key is not None and fresh:
            return key, False
        may_fetch = (
            self._attempted_at is None or now - self._attempted_at >= self.jwks_refetch_interval
        )
        return key, may_fetch

    def _sync_key(self, kid: str) -> jwt.PyJWK:
        key, fetch = self._lookup(kid)
        if key is not None and not fetch:
            return key
        # A kid not in the cache waits for a fetch already in flight (on a cold cache, or
        # after a rotation, it may bring that very key) rather than being judged without it.
        if not self._lock.acquire(blocking=False):
            if self._async_holder == threading.get_ident():
                if key is not None:
                    return key  # known, if not fresh: fine while the task refreshes it
                raise RuntimeError(
                    "verify() needs the JWKS while a task of this thread's event loop is "
                    "fetching it; waiting would block that event loop for good. In async "
                    "code, use averify()"
                )
            self._lock.acquire()
        try:
            key, fetch = self._lookup(kid)
            if fetch:
                self._attempted_at = elapsed()
                try:
                    self._store(*self._sync_get_jwks())
                except (httpx.HTTPError, ValueError) as exc:
                    self._fetch_failed(exc, stale_key=key)
                key = self._keys.get(kid)
        finally:
            self._lock.release()
        return self._known(key)

    async def _async_key(self, kid: str) -> jwt.PyJWK:
        key, fetch = self._lookup(kid)
        if key is not None and not fetch:
            return key
        async with self._async_lock():
            # Keep threads and other loops out too (and wait for their fetch in flight), so
            # the rate limit holds for all; polling rather than a blocking acquire keeps the
            # event loop running.
            while not self._lock.acquire(blocking=False):
                await asyncio.sleep(0.005)
            self._async_holder = threading.get_ident()
            try:
                key, fetch = self._lookup(kid)
                if fetch:
                    self._attempted_at = elapsed()
                    try:
                        self._store(*await self._async_get_jwks())
                    except (httpx.HTTPError, ValueError) as exc:
                        self._fetch_failed(exc, stale_key=key)
                    key = self._keys.get(kid)
            finally:
                self._async_holder = None
                self._lock.release()
        return self._known(key)

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._async_locks_guard:
            lock = self._async_locks.get(loop)
            if lock is None:
                lock = self._async_locks[loop] = asyncio.Lock()
            return lock

    def _known(self, key: jwt.PyJWK | None) -> jwt.PyJWK:
        if key is not None:
            return key
        if self._fetched_at is None:
            raise VerifierUnavailableError("the JWKS could not be fetched yet")
        if self._last_fetch_failed:
            # Until a fetch succeeds again, an unknown kid may be a new key we cannot see:
            # the same answer as at the failed fetch, not "invalid" until the next attempt.
            raise VerifierUnavailableError("the JWKS could not be fetched")
        raise InvalidTokenError("token is signed with an unknown key (kid)")

    def _fetch_failed(self, exc: Exception, *, stale_key: jwt.PyJWK | None) -> None:
        # An HTTPStatusError's message repeats the URL in full: the status says enough.
        reason = (
            f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else exc
        )
        logger.warning("fetching the JWKS from %s failed: %s", shown_url(self.jwks_url), reason)
        self._last_fetch_failed = True
        if stale_key is None:
            # Not the token's fault: a new key may be in use that we cannot see.
            raise VerifierUnavailableError("the JWKS could not be fetched") from None
        # A key we already trusted stays usable while the JWKS endpoint is down.

    def _store(self, document: Any, max_age: float | None) -> None:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("the JWKS document has no 'keys' list")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            # A symmetric key in a public JWKS is a misconfiguration, never a signing key.
            if entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
                continue
            if _PRIVATE_MEMBERS & entry.keys():
                # A published private key lets anyone sign tokens with it: never trusted.
                logger.warning(
                    "the JWKS at %s publishes private key material for kid %s; that key "
                    "is not used, and the issuer should replace it",
                    shown_url(self.jwks_url),
                    _short(entry["kid"]),
                )
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type this PyJWT cannot use; the others still work
            if key.algorithm_name in self.algorithms:
                keys[entry["kid"]] = key
        self._keys = keys
        self._fetched_at = elapsed()
        self._max_age = max_age
        self._last_fetch_failed = False

    def _sync_get_jwks(self) -> tuple[Any, float | None]:
        # Streamed, so that an answer too large or too slow is given up on while it comes.
        deadline = elapsed() + self._timeout
        if self._http_client is not None:
            with self._http_client.stream("GET", self.jwks_url, follow_redirects=False) as response:
                return self._sync_read_jwks(response, deadline)
        with (
            httpx.Client(timeout=self._timeout) as client,
            client.stream("GET", self.jwks_url) as response,
        ):
            return self._sync_read_jwks(response, deadline)

    async def _async_get_jwks(self) -> tuple[Any, float | None]:
        deadline = elapsed() + self._timeout
        if self._async_http_client is not None:
            async with self._async_http_client.stream(
                "GET", self.jwks_url, follow_redirects=False
            ) as response:
                return await self._async_read_jwks(response, deadline)
        async with (
            httpx.AsyncClient(timeout=self._timeout) as client,
            client.stream("GET", self.jwks_url) as response,
        ):
            return await self._async_read_jwks(response, deadline)

    def _sync_read_jwks(
        self, response: httpx.Response, deadline: float
    ) -> tuple[Any, float | None]:
        response.raise_for_status()
        _check_jwks_length(response)
        body = bytearray()
        for chunk in response.iter_bytes():
            self._add_jwks_chunk(body, chunk, deadline)
        return json.loads(body), _freshness(response.headers)

    async def _async_read_jwks(
        self, response: httpx.Response, deadline: float
    ) -> tuple[Any, float | None]:
        response.raise_for_status()
        _check_jwks_length(response)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            self._add_jwks_chunk(body, chunk, deadline)
        return json.loads(body), _freshness(response.headers)

    def _add_jwks_chunk(self, body: bytearray, chunk: bytes, deadline: float) -> None:
        # httpx's timeout bounds each read, not the whole answer: one that trickles in a
        # byte at a time would hold the JWKS lock (and the requests waiting on it) for good.
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"the JWKS answer is larger than {MAX_JWKS_BYTES} bytes")
        if elapsed() > deadline:
            raise ValueError(f"the JWKS answer took longer than {self._timeout:g} s")

    # -- introspection (RFC 7662) ----------------------------------------------------------

    def _introspect_request(self, token: str) -> dict[str, Any]:
        assert self.introspect_url is not None
        credential = self._introspect_credential
        headers = {"Accept": "application/json"}
        if isinstance(credential, str):
            headers["Authorization"] = f"Bearer {credential}"
        return {
            "url": self.introspect_url,
            "data": {"token": token, "token_type_hint": "access_token"},
            "headers": headers,
            # None replaces any auth configured on a caller-supplied client.
            "auth": credential if isinstance(credential, httpx.Auth) else None,
            # A caller's client may follow redirects: a 307 would resend the token elsewhere.
            "follow_redirects": False,
        }

    def _sync_introspect(self, token: str) -> None:
        request = self._introspect_request(token)
        try:
            if self._http_client is not None:
                response = self._http_client.post(**request)
            else:
                with httpx.Client(timeout=self._timeout) as client:
                    response = client.post(**request)
        except (httpx.HTTPError, TokenExchangeError) as exc:
            raise _introspection_failed(exc) from None
        self._check_introspection(response)

    async def _async_introspect(self, token: str) -> None:
        request = self._introspect_request(token)
        try:
            if self._async_http_client is not None:
                response = await self._async_http_client.post(**request)
            else:
                async with httpx.AsyncClient(timeout=self._timeout) as client:
                    response = await client.post(**request)
        except (httpx.HTTPError, TokenExchangeError) as exc:
            raise _introspection_failed(exc) from None
        self._check_introspection(response)

    @staticmethod
    def _check_introspection(response: httpx.Response) -> None:
        if response.status_code != 200:
            raise VerifierUnavailableError(
                f"introspection endpoint answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
        except ValueError:
            raise VerifierUnavailableError("introspection endpoint answered non-JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise VerifierUnavailableError("introspection answer has no 'active' flag")
        if not body["active"]:
            raise InvalidTokenError("token is no longer active (revoked, or its owner disabled)")


def _introspection_failed(exc: Exception) -> VerifierUnavailableError:
    if isinstance(exc, TokenExchangeError):
        # introspect_token is a KeyServiceAuth whose key the token endpoint refused: a
        # configuration problem on this side, not a verdict on the token.
        return VerifierUnavailableError(
            f"introspection failed: the token endpoint refused introspect_token ({exc.error})"
        )
    return VerifierUnavailableError(f"introspection failed: {type(exc).__name__}")


def _quoted(text: str) -> str:
    # A quoted-string in WWW-Authenticate (RFC 7235 §2.1): no quotes, backslashes or CTLs.
    return _HEADER_UNSAFE.sub("'", text)[:200]


def require_scopes(
    verifier: TokenVerifier, *scopes: str
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Return a FastAPI dependency that checks the Bearer token and scopes, giving the claims.

    Missing token: 401 ``WWW-Authenticate: Bearer``; bad token: 401 with
    ``error="invalid_token"``; missing scope: 403 with ``error="insufficient_scope"`` and
    the scopes the route needs (RFC 6750 §3). Scopes are compared literally: a token
    holding ``admin`` does not thereby hold a deployment's own scopes.
    """
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    needed = tuple(dict.fromkeys(name for scope in scopes for name in scope.split()))
    bearer = HTTPBearer(
        auto_error=False,
        bearerFormat="JWT",
        description="An access token from the keyservice token endpoint.",
    )

    async def dependency(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> dict[str, Any]:
        if credentials is None:
            raise HTTPException(
                status_code=401,
                detail="an access token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            claims = await verifier.averify(credentials.credentials)
        except InvalidTokenError as exc:
            description = _quoted(str(exc))
            raise HTTPException(
                status_code=401,
                detail={"error": "invalid_token", "error_description": description},
                headers={
                    "WWW-Authenticate": (
                        f'Bearer error="invalid_token", error_description="{description}"'
                    )
                },
            ) from None
        except VerifierUnavailableError:
            raise HTTPException(
                status_code=503,
                detail="token verification is temporarily unavailable",
                headers={"Retry-After": "5"},
            ) from None
        granted = set(claims.get("scope", "").split())
        missing = [name for name in needed if name not in granted]
        if missing:
            raise HTTPException(
                status_code=403,
                detail={
                    "error": "insufficient_scope",
                    "error_description": f"the token lacks scope {' '.join(missing)}",
                },
                headers={
                    "WWW-Authenticate": (
                        f'Bearer error="insufficient_scope", scope="{_quoted(" ".join(needed))}"'
                    )
                },
            )
        return claims

    return dependency
