"""The console session cookie: sealed, bound to the server secret, short-lived."""

from __future__ import annotations

import time

from keyservice.console.session import ConsoleSession, SessionCodec, new_session


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


def test_done_forms_are_remembered_bounded_and_the_cookie_stays_small() -> None:
    from keyservice.console.session import DONE_FORMS, FORM_ID_PATTERN, new_form_id

    codec = SessionCodec(b"k" * 40)
    session = new_session("8c0e3c55-6d0e-4a8e-9a43-3f1c2b1d9e77", "c" * 22)
    ids = [new_form_id() for _ in range(DONE_FORMS + 3)]
    assert len(set(ids)) == len(ids) and all(FORM_ID_PATTERN.fullmatch(one) for one in ids)
    for form_id in ids:
        session = session.remembering(form_id)
    session = session.remembering(ids[-1])  # remembered once, however often
    # The newest DONE_FORMS are remembered (several tabs), the oldest forgotten.
    assert session.done_forms == tuple(ids[-DONE_FORMS:])
    assert not session.form_done(ids[0]) and session.form_done(ids[-DONE_FORMS])
    sealed = codec.seal(session)
    opened = codec.open(sealed)
    assert opened == session
    assert not any(form_id in sealed for form_id in ids)  # sealed, not readable
    assert len(sealed) < 600, len(sealed)  # far below a cookie's 4096 bytes

    # A cookie sealed before form ids existed opens with none remembered.
    old = {"p": "p", "e": session.expires_at, "c": "csrf", "k": ""}
    legacy = codec.open(_raw(codec, old))
    assert legacy is not None and legacy.done_forms == ()
    for wrong in ("abc", ["a", 1], {"a": "b"}):
        assert codec.open(_raw(codec, {**old, "f": wrong})) is None


def _raw(codec: SessionCodec, payload: dict[str, object]) -> str:
    import base64
    import json

    from keyservice.console import session as session_module

    nonce = b"n" * 12
    raw = nonce + codec._aead.encrypt(nonce, json.dumps(payload).encode(), session_module._AAD)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
