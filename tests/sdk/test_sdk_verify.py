"""TokenVerifier and require_scopes against tokens and the JWKS of a real server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, FastAPI

import keyservice.verify
from keyservice.client import KeyServiceAuth
from keyservice.verify import (
    InvalidTokenError,
    TokenVerifier,
    VerifierUnavailableError,
    require_scopes,
)

from .support import ACCESS_TOKEN_TTL, BIN, Server

pytestmark = pytest.mark.e2e


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload))


@pytest.fixture
def verifier(server: Server) -> TokenVerifier:
    return TokenVerifier(server.jwks_url, issuer=server.url, audience=server.url)


@pytest.fixture
def tokens(server: Server) -> dict[str, Any]:
    """Return a token response for a fresh key (access and refresh token, api_key)."""
    key = server.create_key()
    response = server.exchange(key["api_key"])
    return {**response, "api_key": key["api_key"], "client_id": key["client_id"]}


def test_accepts_a_real_token(verifier: TokenVerifier, tokens: dict[str, Any]) -> None:
    claims = verifier.verify(tokens["access_token"])
    assert claims["client_id"] == tokens["client_id"]
    assert set(claims["scope"].split()) == {"api_keys:manage", "projects:read"}
    assert claims["principal_type"] == "user"


async def test_averify_accepts_a_real_token(
    verifier: TokenVerifier, tokens: dict[str, Any]
) -> None:
    claims = await verifier.averify(tokens["access_token"])
    assert claims["client_id"] == tokens["client_id"]


async def test_concurrent_averify_on_a_cold_cache_waits_for_the_fetch(
    server: Server, tokens: dict[str, Any]
) -> None:
    """Verifications arriving while the first JWKS fetch is in flight wait for it."""
    fetches: list[str] = []

    async def record(request: httpx.Request) -> None:
        fetches.append(str(request.url))

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        verifier = TokenVerifier(
            server.jwks_url, issuer=server.url, audience=server.url, async_http_client=http
        )
        results = await asyncio.gather(
            *(verifier.averify(tokens["access_token"]) for _ in range(20)),
            return_exceptions=True,
        )
    assert [type(r).__name__ for r in results] == ["dict"] * 20
    assert fetches == [server.jwks_url]


def test_rejects_a_tampered_token(verifier: TokenVerifier, tokens: dict[str, Any]) -> None:
    header, payload, signature = tokens["access_token"].split(".")
    claims = json.loads(unb64(payload))
    claims["scope"] += " admin"
    tampered = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(InvalidTokenError, match="signature"):
        verifier.verify(tampered)


def test_rejects_alg_none(verifier: TokenVerifier, tokens: dict[str, Any]) -> None:
    header, claims = parts(tokens["access_token"])
    for alg in ("none", "None", "NONE"):
        with pytest.raises(InvalidTokenError, match="algorithm"):
            verifier.verify(forge({**header, "alg": alg}, claims))


def test_rejects_hs256_signed_with_the_public_key(
    server: Server, verifier: TokenVerifier, tokens: dict[str, Any]
) -> None:
    header, claims = parts(tokens["access_token"])
    jwks = httpx.get(server.jwks_url).json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    public_pem = jwt.PyJWK(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged_header = {**header, "alg": "HS256"}
    signing_input = ".".join(
        [b64(json.dumps(forged_header).encode()), b64(json.dumps(claims).encode())]
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidTokenError, match="algorithm"):
        verifier.verify(f"{signing_input}.{b64(signature)}")
    with pytest.raises(ValueError, match="never accepted"):
        TokenVerifier(server.jwks_url, server.url, server.url, algorithms=("ES256", "HS256"))


def test_rejects_wrong_audience_and_issuer(server: Server, tokens: dict[str, Any]) -> None:
    token = tokens["access_token"]
    other_aud = TokenVerifier(server.jwks_url, issuer=server.url, audience="https://other")
    with pytest.raises(InvalidTokenError, match="audience"):
        other_aud.verify(token)
    other_iss = TokenVerifier(server.jwks_url, issuer="https://other", audience=server.url)
    with pytest.raises(InvalidTokenError, match="issuer"):
        other_iss.verify(token)


def test_rejects_an_expired_token(server: Server, tokens: dict[str, Any]) -> None:
    strict = TokenVerifier(server.jwks_url, issuer=server.url, audience=server.url, leeway=0)
    strict.verify(tokens["access_token"])
    time.sleep(ACCESS_TOKEN_TTL + 1.1)
    with pytest.raises(InvalidTokenError, match="expired"):
        strict.verify(tokens["access_token"])


def test_rejects_api_keys_and_refresh_tokens_clearly(
    verifier: TokenVerifier, tokens: dict[str, Any]
) -> None:
    with pytest.raises(InvalidTokenError, match="API key") as e:
        verifier.verify(tokens["api_key"])
    assert tokens["api_key"] not in str(e.value)
    with pytest.raises(InvalidTokenError, match="refresh token") as e:
        verifier.verify(tokens["refresh_token"])
    assert tokens["refresh_token"] not in str(e.value)


def test_unknown_kid_refetch_is_rate_limited(server: Server, tokens: dict[str, Any]) -> None:
    fetches: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: fetches.append(str(r.url))]}) as http:
        verifier = TokenVerifier(
            server.jwks_url,
            issuer=server.url,
            audience=server.url,
            jwks_refetch_interval=1,
            http_client=http,
        )
        verifier.verify(tokens["access_token"])
        assert len(fetches) == 1
        header, claims = parts(tokens["access_token"])
        attacker = ec.generate_private_key(ec.SECP256R1())
        junk = jwt.encode(
            claims, attacker, algorithm="ES256", headers={"kid": "junk", "typ": "at+jwt"}
        )
        # The first fetch was just now: junk kids cannot trigger another one yet.
        for _ in range(30):
            with pytest.raises(InvalidTokenError, match="unknown key"):
                verifier.verify(junk)
        assert len(fetches) == 1
        for expected in (2, 3):
            time.sleep(1.1)
            for _ in range(30):
                with pytest.raises(InvalidTokenError, match="unknown key"):
                    verifier.verify(junk)
            assert len(fetches) == expected  # one refetch per interval, however many tokens
        # The real token still verifies from the cache, with no further fetch.
        verifier.verify(tokens["access_token"])
        assert len(fetches) == 3
    assert set(fetches) == {server.jwks_url}


def test_rotated_signing_key_is_fetched_once(server: Server, tokens: dict[str, Any]) -> None:
    fetches: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: fetches.append(str(r.url))]}) as http:
        verifier = TokenVerifier(
            server.jwks_url,
            issuer=server.url,
            audience=server.url,
            jwks_refetch_interval=0.5,
            http_client=http,
        )
        old_kid = parts(tokens["access_token"])[0]["kid"]
        verifier.verify(tokens["access_token"])
        subprocess.run(
            [str(BIN / "keyservice"), "signing-keys", "rotate", "--now"],
            env=server.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        # Replicas pick the new key up by polling (every 30 s on SQLite, at once on PostgreSQL).
        deadline = time.monotonic() + 40
        while True:
            token = server.exchange(tokens["api_key"])["access_token"]
            if parts(token)[0]["kid"] != old_kid:
                break
            assert time.monotonic() < deadline, "the server kept signing with the old key"
            time.sleep(0.5)
        time.sleep(0.6)  # past the refetch interval since the first fetch
        assert verifier.verify(token)["client_id"] == tokens["client_id"]
        assert verifier.verify(token)["client_id"] == tokens["client_id"]
        assert len(fetches) == 2  # the cached JWKS, then one refetch for the new kid


def test_the_service_jwks_max_age_bounds_the_cache(
    server: Server, tokens: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's JWKS says max-age=60: a verifier keeping it 300 s (the default cap)
    would trust a withdrawn key for 4 minutes longer than the service intends."""
    fetches: list[httpx.Response] = []
    skew = [0.0]  # the verifier's clock runs ahead by this much; no test waits a minute
    real = keyservice.verify.elapsed
    monkeypatch.setattr(keyservice.verify, "elapsed", lambda: real() + skew[0])
    with httpx.Client(event_hooks={"response": [fetches.append]}) as http:
        verifier = TokenVerifier(
            server.jwks_url, issuer=server.url, audience=server.url, http_client=http
        )
        verifier.verify(tokens["access_token"])
        assert fetches[0].headers["Cache-Control"] == "public, max-age=60"
        skew[0] = 59
        verifier.verify(tokens["access_token"])
        assert len(fetches) == 1
        skew[0] = 61
        verifier.verify(tokens["access_token"])
        assert len(fetches) == 2
        skew[0] = 62  # fresh again for 60 s from the refetch
        verifier.verify(tokens["access_token"])
        assert len(fetches) == 2


def test_jku_and_jwk_headers_are_ignored(server: Server, tokens: dict[str, Any]) -> None:
    fetches: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: fetches.append(str(r.url))]}) as http:
        verifier = TokenVerifier(
            server.jwks_url, issuer=server.url, audience=server.url, http_client=http
        )
        header, claims = parts(tokens["access_token"])
        attacker = ec.generate_private_key(ec.SECP256R1())
        attacker_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
        forged = jwt.encode(
            claims,
            attacker,
            algorithm="ES256",
            headers={
                "kid": header["kid"],  # claims to be the real key
                "typ": "at+jwt",
                "jku": "http://127.0.0.1:9/evil.json",
                "x5u": "http://127.0.0.1:9/evil.pem",
                "jwk": attacker_jwk,
            },
        )
        with pytest.raises(InvalidTokenError, match="signature"):
            verifier.verify(forged)
    assert set(fetches) == {server.jwks_url}


async def test_introspection_catches_a_revoked_key(server: Server) -> None:
    introspector_key = server.create_key(permissions=["api_keys:manage", "introspect"])
    introspector = KeyServiceAuth(introspector_key["api_key"], server.token_url)
    verifier = TokenVerifier(
        server.jwks_url,
        issuer=server.url,
        audience=server.url,
        introspect_url=f"{server.url}/introspect",
        introspect_token=introspector,
    )
    victim = server.create_key()
    # Tokens live 3 s here: take it last, and revoke before it expires on its own.
    token = server.exchange(victim["api_key"])["access_token"]
    assert (await verifier.averify(token))["client_id"] == victim["client_id"]
    assert verifier.verify(token)["client_id"] == victim["client_id"]
    server.delete_key(victim)
    # The service promises to notice within 5 s. With 3 s tokens in this suite, expiry may
    # come first; either way introspection must turn the token down while the JWT alone,
    # within the verifier's 30 s leeway, would still pass.
    deadline = time.monotonic() + 6
    while True:
        try:
            await verifier.averify(token)
        except InvalidTokenError as exc:
            assert "no longer active" in str(exc)
            break
        assert time.monotonic() < deadline, "revoked token still active"
        await asyncio.sleep(0.5)
    with pytest.raises(InvalidTokenError, match="no longer active"):
        verifier.verify(token)


async def test_a_refused_introspection_key_is_unavailable_not_a_crash(server: Server) -> None:
    introspector_key = server.create_key(permissions=["api_keys:manage", "introspect"])
    server.delete_key(introspector_key)
    verifier = TokenVerifier(
        server.jwks_url,
        issuer=server.url,
        audience=server.url,
        introspect_url=f"{server.url}/introspect",
        introspect_token=KeyServiceAuth(introspector_key["api_key"], server.token_url),
    )
    token = server.exchange(server.create_key()["api_key"])["access_token"]
    with pytest.raises(VerifierUnavailableError, match="invalid_client") as caught:
        verifier.verify(token)
    assert introspector_key["api_key"] not in str(caught.value)
    with pytest.raises(VerifierUnavailableError, match="invalid_client"):
        await verifier.averify(token)
    app = FastAPI()

    @app.get("/projects")
    async def projects(claims: dict[str, Any] = Depends(require_scopes(verifier))) -> Any:
        return claims

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://downstream") as client:
        response = await client.get("/projects", headers=bearer(token))
    assert response.status_code == 503


# -- require_scopes in a downstream FastAPI app ---------------------------------------


@pytest.fixture
async def downstream(verifier: TokenVerifier) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()

    @app.get("/projects")
    async def projects(
        claims: dict[str, Any] = Depends(require_scopes(verifier, "projects:read")),
    ) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    @app.get("/billing")
    async def billing(
        claims: dict[str, Any] = Depends(
            require_scopes(verifier, "billing:write", "projects:read")
        ),
    ) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://downstream") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_require_scopes_without_a_token_is_401(downstream: httpx.AsyncClient) -> None:
    response = await downstream.get("/projects")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    response = await downstream.get("/projects", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_require_scopes_with_a_bad_token_is_401_invalid_token(
    downstream: httpx.AsyncClient, tokens: dict[str, Any]
) -> None:
    for token in ("garbage", tokens["api_key"], tokens["access_token"][:-3] + "abc"):
        response = await downstream.get("/projects", headers=bearer(token))
        assert response.status_code == 401
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"')
        assert token not in challenge and token not in response.text


async def test_require_scopes_missing_scope_is_403(
    server: Server, downstream: httpx.AsyncClient, tokens: dict[str, Any]
) -> None:
    response = await downstream.get("/billing", headers=bearer(tokens["access_token"]))
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="billing:write projects:read"'
    )
    # `admin` is not a wildcard for a deployment's own scopes.
    admin = server.password_token(server.admin_username, server.admin_password)
    assert "admin" in admin["scope"].split()
    response = await downstream.get("/projects", headers=bearer(admin["access_token"]))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


async def test_require_scopes_gives_the_claims(
    downstream: httpx.AsyncClient, tokens: dict[str, Any]
) -> None:
    response = await downstream.get("/projects", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.json()["sub"] == parts(tokens["access_token"])[1]["sub"]
