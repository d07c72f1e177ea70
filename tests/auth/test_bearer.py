"""Bearer authentication (RFC 6750 §3) and our access tokens (RFC 9068)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from keyservice.principals.schemas import TokenRead
from keyservice.security.tokens import compose_api_key, new_client_id, new_client_secret
from tests.factories import bearer, create_key, exchange, login, replica_signs, user_token

PERMS = ["api_keys:manage", "projects:read"]


async def test_missing_malformed_and_api_key_tokens(client, context):
    token = await user_token(context, client, "alice", PERMS)
    key = await create_key(client, token, name="k")

    missing = await client.get("/me")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"

    for value in ("Bearer not.a.jwt", "Bearer " + key["api_key"], "Bearer "):
        response = await client.get("/me", headers={"Authorization": value})
        assert response.status_code == 401, value
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', value
    api_key_answer = await client.get("/me", headers=bearer(key["api_key"]))
    assert "exchange it at /token" in api_key_answer.json()["error_description"]


async def test_another_scheme_gets_the_bare_bearer_challenge(client, context):
    """RFC 6750 §3.1: a request that used an unsupported authentication method lacks
    bearer credentials: 401 with the challenge and no error code, as when none was sent."""
    token = await user_token(context, client, "bea", PERMS + ["introspect"])
    key = await create_key(client, token, name="k")
    pair = f"{key['client_id']}:{key['client_secret']}".encode()
    for value in ("Basic " + base64.b64encode(pair).decode(), "Basic abc", key["api_key"]):
        for method, path in (("GET", "/me"), ("POST", "/introspect")):
            response = await client.request(
                method, path, headers={"Authorization": value}, data={"token": token}
            )
            assert response.status_code == 401, (path, value)
            assert response.headers["www-authenticate"] == "Bearer", (path, value)
            body = response.json()
            assert body["error"] != "invalid_token"
            assert "Authorization: Bearer" in body["error_description"]
            assert key["client_secret"] not in response.text


async def test_two_authorization_headers_are_invalid_request(client, context):
    """RFC 6750 §3.1: a malformed request is 400, not an answer for one of the two."""
    token = await user_token(context, client, "dora", PERMS + ["introspect"])
    key = await create_key(client, token, name="k")
    pair = f"{key['client_id']}:{key['client_secret']}".encode()
    basic = "Basic " + base64.b64encode(pair).decode()
    good, junk = f"Bearer {token}", "Bearer junk"
    form = {"grant_type": "client_credentials", "token": "x"}
    for method, path, first, second in [
        ("GET", "/me", good, junk),
        ("GET", "/me", junk, good),
        ("GET", "/me/token", good, good),
        ("POST", "/introspect", good, junk),
        ("POST", "/token", basic, "Basic junk"),
        ("POST", "/revoke", "Basic junk", basic),
    ]:
        response = await client.request(
            method,
            path,
            data=form if method == "POST" else None,
            headers=[("Authorization", first), ("Authorization", second)],
        )
        assert response.status_code == 400, (path, response.text)
        assert response.json() == {
            "error": "invalid_request",
            "error_description": "Send one Authorization header.",
        }
        assert response.headers["cache-control"] == "no-store"  # once, not twice
        assert response.headers["x-content-type-options"] == "nosniff"  # the edge's too
        bearer_endpoint = path not in ("/token", "/revoke")
        assert response.headers.get("www-authenticate") == (
            'Bearer error="invalid_request"' if bearer_endpoint else None
        ), path
    assert (await client.get("/me", headers=bearer(token))).status_code == 200


async def test_insufficient_scope_is_403(client, context):
    await user_token(context, client, "bob", PERMS)
    narrow = (await login(client, "bob", scope="projects:read"))["access_token"]
    response = await client.get("/api-keys", headers=bearer(narrow))
    assert response.status_code == 403
    assert response.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    assert (await client.get("/me", headers=bearer(narrow))).status_code == 200


async def test_claims_and_stock_verification(client, context):
    token = await user_token(context, client, "carol", PERMS)
    key = await create_key(client, token, name="k")
    access = (await exchange(client, key["api_key"])).json()["access_token"]
    header = jwt.get_unverified_header(access)
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"]
    jwks = (await client.get("/.well-known/jwks.json")).json()
    signing = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert "d" not in signing  # never the private part
    claims = jwt.decode(
        access,
        jwt.PyJWK(signing).key,
        algorithms=["ES256"],
        audience="http://keyservice.test",
        issuer="http://keyservice.test",
    )
    me = (await client.get("/me", headers=bearer(access))).json()
    assert claims["sub"] == me["id"]
    assert claims["client_id"] == key["client_id"]
    assert claims["principal_type"] == "user"
    assert claims["exp"] - claims["iat"] == 7200
    assert claims["sid"] and claims["jti"] and claims["scope"] == "api_keys:manage projects:read"
    password_claims = jwt.decode(token, options={"verify_signature": False})
    assert "client_id" not in password_claims


def _hs256(payload: dict, header: dict, secret: bytes) -> str:
    """Sign by hand: PyJWT itself refuses to use a public key as an HMAC secret."""
    import hashlib
    import hmac

    enc = jwt.utils.base64url_encode
    signing_input = (
        enc(json.dumps({**header, "alg": "HS256"}).encode())
        + b"."
        + enc(json.dumps(payload).encode())
    )
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + enc(signature)).decode()


async def test_forged_tokens_are_refused(client, context):
    token = await user_token(context, client, "dave", PERMS)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    jwks = (await client.get("/.well-known/jwks.json")).json()
    public_jwk = json.dumps(jwks["keys"][0])
    public_pem = jwt.PyJWK(jwks["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    head, body, sig = token.split(".")
    none_header = jwt.utils.base64url_encode(
        json.dumps({"alg": "none", "typ": "at+jwt", "kid": header["kid"]}).encode()
    ).decode()
    elevated = dict(claims, scope="admin")
    elevated_body = jwt.utils.base64url_encode(json.dumps(elevated).encode()).decode()
    forged = [
        f"{none_header}.{body}.",
        f"{head}.{elevated_body}.{sig}",  # swapped payload, original signature
        _hs256(claims, {"typ": "at+jwt", "kid": header["kid"]}, public_jwk.encode()),
        _hs256(claims, {"typ": "at+jwt", "kid": header["kid"]}, public_pem),
    ]
    for value in forged:
        response = await client.get("/me", headers=bearer(value))
        assert response.status_code == 401, value
    # Our own key, but the wrong typ or audience or an expired token: still refused.
    keyring = context.keyring
    signing = keyring._keys[header["kid"]]
    now = int(time.time())
    for payload, extra in (
        (dict(claims), {"typ": "JWT"}),
        (dict(claims, aud="https://other.example"), {"typ": "at+jwt"}),
        (dict(claims, iss="https://other.example"), {"typ": "at+jwt"}),
        (dict(claims, exp=now - 1, iat=now - 100), {"typ": "at+jwt"}),
    ):
        value = jwt.encode(
            payload, signing.private_key, algorithm="ES256", headers={**extra, "kid": header["kid"]}
        )
        assert (await client.get("/me", headers=bearer(value))).status_code == 401


async def test_well_known_metadata(client):
    meta = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == "http://keyservice.test"
    assert meta["token_endpoint"] == "http://keyservice.test/token"
    assert meta["jwks_uri"] == "http://keyservice.test/.well-known/jwks.json"
    assert "client_credentials" in meta["grant_types_supported"]
    assert "admin" in meta["scopes_supported"]


async def test_metadata_lists_the_token_endpoint_methods_it_accepts(client, context):
    """RFC 8414 §2: the refresh_token and password grants are served without client
    authentication, so "none" is among the token endpoint's methods."""
    meta = (await client.get("/.well-known/oauth-authorization-server")).json()
    methods = meta["token_endpoint_auth_methods_supported"]
    assert set(methods) == {"client_secret_basic", "client_secret_post", "none"}
    # What "none" stands for: a refresh with no client authentication at all.
    await user_token(context, client, "nora", PERMS)
    signed_in = await login(client, "nora")
    refreshed = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": signed_in["refresh_token"]},
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_another_replicas_new_signing_key_is_picked_up(client, context, app):
    from sqlalchemy import select

    from keyservice.principals.models import Principal

    await user_token(context, client, "fred", PERMS)
    async with context.database.sessionmaker() as session:
        user = await session.scalar(select(Principal).where(Principal.name == "fred"))
    claims = {"sub": user.id, "scope": "projects:read", "principal_type": "user", "sid": "s"}
    token = await replica_signs(context, claims)
    assert (await client.get("/me", headers=bearer(token))).status_code == 200


def test_key_string_format():
    client_id, secret = new_client_id(), new_client_secret()
    key = compose_api_key(client_id, secret)
    assert key.startswith("ksk_") and client_id.startswith("kc_")
    assert all(c.isalnum() or c == "_" for c in key)
    with pytest.raises(AssertionError):
        assert key == compose_api_key(new_client_id(), secret)


async def test_me_token_describes_the_presented_token(client, context):
    token = await user_token(context, client, "gail", PERMS)
    key = await create_key(client, token, name="k", scopes=["projects:read"])
    access = (await exchange(client, key["api_key"])).json()["access_token"]
    body = (await client.get("/me/token", headers=bearer(access))).json()
    claims = jwt.decode(access, options={"verify_signature": False})
    assert body == {
        "sub": claims["sub"],
        "principal_type": "user",
        "scope": ["projects:read"],
        "client_id": key["client_id"],
        "sid": claims["sid"],
        "exp": claims["exp"],
        "iat": claims["iat"],
    }
    # The endpoint builds its body itself; its documented model must describe it exactly.
    assert TokenRead.model_validate(body).model_dump() == body
    assert (await client.get("/me/token")).status_code == 401
