"""A corpus of forged access tokens: every one is refused with 401 invalid_token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from keyservice.context import AppContext
from tests.factories import bearer, create_key, exchange, login, user_token


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = "=" * (-len(payload) % 4)
    return (
        jwt.get_unverified_header(token),
        json.loads(base64.urlsafe_b64decode(payload + pad)),
        signature,
    )


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


class Listener:
    """A loopback HTTP server that counts requests: nothing may ever fetch from it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"keys": []}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


def corpus(ctx: AppContext, good: str, other: str, api_key: str, url: str) -> dict[str, str]:
    """Name → forged token, built from a real token of this service."""
    header, claims, _signature = unverified(good)
    kid = header["kid"]
    current = ctx.keyring._keys[kid]
    private_key, public_key = current.private_key, current.public_key
    admin = {**claims, "scope": "admin api_keys:manage introspect"}
    forged: dict[str, str] = {}

    for alg in ("none", "None", "NONE", "nOnE"):
        h = {"alg": alg, "typ": "at+jwt", "kid": kid}
        forged[f"alg-{alg}"] = f"{b64json(h)}.{b64json(admin)}."
        forged[f"alg-{alg}-with-old-signature"] = (
            good.rsplit(".", 1)[0].replace(good.split(".")[0], b64json(h))
            + "."
            + good.rsplit(".", 1)[1]
        )

    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_json = ECAlgorithm.to_jwk(public_key)
    hs_header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
    forged["hs256-public-pem"] = hs256(hs_header, admin, pem)
    forged["hs256-public-pem-stripped"] = hs256(hs_header, admin, pem.strip())
    forged["hs256-public-jwk-json"] = hs256(hs_header, admin, jwk_json.encode())
    forged["hs256-published-jwk"] = hs256(
        hs_header, admin, json.dumps(ctx.keyring.jwks()["keys"][0]).encode()
    )

    def signed(payload: dict[str, Any], **headers: Any) -> str:
        h = {"typ": "at+jwt", "kid": kid, **headers}
        return jwt.encode(payload, private_key, algorithm="ES256", headers=h)

    forged["typ-JWT"] = signed(claims, typ="JWT")
    forged["typ-missing"] = jwt.encode(claims, private_key, algorithm="ES256", headers={"kid": kid})
    forged["typ-refresh"] = signed(claims, typ="rt+jwt")
    forged["aud-wrong"] = signed({**claims, "aud": "https://elsewhere.example"})
    forged["aud-list-without-ours"] = signed({**claims, "aud": ["https://elsewhere.example"]})
    forged["iss-wrong"] = signed({**claims, "iss": "https://evil.example"})
    forged["iss-missing"] = signed({k: v for k, v in claims.items() if k != "iss"})
    now = int(time.time())
    forged["expired"] = signed({**claims, "iat": now - 7300, "exp": now - 100})
    forged["expired-one-second"] = signed({**claims, "exp": now - 1})
    forged["exp-missing"] = signed({k: v for k, v in claims.items() if k != "exp"})
    forged["exp-string"] = signed({**claims, "exp": str(now + 3600)})
    forged["sub-missing"] = signed({k: v for k, v in claims.items() if k != "sub"})

    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = json.loads(ECAlgorithm.to_jwk(attacker.public_key()))
    for bad_kid in ("../../../../etc/passwd", "' OR '1'='1' --", "x; DROP TABLE signing_key;--"):
        forged[f"kid-{bad_kid[:12]}"] = jwt.encode(
            admin, attacker, algorithm="ES256", headers={"typ": "at+jwt", "kid": bad_kid}
        )
    for name, extra in {
        "jku": {"jku": f"{url}/jwks.json"},
        "x5u": {"x5u": f"{url}/cert.pem"},
        "jwk-embedded": {"jwk": {**attacker_jwk, "kid": "attacker"}},
    }.items():
        for which_kid in (kid, "attacker"):
            forged[f"{name}-kid-{which_kid[:8]}"] = jwt.encode(
                admin,
                attacker,
                algorithm="ES256",
                headers={"typ": "at+jwt", "kid": which_kid, **extra},
            )
    forged["attacker-key-real-kid"] = jwt.encode(
        admin, attacker, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid}
    )
    # A valid signature from another real token, over a different (escalated) payload.
    other_signature = other.rsplit(".", 1)[1]
    forged["swapped-payload"] = f"{good.split('.')[0]}.{b64json(admin)}.{other_signature}"
    other_header, other_payload, _ = other.split(".")
    forged["swapped-payload-of-other-token"] = (
        f"{good.split('.')[0]}.{other_payload}.{good.rsplit('.', 1)[1]}"
    )
    forged["alg-ES384-label"] = f"{b64json({**header, 'alg': 'ES384'})}.{good.split('.', 1)[1]}"
    forged["api-key-string"] = api_key
    forged["truncated"] = good[:-10]
    forged["garbage"] = "a.b.c"
    forged["empty-parts"] = ".."
    forged["not-base64"] = "!!!.???.***"
    forged["huge-header"] = f"{b64json({'typ': 'at+jwt', 'x': 'a' * 20000})}.e30.sig"
    return forged


async def test_every_forged_token_is_refused(client, context, listener):
    token = await user_token(context, client, "mallory", ["api_keys:manage"])
    key = await create_key(client, token, name="k")
    other = (await exchange(client, key["api_key"])).json()["access_token"]
    assert (await client.get("/me", headers=bearer(token))).status_code == 200

    forged = corpus(context, token, other, key["api_key"], listener.url)
    assert len(forged) >= 40
    for name, value in forged.items():
        response = await client.get("/me", headers=bearer(value))
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"] == "invalid_token", name
        assert 'error="invalid_token"' in response.headers["www-authenticate"], name
        introspect = await client.post("/introspect", data={"token": value}, headers=bearer(value))
        assert introspect.status_code == 401, name
    assert listener.requests == [], "the service fetched a URL named in a token header"
    # The real tokens still work: nothing above poisoned a cache.
    assert (await client.get("/me", headers=bearer(token))).status_code == 200


async def test_a_burst_of_unknown_kids_reads_the_signing_keys_once(client, context):
    # An unknown `kid` may be another replica's new key, so it reloads the keys, at most
    # once every few seconds. Concurrent junk tokens all passed that check before the first
    # reload finished, and each read the keys from the database.
    token = await user_token(context, client, "mallory", ["api_keys:manage"])
    attacker = ec.generate_private_key(ec.SECP256R1())
    claims = jwt.decode(token, options={"verify_signature": False})
    junk = [
        jwt.encode(claims, attacker, algorithm="ES256", headers={"typ": "at+jwt", "kid": f"k{i}"})
        for i in range(20)
    ]
    loads = 0
    load = context.keyring.load

    async def counted(session: Any) -> None:
        nonlocal loads
        loads += 1
        await load(session)

    context.keyring.load = counted  # type: ignore[method-assign]
    context.keyring._last_reload = 0  # as if the last reload was long ago
    responses = await asyncio.gather(*(client.get("/me", headers=bearer(t)) for t in junk))
    assert {r.status_code for r in responses} == {401}
    assert all(r.json()["error"] == "invalid_token" for r in responses)
    assert loads == 1
    assert (await client.get("/me", headers=bearer(token))).status_code == 200


async def test_tokens_with_headers_or_claims_the_service_never_signs_are_refused(client, context):
    """Signed with the service's own key, yet refused: what verification checks beyond the
    signature (RFC 7515 §4.1.11 crit, RFC 7519 nbf/iat, the key's curve and algorithm)."""
    token = await user_token(context, client, "mallory", ["api_keys:manage"])
    header, claims, _signature = unverified(token)
    key = context.keyring._keys[header["kid"]]
    now = int(time.time())

    def signed(payload: dict[str, Any], **headers: Any) -> str:
        h = {"typ": "at+jwt", "kid": header["kid"], **headers}
        return jwt.encode(payload, key.private_key, algorithm="ES256", headers=h)

    p384 = ec.generate_private_key(ec.SECP384R1())
    refresh = (await login(client, "mallory"))["refresh_token"]
    forged = {
        "crit-unknown": signed(claims, crit=["exp"]),
        "crit-b64": signed(claims, crit=["b64"], b64=True),
        "nbf-future": signed({**claims, "nbf": now + 3600}),
        "iat-future": signed({**claims, "iat": now + 3600, "exp": now + 7200}),
        "iat-float": signed({**claims, "iat": now + 0.5}),
        "sub-not-string": signed({**claims, "sub": 1}),
        "p384-key-our-kid": jwt.encode(
            claims, p384, algorithm="ES384", headers={"typ": "at+jwt", "kid": header["kid"]}
        ),
        # JSON keeps the last of a repeated name: {"alg": "ES256", "alg": "none"}.
        "alg-repeated": b64(
            f'{{"alg":"ES256","alg":"none","typ":"at+jwt","kid":"{header["kid"]}"}}'.encode()
        )
        + f".{b64json(claims)}.",
        "refresh-token": refresh,
        "bearer-in-token": "Bearer " + token,
    }
    for name, value in forged.items():
        response = await client.get("/me", headers=bearer(value))
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"] == "invalid_token", name
    assert (await client.get("/me", headers=bearer(token))).status_code == 200


async def test_a_key_retired_past_its_publication_verifies_nothing(client, context):
    token = await user_token(context, client, "mallory", ["api_keys:manage"])
    header, claims, _signature = unverified(token)
    old = context.keyring._keys[header["kid"]]
    async with context.database.sessionmaker() as session:
        await context.keyring.create_key(session, retire_current=True, delay=0)
        await session.commit()
        await context.keyring.load(session)
    now = int(time.time())
    fresh = {**claims, "iat": now, "exp": now + 60, "jti": "j2"}
    by_old = jwt.encode(fresh, old.private_key, algorithm="ES256", headers=header)
    # Retired, still published (its tokens have not all expired): accepted.
    assert (await client.get("/me", headers=bearer(by_old))).status_code == 200

    from sqlalchemy import update

    from keyservice.auth.models import SigningKey

    gone = now - context.settings.access_token_ttl - 120
    async with context.database.sessionmaker() as session:
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid == header["kid"])
            .values(retired_at=datetime.fromtimestamp(gone, UTC))
        )
        await session.commit()
        await context.keyring.load(session)
    assert header["kid"] not in {jwk["kid"] for jwk in context.keyring.jwks()["keys"]}
    context.keyring.forget_verified()
    context.keyring._last_reload = 0  # the unknown kid may reload: it stays unknown
    for value in (by_old, jwt.encode({**fresh, "jti": "j3"}, old.private_key, "ES256", header)):
        response = await client.get("/me", headers=bearer(value))
        assert response.status_code == 401 and response.json()["error"] == "invalid_token"
