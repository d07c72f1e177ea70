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


class SecretHasher:
    """HMAC-SHA256 under the server pepper, compared in constant time."""

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper
        self._dummy = self.hash("dummy-" + secrets.token_hex(16))

    def hash(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def verify(self, secret: str, stored: str | None) -> bool:
        """Return whether `secret` matches `stored`; with no stored hash, do the same work."""
        computed = self.hash(secret)
        return hmac.compare_digest(computed, stored if stored is not None else self._dummy) and (
            stored is not None
        )


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
