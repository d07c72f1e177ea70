"""Access tokens: RFC 9068 JWTs signed with keys kept in the database.

Private keys are stored encrypted (AES-256-GCM, key derived from the server secret), so
every replica signs and verifies with the same keys. Loaded key objects are kept in memory:
parsing a PEM per request would cost more than signing (PERF-NOTES).

A rotated-in key is published first and signs only later (SIGNING_KEY_ACTIVATION_SECONDS):
a resource server that cached the JWKS just before the rotation must not meet a `kid` it
does not know. Rotation stores the handover as the old key's `retired_at`, in the future;
the signing key is the oldest key not retired yet (`signing_order`), so every replica
switches at the same moment, from what it has already loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

import jwt
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.audit import service as audit
from keyservice.auth.models import SigningKey
from keyservice.database import utcnow
from keyservice.security.tokens import looks_like_api_key

ACCESS_TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti"]
_VERIFIED_CACHE_SIZE = 10_000

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


T = TypeVar("T")
_JWS = jwt.PyJWS()


class _Verified:
    """A verified token's claims, until when it is honoured, and what a caller built from
    them (verify_as)."""

    __slots__ = ("build", "built", "claims", "until")

    def __init__(self, claims: dict[str, Any], until: int) -> None:
        self.claims = claims
        self.until = until
        self.build: Callable[[dict[str, Any]], Any] | None = None
        self.built: Any = None


class WrongSecretError(Exception):
    """The stored signing keys were encrypted under another server secret."""


class TokenError(Exception):
    """A presented access token cannot be accepted; the message is safe to show."""


class UnknownKeyError(TokenError):
    """Signed with a `kid` this process has not loaded (maybe another replica's new key)."""


_RELOAD_INTERVAL = 5.0
# How long a client may cache /.well-known/jwks.json (its Cache-Control max-age).
JWKS_MAX_AGE_SECONDS = 60
# How often each process re-reads the signing keys (NOTIFY makes it immediate on PostgreSQL).
SIGNING_KEY_RELOAD_SECONDS = 5
# How long a rotated-in key is published before it signs: every replica has reloaded and
# served it (reload), every JWKS cached before that has expired (max-age), with a margin
# for clock skew between hosts and a slow reload.
SIGNING_KEY_ACTIVATION_SECONDS = JWKS_MAX_AGE_SECONDS + SIGNING_KEY_RELOAD_SECONDS + 15
# Any constant: the transactions that add a signing key queue on it (PostgreSQL), so that
# replicas starting together on a new database make one first key, not one each, and two
# rotations at once leave one key to sign after them.
SIGNING_KEY_LOCK = 0x6B73_7369_676E_6B  # "kssignk"
# What the private keys' encryption key is derived for (HKDF info) from the server secret.
SIGNING_KEY_PURPOSE = "keyservice/signing-key-encryption/v1"


class _Dated(Protocol):
    @property
    def kid(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def retired_at(self) -> datetime | None: ...


D = TypeVar("D", bound=_Dated)


def signing_order(keys: Iterable[D], now: datetime) -> list[D]:
    """The keys not retired at `now`, in the order they sign: the first signs now, each next
    one from when the one before it retires (a rotation sets that to the moment the new key
    takes over). On a fresh install the only key signs at once."""
    live = (k for k in keys if k.retired_at is None or k.retired_at > now)
    return sorted(live, key=lambda k: (k.created_at, k.kid))


@dataclass(frozen=True)
class LoadedKey:
    kid: str
    algorithm: str
    private_key: PrivateKey
    public_key: PublicKey
    jwk: dict[str, Any]
    created_at: datetime
    retired_at: datetime | None


async def _current(session: AsyncSession) -> str | None:
    """A key not retired (nor due to retire), if there is one."""
    return await session.scalar(
        select(SigningKey.kid).where(SigningKey.retired_at.is_(None)).limit(1)
    )


async def _queue(session: AsyncSession) -> None:
    """Hold SIGNING_KEY_LOCK until the transaction ends, waiting for it if need be: what is
    read after it includes what the holder before committed. PostgreSQL only: an embedded
    SQLite file has one server, which makes its first key before its workers start."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SIGNING_KEY_LOCK})


def _generate(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_jwk(public_key: PublicKey, algorithm: str, kid: str) -> dict[str, Any]:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


class SigningKeyring:
    """The signing keys of a deployment, cached per process, and the verified-token cache."""

    def __init__(
        self,
        *,
        encryption_key: bytes,
        fallback_key: bytes | None = None,
        algorithm: str,
        issuer: str,
        audience: str,
        access_token_ttl: int,
    ) -> None:
        self._aead = AESGCM(encryption_key)
        # During a rotation of the server secret: the previous secret's key, which opens
        # what was encrypted before; nothing is encrypted under it.
        self._fallback_aead = AESGCM(fallback_key) if fallback_key is not None else None
        # The kids of loaded keys that only the fallback opened (reencrypt() moves them),
        # and the stored form each was read in.
        self.under_fallback: set[str] = set()
        self._read_under_fallback: dict[str, bytes] = {}
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self.access_token_ttl = access_token_ttl
        self._keys: dict[str, LoadedKey] = {}
        self._current: LoadedKey | None = None
        # When `_current` retires (Unix seconds): issue() looks for the next key from then.
        self._handover = float("inf")
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        self._last_reload = 0.0
        # The reload an unknown `kid` started, while it runs (reload_for_unknown_kid).
        self._kid_reload: asyncio.Future[None] | None = None

    @property
    def published_after_retirement(self) -> timedelta:
        """How long a retired key stays published: until every token it signed expired."""
        return timedelta(seconds=self.access_token_ttl + 60)

    # Storage -------------------------------------------------------------------------

    def _seal(self, kid: str, private_key: PrivateKey) -> bytes:
        """The stored form of a private key: PKCS#8 DER, encrypted under the current
        secret with the kid as associated data."""
        der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, der, kid.encode())

    def open(self, kid: str, blob: bytes) -> tuple[bytes, bool]:
        """Decrypt a stored private key: its DER, and whether only the fallback opened it."""
        for aead, fallback in ((self._aead, False), (self._fallback_aead, True)):
            if aead is None:
                continue
            try:
                return aead.decrypt(blob[:12], blob[12:], kid.encode()), fallback
            except InvalidTag:
                pass
        # Not a corrupt row: a replica or command started with another secret. Said as
        # such, so that it is never "fixed" by making a key under the wrong secret.
        if self._fallback_aead is None:
            said = "this server secret: it is not the secret this database was set up with"
        else:
            said = (
                "this server secret nor its fallback (KEYSERVICE_SECRET_KEY_FALLBACK): "
                "neither is a secret this database was set up with"
            )
        raise WrongSecretError(
            f"the signing key {kid} in the database cannot be decrypted with {said}"
        )

    async def reencrypt(self, session: AsyncSession) -> list[str]:
        """Store the loaded keys that only the fallback secret opened under the current
        one (not committed); return the kids of those this call moved. A key another
        worker or replica moved since it was read here is left as that one stored it (and
        not returned): the first server started with the new secret moves each key, once.
        Replicas still holding the old copies decrypt nothing again until they reload, and
        then find these under the current secret."""
        moved, done = [], []
        for kid in sorted(self.under_fallback):
            loaded = self._keys.get(kid)
            read = self._read_under_fallback.get(kid)
            if loaded is None or read is None:
                continue
            result = await session.execute(
                update(SigningKey)
                .where(SigningKey.kid == kid, SigningKey.private_key_encrypted == read)
                .values(private_key_encrypted=self._seal(kid, loaded.private_key))
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0):
                moved.append(kid)
            done.append(kid)
        self.under_fallback.difference_update(done)
        return moved

    async def create_key(
        self,
        session: AsyncSession,
        *,
        retire_current: bool,
        delay: float = SIGNING_KEY_ACTIVATION_SECONDS,
    ) -> str:
        """Store a new key, published at once; with `retire_current`, it takes over signing
        `delay` seconds from now: the keys not retired by then retire then (not committed).

        A retirement already due sooner is kept: a second rotation before the first took
        over lets the first new key sign in between, and `delay=0` (a compromised key)
        retires every other key at once.
        """
        await _queue(session)
        private_key = _generate(self.algorithm)
        kid = uuid.uuid4().hex
        now = utcnow()
        if retire_current:
            handover = now + timedelta(seconds=delay)
            await session.execute(
                update(SigningKey)
                .where(SigningKey.retired_at.is_(None) | (SigningKey.retired_at > handover))
                .values(retired_at=handover)
            )
        session.add(
            SigningKey(
                kid=kid,
                algorithm=self.algorithm,
                private_key_encrypted=self._seal(kid, private_key),
                public_jwk=_public_jwk(private_key.public_key(), self.algorithm, kid),
                created_at=now,
            )
        )
        await session.flush()
        return kid

    async def ensure_key(self, session: AsyncSession) -> None:
        """Create the first key of a new deployment, then load the keyring."""
        if await _current(session) is None:
            await _queue(session)
            # Read again once in turn: another replica may have made it meanwhile.
            if await _current(session) is None:
                kid = await self.create_key(session, retire_current=False)
                # Key material came to be: on record, as a rotation is (the kid is public).
                audit.record(
                    session,
                    type="signing_key.created",
                    actor="server",
                    reason=f"first signing key {kid}; signs at once",
                )
            await session.commit()
        await self.load(session)

    async def load(self, session: AsyncSession) -> None:
        """Read every published key; decrypt each private key once."""
        horizon = utcnow() - self.published_after_retirement
        rows = (
            await session.scalars(
                select(SigningKey).where(
                    (SigningKey.retired_at.is_(None)) | (SigningKey.retired_at > horizon)
                )
            )
        ).all()
        keys: dict[str, LoadedKey] = {}
        for row in rows:
            known = self._keys.get(row.kid)
            if known is not None and known.retired_at == row.retired_at:
                keys[row.kid] = known
                continue
            der, fallback = self.open(row.kid, row.private_key_encrypted)
            if fallback:
                self.under_fallback.add(row.kid)
                self._read_under_fallback[row.kid] = row.private_key_encrypted
            else:
                self.under_fallback.discard(row.kid)
                self._read_under_fallback.pop(row.kid, None)
            private_key = serialization.load_der_private_key(der, password=None)
            assert isinstance(private_key, PrivateKey)
            keys[row.kid] = LoadedKey(
                kid=row.kid,
                algorithm=row.algorithm,
                private_key=private_key,
                public_key=private_key.public_key(),
                jwk=row.public_jwk,
                created_at=row.created_at,
                retired_at=row.retired_at,
            )
        self._keys = keys
        self._choose(time.time())
        self._last_reload = time.monotonic()

    def _choose(self, now: float) -> None:
        """Pick the signing key as of `now` and note when it hands over."""
        order = signing_order(self._keys.values(), datetime.fromtimestamp(now, UTC))
        self._current = order[0] if order else None
        retires = self._current.retired_at if self._current is not None else None
        self._handover = retires.timestamp() if retires is not None else float("inf")

    # Tokens --------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk for k in sorted(self._keys.values(), key=lambda k: k.kid)]}

    @property
    def current_kid(self) -> str | None:
        """The `kid` issue() signs with now."""
        if time.time() >= self._handover:
            self._choose(time.time())
        return self._current.kid if self._current else None

    def reload_allowed(self) -> bool:
        """Rate-limit reloads caused by unknown `kid`s, so junk tokens cannot hammer the DB."""
        return time.monotonic() - self._last_reload >= _RELOAD_INTERVAL

    async def reload_for_unknown_kid(self, load: Callable[[], Awaitable[None]]) -> bool:
        """Reload the keys (`load`) because a token names a `kid` not loaded: another
        replica's new key, or junk. False if the rate limit refuses it.

        One reload at a time: requests meeting an unknown `kid` while one runs wait for it
        rather than each starting their own (the rate limit is only checked, and
        `_last_reload` only set, around a whole reload, so a concurrent burst of junk
        tokens passed the check together and read the keys once each).
        """
        running = self._kid_reload
        if running is None:
            if not self.reload_allowed():
                return False
            running = self._kid_reload = asyncio.ensure_future(load())
            running.add_done_callback(self._kid_reload_done)
        await asyncio.shield(running)  # a waiter going away does not cancel it for the rest
        return True

    def _kid_reload_done(self, done: asyncio.Future[None]) -> None:
        if self._kid_reload is done:
            self._kid_reload = None

    def issue(
        self, claims: dict[str, Any], *, now: int | None = None, until: int | None = None
    ) -> tuple[str, int]:
        """Sign an access token; return it with its `exp`: the TTL from now, or `until`
        (Unix seconds, after `now`) if that is sooner."""
        iat = int(time.time()) if now is None else now
        if iat >= self._handover:  # the loaded keys say when; no database read
            self._choose(iat)
        key = self._current
        if key is None:
            raise RuntimeError("no signing key loaded")
        exp = iat + self.access_token_ttl
        if until is not None:
            exp = min(exp, until)
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": iat,
            "exp": exp,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        # PyJWT's JWS layer with the claims serialized by orjson: jwt.encode() would copy
        # them, look for datetimes and run the stdlib encoder (~8 of its ~64 us here; the
        # claims are ints and strings already). PyJWT still builds and signs the JWS.
        token = _JWS.encode(
            orjson.dumps(payload),
            key.private_key,
            algorithm=key.algorithm,
            headers={"typ": ACCESS_TOKEN_TYPE, "kid": key.kid},
        )
        return token, exp

    def verify(self, token: str) -> dict[str, Any]:
        """Verify one of our access tokens (RFC 9068 §4); raise TokenError with a safe reason.

        No leeway: the service applies none to its own tokens (API.md). A token lives until
        its `exp` or for the current access-token TTL from its `iat`, whichever is first:
        a TTL shortened since it was issued shortens its life too. That is what shortening
        it means, and the revocation view only remembers a revocation for about one current
        TTL: a longer-lived token would outlive the memory of its key's or family's.
        """
        return self._verified_entry(token).claims

    def honoured_until(self, claims: Mapping[str, Any]) -> int:
        """When a verified token stops being honoured (Unix seconds): its `exp`, or the
        current access-token TTL from its `iat` if that is earlier (verify). What
        `/introspect` reports as `exp`, so that a resource server caching its answer until
        then does not outlive the service's own refusal."""
        return min(int(claims["exp"]), int(claims["iat"]) + self.access_token_ttl)

    def verify_as(self, token: str, build: Callable[[dict[str, Any]], T]) -> T:
        """verify(), then `build(claims)`, kept with the verification for the next time.

        `build` must depend on nothing but the claims (the caller's view of a token, built
        once per token instead of once per request); what changes after signing, such as
        revocation, the caller checks every time.
        """
        entry = self._verified_entry(token)
        if entry.build is not build:
            entry.built = build(entry.claims)
            entry.build = build
        return cast(T, entry.built)

    def _verified_entry(self, token: str) -> _Verified:
        digest = hashlib.blake2b(token.encode(), digest_size=20).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            if cached.until > time.time():
                return cached
            del self._verified[digest]
        claims = self._verify_uncached(token)
        until = self.honoured_until(claims)
        if until <= time.time():  # as PyJWT's `exp` check, with no leeway
            raise TokenError("The access token has expired.")
        entry = _Verified(claims, until)
        self._verified[digest] = entry
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return entry

    def _verify_uncached(self, token: str) -> dict[str, Any]:
        if looks_like_api_key(token):
            raise TokenError(
                "An API key is not an access token: exchange it at /token and send the "
                "access_token it returns."
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("The access token is malformed.") from None
        typ = str(header.get("typ", "")).lower()
        if typ not in (ACCESS_TOKEN_TYPE, "application/" + ACCESS_TOKEN_TYPE):
            raise TokenError("The token is not an access token (typ must be at+jwt).")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise UnknownKeyError("The access token was not signed by a key of this service.")
        if header.get("alg") != key.algorithm:
            raise TokenError("The access token uses an algorithm this service does not accept.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=0,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("The access token has expired.") from None
        except jwt.PyJWTError:
            raise TokenError("The access token is invalid.") from None
        if (
            not isinstance(claims.get("sub"), str)
            or not isinstance(claims.get("exp"), int)
            or not isinstance(claims.get("iat"), int)
        ):
            raise TokenError("The access token is invalid.")
        return claims

    def forget_verified(self) -> None:
        """Drop the verified-token cache (revocation is checked after it anyway)."""
        self._verified.clear()
