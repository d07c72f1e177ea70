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
