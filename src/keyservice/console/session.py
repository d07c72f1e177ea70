"""The console session: an encrypted, authenticated cookie, so any worker can read it.

The cookie holds the principal id (None before sign-in), an expiry, a CSRF secret, a
random session id and a fingerprint of the user's password hash at sign-in, sealed with
AES-GCM under a key derived from the server secret. Any worker and replica can open it,
and sessions survive restarts. The session is short (an hour, never extended), and every
request re-reads the principal: disabled users and lost permissions take effect at once,
a session signed in before its user was disabled stays over when the user is re-enabled,
and a new password (a reset after a leak, say) ends every session signed in with the old
one, as it ends the user's password grants' refresh tokens.

Signing out ends the session on the server too: an HMAC of its id goes into the
`console_spent` table (console/models.py), read with the principal on every request, so
a copy of the cookie (another tab or machine, a stolen one) is refused from then on, on
every worker and replica. Key forms that succeeded are recorded there as well (once.py).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyservice.security.hashing import derive_key

COOKIE_NAME = "keyservice_console"
COOKIE_PATH = "/console"
PURPOSE = "keyservice/console-session/v1"
CREDENTIAL_PURPOSE = "keyservice/console-credential/v1"
SPENT_PURPOSE = "keyservice/console-spent/v1"
SESSION_SECONDS = 3600
# A signed-out visitor gets a session too, so that the sign-in form carries a CSRF token.
ANONYMOUS_SECONDS = 3600
_NONCE_BYTES = 12
_AAD = b"keyservice-console-session"
# Form ids: 12 random bytes, base64url (once.py).
FORM_ID_BYTES = 12
FORM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16}")
SESSION_ID_BYTES = 16


def new_form_id() -> str:
    """A one-time id for a form whose success must not be repeated by sending it again."""
    return secrets.token_urlsafe(FORM_ID_BYTES)


@dataclass(frozen=True)
class ConsoleSession:
    principal_id: str | None
    expires_at: int
    csrf: str = field(repr=False)
    # SessionCodec.credential() of the password hash the user signed in with ("" when
    # signed out): a session whose user has a new password since is over.
    credential: str = field(default="", repr=False)
    # Random, fixed from sign-in to the session's end; a sign-out records it (see `id`).
    session_id: str = field(default="", repr=False)

    @property
    def signed_in(self) -> bool:
        return self.principal_id is not None

    @property
    def signed_in_at(self) -> datetime:
        """When this session signed in (a session keeps the expiry its sign-in set)."""
        return datetime.fromtimestamp(self.expires_at - SESSION_SECONDS, UTC)

    def csrf_matches(self, token: str | None) -> bool:
        """Compare a submitted CSRF token with this session's, in constant time."""
        if not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf.encode())

    @property
    def id(self) -> str:
        """What a sign-out ends: the session id, or for a cookie sealed before there were
        ids, its CSRF secret (as random, and as fixed for the session's life), so that
        sessions signed in before the upgrade keep working and can be signed out too."""
        return self.session_id or self.csrf


def new_session(principal_id: str | None, credential: str = "") -> ConsoleSession:
    """Start a session with a fresh CSRF secret (a new one at every sign-in)."""
    lifetime = SESSION_SECONDS if principal_id is not None else ANONYMOUS_SECONDS
    return ConsoleSession(
        principal_id=principal_id,
        expires_at=int(time.time()) + lifetime,
        csrf=secrets.token_urlsafe(32),
        credential=credential,
        session_id=secrets.token_urlsafe(SESSION_ID_BYTES),
    )


class SessionCodec:
    """Seal and open session cookies (AES-256-GCM, random 96-bit nonce)."""

    def __init__(self, server_secret: bytes) -> None:
        self._aead = AESGCM(derive_key(server_secret, PURPOSE))
        self._credential_key = derive_key(server_secret, CREDENTIAL_PURPOSE)
        self._spent_key = derive_key(server_secret, SPENT_PURPOSE)

    def credential(self, password_hash: str | None) -> str:
        """A keyed fingerprint of a password hash (HMAC-SHA256, 128 bits), for the cookie.

        Keyed, so the cookie carries nothing computable from the hash alone; "" for a
        principal without a password, which never matches a signed-in session.
        """
        if not password_hash:
            return ""
        digest = hmac.digest(self._credential_key, password_hash.encode(), "sha256")
        return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()

    def current(self, session: ConsoleSession, password_hash: str | None) -> bool:
        """Whether `session` was signed in with the password the user has now."""
        expected = self.credential(password_hash)
        return bool(expected) and hmac.compare_digest(session.credential, expected)

    def spent_digest(self, kind: str, value: str) -> str:
        """The key of a `console_spent` row: a hex HMAC-SHA256 of a session or form id."""
        return hmac.digest(self._spent_key, f"{kind}:{value}".encode(), "sha256").hex()

    def seal(self, session: ConsoleSession) -> str:
        payload = json.dumps(
            {
                "p": session.principal_id,
                "e": session.expires_at,
                "c": session.csrf,
                "k": session.credential,
                "i": session.session_id,
            },
            separators=(",", ":"),
        ).encode()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, payload, _AAD)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def open(self, value: str | None) -> ConsoleSession | None:
        """Return the session, or None when the cookie is missing, forged or expired."""
        if not value or len(value) > 4096:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            payload = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _AAD)
            data = json.loads(payload)
            session = ConsoleSession(
                principal_id=data["p"],
                expires_at=int(data["e"]),
                csrf=str(data["c"]),
                credential=str(data.get("k", "")),  # a cookie sealed before it: signed out
                session_id=str(data.get("i", "")),  # none before ids: see ConsoleSession.id
            )
        except (InvalidTag, ValueError, binascii.Error, KeyError, TypeError):
            return None
        if session.principal_id is not None and not isinstance(session.principal_id, str):
            return None
        if session.expires_at <= time.time():
            return None
        return session
