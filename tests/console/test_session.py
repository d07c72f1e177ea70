"""The console session cookie: sealed, bound to the server secret, short-lived."""

from __future__ import annotations

import time

from keyservice.console.session import ConsoleSession, SessionCodec, new_session
from tests.console.conftest import seal_payload


def test_round_trip_and_fresh_csrf() -> None:
    codec = SessionCodec(b"k" * 40)
    session = new_session("principal-1")
    opened = codec.open(codec.seal(session))
    assert opened == session
    assert new_session("principal-1").csrf != session.csrf
    assert session.csrf_matches(session.csrf) and not session.csrf_matches("x")
    assert not session.csrf_matches(None)
    assert "principal-1" not in codec.seal(session)  # encrypted, not only signed


def test_forged_foreign_and_expired_cookies_are_refused() -> None:
    codec = SessionCodec(b"k" * 40)
    sealed = codec.seal(new_session("p"))
    assert SessionCodec(b"other" * 8).open(sealed) is None
    flipped = sealed[:10] + ("A" if sealed[10] != "A" else "B") + sealed[11:]
    assert codec.open(flipped) is None
    for junk in (None, "", "%%%", "a", "x" * 5000):
        assert codec.open(junk) is None
    expired = ConsoleSession(principal_id="p", expires_at=int(time.time()) - 1, csrf="c")
    assert codec.open(codec.seal(expired)) is None


def test_the_credential_fingerprint_is_keyed_and_binds_the_password_hash() -> None:
    import base64
    import json

    codec = SessionCodec(b"k" * 40)
    first = codec.credential("$argon2id$v=19$m=65536,t=3,p=4$salt$hash-one")
    assert first and first == codec.credential("$argon2id$v=19$m=65536,t=3,p=4$salt$hash-one")
    assert first != codec.credential("$argon2id$v=19$m=65536,t=3,p=4$salt$hash-two")
    assert first != SessionCodec(b"other" * 8).credential(
        "$argon2id$v=19$m=65536,t=3,p=4$salt$hash-one"
    )
    assert "hash-one" not in first and len(first) == 22  # 128 bits, base64url
    assert codec.credential(None) == "" and codec.credential("") == ""

    session = new_session("p", first)
    opened = codec.open(codec.seal(session))
    assert opened is not None and opened.credential == first
    assert codec.current(opened, "$argon2id$v=19$m=65536,t=3,p=4$salt$hash-one")
    assert not codec.current(opened, "$argon2id$v=19$m=65536,t=3,p=4$salt$hash-two")
    assert not codec.current(opened, None)  # a principal without a password
    assert not codec.current(new_session("p"), None)  # "" never matches ""

    # A cookie sealed before the fingerprint existed opens, but is no current session.
    from keyservice.console import session as session_module

    nonce = b"n" * 12
    payload = json.dumps({"p": "p", "e": session.expires_at, "c": "csrf"}).encode()
    raw = nonce + codec._aead.encrypt(nonce, payload, session_module._AAD)
    legacy = codec.open(base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
    assert legacy is not None and legacy.credential == ""
    assert not codec.current(legacy, "$argon2id$v=19$m=65536,t=3,p=4$salt$hash-one")


def test_each_sign_in_has_its_own_session_id_and_old_cookies_use_their_csrf_secret() -> None:
    from keyservice.console.session import SESSION_ID_BYTES

    codec = SessionCodec(b"k" * 40)
    session = new_session("8c0e3c55-6d0e-4a8e-9a43-3f1c2b1d9e77", "c" * 22)
    other = new_session(session.principal_id, session.credential)
    assert session.id == session.session_id != other.session_id
    assert len(session.session_id) == len(other.session_id) >= SESSION_ID_BYTES
    sealed = codec.seal(session)
    opened = codec.open(sealed)
    assert opened == session and opened.id == session.id
    assert session.session_id not in sealed and session.session_id not in repr(session)
    assert len(sealed) < 600, len(sealed)  # far below a cookie's 4096 bytes

    # A cookie sealed before session ids (with the form ids it then remembered) still
    # opens; its CSRF secret, random and fixed for the session's life, is its id.
    old = {"p": "p", "e": session.expires_at, "c": "the-csrf-secret", "k": "", "f": ["a" * 16]}
    legacy = codec.open(seal_payload(codec, old))
    assert legacy is not None and legacy.session_id == "" and legacy.id == "the-csrf-secret"


def test_spent_digests_are_keyed_and_kept_apart_by_kind() -> None:
    codec = SessionCodec(b"k" * 40)
    digest = codec.spent_digest("session", "abc")
    assert len(digest) == 64 and int(digest, 16) >= 0  # hex SHA-256: the column's width
    assert digest == codec.spent_digest("session", "abc")
    assert digest != codec.spent_digest("form", "abc")
    assert digest != codec.spent_digest("session", "abd")
    assert digest != SessionCodec(b"other" * 8).spent_digest("session", "abc")
    assert "abc" not in digest
