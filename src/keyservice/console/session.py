"""The console session: an encrypted, authenticated cookie, so any worker can read it.

The cookie holds the principal id (None before sign-in), an expiry, a CSRF secret, a
fingerprint of the user's password hash at sign-in and the ids of the last few forms that
created a key (so that sending one again, as a reload does, creates nothing; see once.py),
sealed with AES-GCM under a key derived from the server secret. Nothing is stored on the
server, so sessions survive restarts and work across workers and replicas; in exchange a
session cannot be revoked one by one, which is why it is short and why every request
re-reads the principal: disabled users and lost permissions take effect at once, a session
signed in before its user was disabled stays over when the user is re-enabled, and a new
password (a reset after a leak, say) ends every session signed in with the old one, as it
ends the user's password grants' refresh tokens.
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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyservice.security.hashing import derive_key

COOKIE_NAME = "keyservice_console"
COOKIE_PATH = "/console"
PURPOSE = "keyservice/console-session/v1"
CREDENTIAL_PURPOSE = "keyservice/console-credential/v1"
SESSION_SECONDS = 3600
# A signed-out visitor gets a session too, so that the sign-in form carries a CSRF token.
ANONYMOUS_SECONDS = 3600
_NONCE_BYTES = 12
_AAD = b"keyservice-console-session"
# Form ids: 12 random bytes, base64url. The session remembers the last DONE_FORMS that
# created or rotated a key, enough for several tabs, small in the cookie (~20 bytes each).
FORM_ID_BYTES = 12
FORM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16}")
DONE_FORMS = 8


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
    # Ids of the last forms that created or rotated a key, oldest first.
    done_forms: tuple[str, ...] = ()

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

    def form_done(self, form_id: str) -> bool:
        """Whether the form with this id already succeeded in this session."""
        return form_id in self.done_forms

    def remembering(self, form_id: str) -> ConsoleSession:
        """This session, also remembering `form_id` (the oldest is forgotten past the bound)."""
        kept = tuple(done for done in self.done_forms if done != form_id)
        return replace(self, done_forms=(*kept, form_id)[-DONE_FORMS:])


def new_session(principal_id: str | None, credential: str = "") -> ConsoleSession:
    """Start a session with a fresh CSRF secret (a new one at every sign-in)."""
    lifetime = SESSION_SECONDS if principal_id is not None else ANONYMOUS_SECONDS
    return ConsoleSession(
        principal_id=principal_id,
        expires_at=int(time.time()) + lifetime,
        csrf=secrets.token_urlsafe(32),
        credential=credential,
    )


class SessionCodec:
    """Seal and open session cookies (AES-256-GCM, random 96-bit nonce)."""

    def __init__(self, server_secret: bytes) -> None:
        self._aead = AESGCM(derive_key(server_secret, PURPOSE))
        self._credential_key = derive_key(server_secret, CREDENTIAL_PURPOSE)

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

    def seal(self, session: ConsoleSession) -> str:
        payload = json.dumps(
            {
                "p": session.principal_id,
                "e": session.expires_at,
                "c": session.csrf,
                "k": session.credential,
                "f": list(session.done_forms),
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
                done_forms=_form_ids(data.get("f", [])),
            )
        except (InvalidTag, ValueError, binascii.Error, KeyError, TypeError):
            return None
        if session.principal_id is not None and not isinstance(session.principal_id, str):
            return None
        if session.expires_at <= time.time():
            return None
        return session


def _form_ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(one, str) for one in value):
        raise ValueError("form ids")
    return tuple(value[-DONE_FORMS:])
