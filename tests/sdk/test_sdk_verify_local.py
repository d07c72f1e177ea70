"""TokenVerifier rules that need tokens the server would never sign: a JWKS served in-process.

The real-server tests live in test_sdk_verify.py; here a small WSGI/ASGI app plays the
issuer's JWKS and introspection endpoints so that odd headers and claims can be signed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyservice.verify import InvalidTokenError, TokenVerifier, VerifierUnavailableError

ISSUER = "https://issuer.test"
JWKS_URL = f"{ISSUER}/.well-known/jwks.json"
INTROSPECT_URL = f"{ISSUER}/introspect"


@dataclass
class Issuer:
    """An in-process stand-in for the issuer's public endpoints."""

    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    jwks_requests: int = 0
    jwks_status: int = 200
    jwks_headers: dict[str, str] = field(default_factory=dict)  # e.g. Cache-Control
    active: bool = True
    introspections: list[dict[str, str]] = field(default_factory=list)
    leak_private_keys: bool = False  # publish the private keys too (a misconfigured issuer)

    def add_key(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, private in self.keys.items():
            shown = private if self.leak_private_keys else private.public_key()
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(shown))
            keys.append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
        return {"keys": keys}

    def sign(
        self,
        kid: str = "k1",
        *,
        drop: Iterable[str] = (),
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "sub": "principal-1",
            "aud": ISSUER,
            "exp": now + 60,
            "iat": now,
            "jti": "jti-1",
            "scope": "projects:read",
            **claims,
        }
        for name in drop:
            payload.pop(name)
        header = {"kid": kid, "typ": "at+jwt", **(headers or {})}
        if "kid" in (headers or {}) and header["kid"] is None:
            del header["kid"]  # a token without any kid
        return jwt.encode(payload, self.keys[kid], algorithm="ES256", headers=header)

    def handle(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method == "GET" and path == "/.well-known/jwks.json":
            self.jwks_requests += 1
            document = self.jwks() if self.jwks_status == 200 else {}
            return self.jwks_status, document, self.jwks_headers
        if method == "POST" and path == "/introspect":
            form = dict(httpx.QueryParams(body.decode()))
            self.introspections.append(form)
            return 200, {"active": self.active}, {}
        return 404, {}, {}

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        status, document, extra = self.handle(environ["REQUEST_METHOD"], environ["PATH_INFO"], body)
        start_response(f"{status} X", [("Content-Type", "application/json"), *extra.items()])
        return [json.dumps(document).encode()]

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await asyncio.sleep(0)  # a network round trip: other tasks run meanwhile
        status, document, extra = self.handle(scope["method"], scope["path"], body)
        headers = [(b"content-type", b"application/json")]
        headers += [(name.encode(), value.encode()) for name, value in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(document).encode()})


@pytest.fixture
def issuer() -> Issuer:
    issuer = Issuer()
    issuer.add_key("k1")
    return issuer


@pytest.fixture
def http(issuer: Issuer) -> Iterable[httpx.Client]:
    with httpx.Client(transport=httpx.WSGITransport(app=issuer.wsgi)) as client:
        yield client


def make_verifier(http: httpx.Client, **options: Any) -> TokenVerifier:
    return TokenVerifier(JWKS_URL, ISSUER, ISSUER, http_client=http, **options)


def test_accepts_both_access_token_types(issuer: Issuer, http: httpx.Client) -> None:
    verifier = make_verifier(http)
    for typ in ("at+jwt", "AT+JWT", "application/at+jwt"):
        assert verifier.verify(issuer.sign(headers={"typ": typ}))["sub"] == "principal-1"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "", None, "id+jwt", 5])
def test_rejects_other_token_types(issuer: Issuer, http: httpx.Client, typ: Any) -> None:
    token = issuer.sign(headers={"typ": typ})
    with pytest.raises(InvalidTokenError, match="access token"):
        make_verifier(http).verify(token)


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "iat", "jti"])
def test_rejects_a_missing_required_claim(issuer: Issuer, http: httpx.Client, claim: str) -> None:
    with pytest.raises(InvalidTokenError, match=claim):
        make_verifier(http).verify(issuer.sign(drop=[claim]))


def test_rejects_odd_headers_and_claims(issuer: Issuer, http: httpx.Client) -> None:
    verifier = make_verifier(http)
    with pytest.raises(InvalidTokenError, match="critical"):
        verifier.verify(issuer.sign(headers={"crit": ["exp"], "exp": 1}))
    with pytest.raises(InvalidTokenError, match="kid"):
        verifier.verify(issuer.sign(headers={"kid": None}))
    with pytest.raises(InvalidTokenError, match="scope"):
        verifier.verify(issuer.sign(scope=["projects:read"]))
    with pytest.raises(InvalidTokenError, match="expired"):
        verifier.verify(issuer.sign(exp=int(time.time()) - 31))
    verifier.verify(issuer.sign(exp=int(time.time()) - 5))  # within the 30 s leeway
    with pytest.raises(InvalidTokenError, match="not yet valid|nbf|immature"):
        verifier.verify(issuer.sign(nbf=int(time.time()) + 600))
    for junk in ("", "   ", "a.b", "a.b.c", "Bearer " + issuer.sign()):
        with pytest.raises(InvalidTokenError):
            verifier.verify(junk)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_rejects_a_time_claim_that_is_not_a_number(
    issuer: Issuer, http: httpx.Client, claim: str
) -> None:
    # PyJWT reads a numeric string as a time; a NumericDate is a JSON number.
    value = str(int(time.time()) + (3600 if claim == "exp" else -10))
    with pytest.raises(InvalidTokenError, match=f"'{claim}' is not a number"):
        make_verifier(http).verify(issuer.sign(**{claim: value}))


def test_a_skewed_clock_is_named_in_the_message(issuer: Issuer, http: httpx.Client) -> None:
    verifier = make_verifier(http)
    now = int(time.time())
    with pytest.raises(InvalidTokenError) as caught:
        verifier.verify(issuer.sign(iat=now + 120))
    message = str(caught.value)
    assert "not valid yet" in message and "'iat'" in message and "clock" in message
    assert re.search(r"\b1[12]\d s ahead", message), message
    with pytest.raises(InvalidTokenError, match=r"'nbf' is in the future \(\d+ s ahead"):
        verifier.verify(issuer.sign(nbf=now + 600))
    with pytest.raises(InvalidTokenError, match=r"expired \(\d+ s ago by this machine's clock"):
        verifier.verify(issuer.sign(exp=now - 300))


def test_rejects_a_key_whose_algorithm_differs(issuer: Issuer, http: httpx.Client) -> None:
    verifier = make_verifier(http, algorithms=("ES256", "ES384"))
    token = jwt.encode(
        {"sub": "x"},
        ec.generate_private_key(ec.SECP384R1()),
        algorithm="ES384",
        headers={"kid": "k1", "typ": "at+jwt"},
    )
    with pytest.raises(InvalidTokenError):
        verifier.verify(token)


def test_a_private_key_in_the_jwks_is_never_used(
    issuer: Issuer, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # Whoever read the JWKS could sign with that key: its tokens prove nothing.
    issuer.leak_private_keys = True
    assert "d" in issuer.jwks()["keys"][0]
    verifier = make_verifier(http)
    with caplog.at_level(logging.WARNING, logger="keyservice.verify"):
        with pytest.raises(InvalidTokenError, match="unknown key"):
            verifier.verify(issuer.sign())
    assert "private key material for kid 'k1'" in caplog.text
    assert issuer.jwks()["keys"][0]["d"] not in caplog.text


def test_constructor_refuses_unsafe_algorithms() -> None:
    for algorithms in (("none",), ("HS256",), ("ES256", "hs512"), ()):
        with pytest.raises(ValueError):
            TokenVerifier(JWKS_URL, ISSUER, ISSUER, algorithms=algorithms)


def test_rotated_key_is_fetched_once(issuer: Issuer, http: httpx.Client) -> None:
    verifier = make_verifier(http, jwks_refetch_interval=0)
    verifier.verify(issuer.sign())
    issuer.add_key("k2")
    verifier.verify(issuer.sign("k2"))
    verifier.verify(issuer.sign("k2"))
    verifier.verify(issuer.sign("k1"))
    assert issuer.jwks_requests == 2


def test_jwks_ttl_expiry_refetches(issuer: Issuer, http: httpx.Client) -> None:
    verifier = make_verifier(http, jwks_ttl=0.2, jwks_refetch_interval=0)
    verifier.verify(issuer.sign())
    verifier.verify(issuer.sign())
    assert issuer.jwks_requests == 1
    time.sleep(0.25)
    verifier.verify(issuer.sign())
    assert issuer.jwks_requests == 2


def test_jwks_max_age_bounds_the_cache(issuer: Issuer, http: httpx.Client) -> None:
    # The issuer says 1 s; the verifier's own cap (the default 300 s) must not stretch it.
    issuer.jwks_headers = {"Cache-Control": "public, max-age=1"}
    verifier = make_verifier(http, jwks_refetch_interval=0)
    k1_token = issuer.sign()
    verifier.verify(k1_token)
    verifier.verify(k1_token)
    assert issuer.jwks_requests == 1
    # The issuer withdraws k1: past the max-age, the verifier no longer trusts it.
    issuer.add_key("k2")
    del issuer.keys["k1"]
    time.sleep(1.1)
    with pytest.raises(InvalidTokenError, match="unknown key"):
        verifier.verify(k1_token)
    assert issuer.jwks_requests == 2
    verifier.verify(issuer.sign("k2"))
    assert issuer.jwks_requests == 2


def test_jwks_ttl_caps_a_longer_max_age(issuer: Issuer, http: httpx.Client) -> None:
    issuer.jwks_headers = {"Cache-Control": "max-age=3600"}
    verifier = make_verifier(http, jwks_ttl=0.2, jwks_refetch_interval=0)
    verifier.verify(issuer.sign())
    time.sleep(0.25)
    verifier.verify(issuer.sign())
    assert issuer.jwks_requests == 2


@pytest.mark.parametrize(
    ("headers", "fetches"),
    [
        ({"Cache-Control": "no-store"}, 3),
        ({"Cache-Control": "no-cache, max-age=600"}, 3),
        ({"Cache-Control": "max-age=600", "Age": "600"}, 3),  # spent in a shared cache
        ({"Cache-Control": "max-age=600", "Age": "590"}, 1),
        ({"Cache-Control": "max-age=600, max-age=0"}, 3),  # conflicting: the shorter
        ({"Cache-Control": 'max-age="600"'}, 1),
        ({"Cache-Control": "max-age=soon"}, 1),  # unreadable: jwks_ttl alone
        ({"Cache-Control": "max-age=-5"}, 1),
    ],
)
def test_jwks_cache_directives(
    issuer: Issuer, http: httpx.Client, headers: dict[str, str], fetches: int
) -> None:
    issuer.jwks_headers = headers
    verifier = make_verifier(http, jwks_refetch_interval=0)
    for _ in range(3):
        verifier.verify(issuer.sign())
    assert issuer.jwks_requests == fetches


async def test_averify_honours_the_jwks_max_age(issuer: Issuer) -> None:
    issuer.jwks_headers = {"Cache-Control": "max-age=0"}
    transport = httpx.ASGITransport(app=issuer.asgi)
    async with httpx.AsyncClient(transport=transport) as client:
        verifier = TokenVerifier(
            JWKS_URL, ISSUER, ISSUER, async_http_client=client, jwks_refetch_interval=0
        )
        await verifier.averify(issuer.sign())
        await verifier.averify(issuer.sign())
    assert issuer.jwks_requests == 2


def test_verify_inside_the_event_loop_of_a_jwks_fetch_raises(silent_port: int) -> None:
    """Waiting for the lock a task of the caller's own event loop holds would never end."""
    issuer = Issuer()
    issuer.add_key("k1")
    token = issuer.sign()
    outcome: list[object] = []

    async def scenario() -> None:
        verifier = TokenVerifier(
            f"http://127.0.0.1:{silent_port}/jwks.json", ISSUER, ISSUER, timeout=2
        )
        hung = asyncio.create_task(verifier.averify(token))
        await asyncio.sleep(0.2)  # the task now waits for the JWKS
        try:
            verifier.verify(token)  # a blocking call in async code
        except RuntimeError as exc:
            outcome.append(exc)
        with pytest.raises(VerifierUnavailableError):
            await hung

    thread = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the event loop deadlocked"
    assert len(outcome) == 1 and "averify" in str(outcome[0])


def test_jwks_outage(issuer: Issuer, http: httpx.Client) -> None:
    issuer.jwks_status = 503
    verifier = make_verifier(http, jwks_ttl=0.1, jwks_refetch_interval=0)
    with pytest.raises(VerifierUnavailableError):
        verifier.verify(issuer.sign())
    issuer.jwks_status = 200
    verifier.verify(issuer.sign())
    # Once the cache is stale, a failing endpoint does not lock out a known key...
    issuer.jwks_status = 503
    time.sleep(0.15)
    verifier.verify(issuer.sign())
    # ...but a kid never seen cannot be judged: unavailable, not invalid.
    issuer.add_key("k2")
    with pytest.raises(VerifierUnavailableError):
        verifier.verify(issuer.sign("k2"))


def test_a_jwks_answer_that_trickles_in_is_given_up_on(
    issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    # Each chunk comes well within the read timeout; the whole answer does not.
    def trickle(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        for _ in range(30):
            time.sleep(0.05)
            yield b" "
        yield json.dumps(issuer.jwks()).encode()

    with httpx.Client(transport=httpx.WSGITransport(app=trickle)) as http:
        verifier = make_verifier(http, timeout=0.3)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="keyservice.verify"):
            with pytest.raises(VerifierUnavailableError):
                verifier.verify(issuer.sign())
        assert time.monotonic() - started < 1.0
    assert "took longer than 0.3 s" in caplog.text


@pytest.mark.parametrize("declared", [True, False])
async def test_a_huge_jwks_answer_is_refused(
    issuer: Issuer, caplog: pytest.LogCaptureFixture, declared: bool
) -> None:
    padding = b" " * (2 << 20)
    document = json.dumps(issuer.jwks()).encode() + padding

    async def huge(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json")]
        if declared:
            headers.append((b"content-length", str(len(document)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, len(document), 65536):
            chunk = document[start : start + 65536]
            more = start + 65536 < len(document)
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=huge)) as http:
        verifier = TokenVerifier(JWKS_URL, ISSUER, ISSUER, async_http_client=http)
        with caplog.at_level(logging.WARNING, logger="keyservice.verify"):
            with pytest.raises(VerifierUnavailableError):
                await verifier.averify(issuer.sign())
    assert "larger than 1048576 bytes" in caplog.text


def test_unknown_kid_stays_unavailable_while_the_jwks_is_down(
    issuer: Issuer, http: httpx.Client
) -> None:
    verifier = make_verifier(http, jwks_refetch_interval=0)
    verifier.verify(issuer.sign())
    issuer.jwks_status = 503
    issuer.add_key("k2")  # a rotation the verifier cannot see
    with pytest.raises(VerifierUnavailableError):
        verifier.verify(issuer.sign("k2"))
    # Within the refetch interval no fetch is tried: the answer must not turn into
    # "invalid" (401) for a token nobody could judge.
    verifier.jwks_refetch_interval = 3600
    for _ in range(3):
        with pytest.raises(VerifierUnavailableError):
            verifier.verify(issuer.sign("k2"))
    verifier.verify(issuer.sign())  # the cached key still works
    assert issuer.jwks_requests == 2
    # Once a fetch succeeds, a kid it does not list is invalid again.
    k2_token = issuer.sign("k2")
    del issuer.keys["k2"]
    issuer.jwks_status = 200
    verifier.jwks_refetch_interval = 0
    with pytest.raises(InvalidTokenError, match="unknown key"):
        verifier.verify(k2_token)
    assert issuer.jwks_requests == 3


def test_introspection_inactive_token_is_invalid(issuer: Issuer, http: httpx.Client) -> None:
    verifier = make_verifier(http, introspect_url=INTROSPECT_URL, introspect_token="intro")
    token = issuer.sign()
    assert verifier.verify(token)["jti"] == "jti-1"
    issuer.active = False
    with pytest.raises(InvalidTokenError, match="no longer active"):
        verifier.verify(token)
    assert [form["token"] for form in issuer.introspections] == [token, token]


async def test_averify_with_an_async_client(issuer: Issuer) -> None:
    transport = httpx.ASGITransport(app=issuer.asgi)
    async with httpx.AsyncClient(transport=transport) as client:
        verifier = TokenVerifier(
            JWKS_URL,
            ISSUER,
            ISSUER,
            async_http_client=client,
            introspect_url=INTROSPECT_URL,
            introspect_token="intro",
        )
        assert (await verifier.averify(issuer.sign()))["sub"] == "principal-1"
        issuer.active = False
        with pytest.raises(InvalidTokenError, match="no longer active"):
            await verifier.averify(issuer.sign())
    assert issuer.jwks_requests == 1


async def test_concurrent_averify_on_a_cold_cache_fetches_once(issuer: Issuer) -> None:
    transport = httpx.ASGITransport(app=issuer.asgi)
    async with httpx.AsyncClient(transport=transport) as client:
        verifier = TokenVerifier(JWKS_URL, ISSUER, ISSUER, async_http_client=client)
        token = issuer.sign()
        results = await asyncio.gather(*(verifier.averify(token) for _ in range(20)))
    assert len(results) == 20
    assert issuer.jwks_requests == 1


async def test_concurrent_averify_of_a_rotated_key_waits_for_the_refetch(
    issuer: Issuer,
) -> None:
    transport = httpx.ASGITransport(app=issuer.asgi)
    async with httpx.AsyncClient(transport=transport) as client:
        verifier = TokenVerifier(JWKS_URL, ISSUER, ISSUER, async_http_client=client)
        await verifier.averify(issuer.sign())
        issuer.add_key("k2")
        verifier._attempted_at = None  # the last fetch was long ago: a refetch is allowed
        token = issuer.sign("k2")
        results = await asyncio.gather(
            *(verifier.averify(token) for _ in range(20)), return_exceptions=True
        )
    assert [type(r).__name__ for r in results] == ["dict"] * 20
    assert issuer.jwks_requests == 2


def test_redirects_are_not_followed_with_a_token_or_for_keys(issuer: Issuer) -> None:
    # The caller's client follows redirects; the verifier's requests must not.
    elsewhere: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["HTTP_HOST"] != "issuer.test":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            elsewhere.append(environ["wsgi.input"].read(length).decode())
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"active": True, **issuer.jwks()}).encode()]
        if environ["PATH_INFO"] == "/introspect" or issuer.jwks_status == 307:
            location = "https://elsewhere.test" + environ["PATH_INFO"]
            start_response("307 X", [("Location", location)])
            return [b""]
        return issuer.wsgi(environ, start_response)

    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, follow_redirects=True) as http:
        verifier = make_verifier(http, introspect_url=INTROSPECT_URL, introspect_token="t")
        token = issuer.sign()
        with pytest.raises(VerifierUnavailableError, match="HTTP 307"):
            verifier.verify(token)
        assert elsewhere == []
        issuer.jwks_status = 307
        with pytest.raises(VerifierUnavailableError):
            make_verifier(http).verify(token)
        assert elsewhere == []


async def test_averify_follows_no_redirect_with_a_token_or_for_keys(issuer: Issuer) -> None:
    # The async path, as the sync one above: the caller's client follows redirects.
    elsewhere: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        host = dict(scope["headers"]).get(b"host", b"")
        if host != b"issuer.test":
            message = await receive()
            elsewhere.append(message.get("body", b""))
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            body = json.dumps({"active": True, **issuer.jwks()}).encode()
            await send({"type": "http.response.body", "body": body})
            return
        if scope["path"] == "/introspect" or issuer.jwks_status == 307:
            location = b"https://elsewhere.test" + scope["path"].encode()
            await send(
                {"type": "http.response.start", "status": 307, "headers": [(b"location", location)]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await issuer.asgi(scope, receive, send)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as http:
        verifier = TokenVerifier(
            JWKS_URL,
            ISSUER,
            ISSUER,
            async_http_client=http,
            introspect_url=INTROSPECT_URL,
            introspect_token="t",
        )
        token = issuer.sign()
        with pytest.raises(VerifierUnavailableError, match="HTTP 307"):
            await verifier.averify(token)
        assert elsewhere == []
        issuer.jwks_status = 307
        with pytest.raises(VerifierUnavailableError):
            await TokenVerifier(JWKS_URL, ISSUER, ISSUER, async_http_client=http).averify(token)
        assert elsewhere == []


def test_introspect_url_needs_a_credential() -> None:
    with pytest.raises(ValueError, match="introspect"):
        TokenVerifier(JWKS_URL, ISSUER, ISSUER, introspect_url=INTROSPECT_URL)


def test_plain_http_jwks_or_introspection_url_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="keyservice.verify")
    TokenVerifier("http://127.0.0.1:8000/.well-known/jwks.json", ISSUER, ISSUER)
    TokenVerifier("http://localhost:8000/.well-known/jwks.json", ISSUER, ISSUER)
    assert caplog.records == []
    TokenVerifier(
        "http://keys.example.com/.well-known/jwks.json",
        ISSUER,
        ISSUER,
        introspect_url="http://keys.example.com/introspect",
        introspect_token="intro-token-value",
    )
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "JWKS" in messages[0] and "plain HTTP" in messages[0]
    assert "introspection" in messages[1] and "plain HTTP" in messages[1]
    assert all("intro-token-value" not in m for m in messages)


def test_a_password_in_the_jwks_url_is_not_shown(
    issuer: Issuer, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyservice.verify")
    issuer.jwks_status = 503
    verifier = TokenVerifier(
        "http://gw:pass-w0rd@issuer.test/.well-known/jwks.json",
        ISSUER,
        ISSUER,
        introspect_url="http://gw:pass-w0rd@issuer.test/introspect",
        introspect_token="intro-token-value",
        http_client=http,
    )
    with pytest.raises(VerifierUnavailableError) as caught:
        verifier.verify(issuer.sign())
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3  # two plain-HTTP warnings, the failed fetch
    assert "HTTP 503" in messages[2]
    for text in (*messages, repr(verifier), str(caught.value)):
        assert "pass-w0rd" not in text and "intro-token-value" not in text


def test_a_wrong_issuer_or_audience_names_both_values(issuer: Issuer, http: httpx.Client) -> None:
    # A verifier set up with the issuer URL plus a slash refused every token with "token
    # comes from another issuer", which did not say which value to change.
    verifier = TokenVerifier(JWKS_URL, ISSUER + "/", ISSUER, http_client=http)
    with pytest.raises(InvalidTokenError) as caught:
        verifier.verify(issuer.sign())
    assert str(caught.value) == (
        f"token comes from issuer {ISSUER!r}, not {ISSUER + '/'!r} "
        "(the verifier's issuer: the service's KEYSERVICE_ISSUER)"
    )
    verifier = TokenVerifier(JWKS_URL, ISSUER, "https://api.test", http_client=http)
    with pytest.raises(InvalidTokenError) as caught:
        verifier.verify(issuer.sign())
    assert str(caught.value) == (
        f"token is meant for audience {ISSUER!r}, not 'https://api.test' "
        "(the verifier's audience: the service's KEYSERVICE_AUDIENCE)"
    )
    with pytest.raises(InvalidTokenError, match=r"audience \['a', 'b'\], not"):
        verifier.verify(issuer.sign(aud=["a", "b"]))
