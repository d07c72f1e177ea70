"""Secret hashing: peppered HMAC for high-entropy secrets, argon2 (passlib) for passwords.

API-key secrets and refresh tokens carry 256 random bits, so a keyed HMAC-SHA256 is as
strong as a slow hash against guessing while costing microseconds; the pepper lives only
in the server secret, so a database dump alone cannot be checked offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from passlib.context import CryptContext

_PASSWORDS = CryptContext(schemes=["argon2"], deprecated="auto")
# Legacy imports may bring bcrypt or argon2 hashes of whole key strings.
LEGACY_KEYS = CryptContext(schemes=["argon2", "bcrypt"], deprecated="auto")
# Verified against when a username is unknown, so both cases cost the same.
_DUMMY_PASSWORD_HASH = _PASSWORDS.hash(secrets.token_urlsafe(16))


# Password hashes run on a small pool of their own, never on the event loop nor on
# asyncio's default executor (up to cores + 4 threads). argon2 as configured here holds
# 64 MiB per hash for its duration: twelve concurrent checks took a process from 96 to
# 416 MB peak through asyncio.to_thread, and on two cores more threads only share the
# same CPU. With two threads a burst of sign-ins queues here instead, costing at most
# 2 x 64 MiB per process. The queue is not a limit on requests (the throttle is).
SLOW_HASH_THREADS = 2
_slow_pool: ThreadPoolExecutor | None = None
_slow_jobs = 0
_T = TypeVar("_T")


async def run_slow_hash(func: Callable[..., _T], *args: object) -> _T:
    """Run a slow hash (argon2, bcrypt) on the bounded hashing pool, off the event loop."""
    global _slow_pool, _slow_jobs
    if _slow_pool is None:
        _slow_pool = ThreadPoolExecutor(SLOW_HASH_THREADS, thread_name_prefix="keyservice-hash")
    _slow_jobs += 1
    return await asyncio.get_running_loop().run_in_executor(_slow_pool, func, *args)


def slow_hash_jobs() -> int:
    """How many jobs run_slow_hash has been given in this process (for tests)."""
    return _slow_jobs


def derive_key(server_secret: bytes, purpose: str, length: int = 32) -> bytes:
    """Derive an independent key for one purpose from the server secret (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode())
    return hkdf.derive(server_secret)


def secret_label(server_secret: bytes) -> str:
    """A public name for a server secret (16 hex characters, HKDF-derived): stored beside
    the HMACs made under it, so that a rotation can count what still needs the old one."""
    return derive_key(server_secret, "keyservice/secret-label/v1", 8).hex()


PEPPER_PURPOSE = "keyservice/api-key-pepper/v1"


class SecretHasher:
    """HMAC-SHA256 under the server pepper, compared in constant time.

    During a rotation of the server secret it also knows the previous secret's pepper (the
    fallback): a stored HMAC made under it still verifies (`match` says so, so that the
    caller can store the current one), and lookups try its HMAC after the current one's.
    Nothing new is hashed under the fallback.
    """

    def __init__(self, server_secret: bytes, fallback: bytes | None = None) -> None:
        self._pepper = derive_key(server_secret, PEPPER_PURPOSE)
        self.label = secret_label(server_secret)
        self._fallback = derive_key(fallback, PEPPER_PURPOSE) if fallback is not None else None
        self.fallback_label = secret_label(fallback) if fallback is not None else None
        self._dummy = self.hash("dummy-" + secrets.token_hex(16))

    def hash(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def lookups(self, secret: str) -> list[str]:
        """The HMACs a stored row may hold for `secret`: the current one first."""
        found = [self.hash(secret)]
        if self._fallback is not None:
            found.append(hmac.new(self._fallback, secret.encode(), hashlib.sha256).hexdigest())
        return found

    def match(self, secret: str, stored: str | None) -> str | None:
        """Which secret `stored` was made under, if it is the HMAC of `secret`: this
        hasher's `label` or `fallback_label`; None if it matches neither. With no stored
        hash, the same work is done."""
        computed = self.lookups(secret)
        if stored is None:
            for digest in computed:
                hmac.compare_digest(digest, self._dummy)
            return None
        if hmac.compare_digest(computed[0], stored):
            return self.label
        if len(computed) > 1 and hmac.compare_digest(computed[1], stored):
            return self.fallback_label
        return None

    def verify(self, secret: str, stored: str | None) -> bool:
        """Return whether `secret` matches `stored` (under either secret)."""
        return self.match(secret, stored) is not None


def hash_password(password: str) -> str:
    return str(_PASSWORDS.hash(password))


def verify_password(password: str, stored: str | None) -> bool:
    """Check a password; for an unknown user verify against a dummy hash (same cost)."""
    if stored is None:
        _PASSWORDS.verify(password, _DUMMY_PASSWORD_HASH)
        return False
    try:
        return bool(_PASSWORDS.verify(password, stored))
    except (ValueError, TypeError):
        return False
