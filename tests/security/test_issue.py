"""Signing access tokens: the JWS PyJWT builds from the claims we serialize."""

from __future__ import annotations

import base64
import json
import time

import jwt

from tests.factories import user_token


def _segment(token: str, index: int) -> dict[str, object]:
    part = token.split(".")[index]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


async def test_an_issued_token_carries_exactly_its_claims_and_verifies(client, context):
    await user_token(context, client, "ines", ["projects:read"])  # the app has a signing key
    now = int(time.time())
    claims = {"sub": "p-1", "scope": "a:read b:write", "principal_type": "user", "sid": "s-1"}
    token, exp = context.keyring.issue(dict(claims, client_id="kc_ünïcode"), now=now)
    header = _segment(token, 0)
    assert header == {"alg": "ES256", "kid": context.keyring.current_kid, "typ": "at+jwt"}
    payload = _segment(token, 1)
    assert set(payload) == {*claims, "client_id", "iss", "aud", "iat", "exp", "jti"}
    assert {name: payload[name] for name in claims} == claims
    assert payload["client_id"] == "kc_ünïcode"  # UTF-8 in the payload, as RFC 7519 has it
    assert payload["iat"] == now
    assert payload["exp"] == exp == now + context.settings.access_token_ttl
    assert payload["iss"] == context.settings.issuer and payload["aud"]
    # It verifies: through our keyring and through PyJWT with the published key.
    verified = context.keyring.verify(token)
    assert verified["sub"] == "p-1" and verified["client_id"] == "kc_ünïcode"
    jwk = next(k for k in context.keyring.jwks()["keys"] if k["kid"] == header["kid"])
    public = jwt.PyJWK(jwk).key
    decoded = jwt.decode(
        token, public, algorithms=["ES256"], audience=payload["aud"], issuer=payload["iss"]
    )
    assert decoded == payload
