"""The verified-token cache: what a caller builds from a token's claims is built once."""

from __future__ import annotations

from typing import Any

import pytest

from keyservice.security.jwt import TokenError
from tests.factories import bearer, set_principal, user_token


async def test_verify_as_builds_once_per_token_and_again_after_forgetting(client, context):
    token = await user_token(context, client, "vera", ["projects:read"])
    other = await user_token(context, client, "otto", ["projects:read"])
    built: list[str] = []

    def build(claims: dict[str, Any]) -> tuple[str, str]:
        built.append(claims["sub"])
        return ("built", claims["sub"])

    first = context.keyring.verify_as(token, build)
    assert context.keyring.verify_as(token, build) is first  # kept with the verification
    assert first == ("built", context.keyring.verify(token)["sub"])
    assert context.keyring.verify_as(other, build) != first  # per token
    assert len(built) == 2
    # Another builder is not handed the first one's result.
    assert context.keyring.verify_as(token, lambda claims: "other") == "other"
    context.keyring.forget_verified()
    assert context.keyring.verify_as(token, build) == first
    assert built == [first[1], built[1], first[1]]  # built again once the cache was cleared


async def test_verify_as_refuses_what_verify_refuses(client, context):
    token = await user_token(context, client, "vic", ["projects:read"])
    calls: list[Any] = []
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(TokenError):
        context.keyring.verify_as(tampered, calls.append)
    assert calls == []  # nothing is built from a token that did not verify


async def test_a_cached_caller_is_still_checked_against_revocation(client, context):
    # The caller built from a token is cached; whether the token still counts is not.
    token = await user_token(context, client, "val", ["projects:read"])
    for _ in range(2):  # the second answer comes from the cache
        seen = await client.get("/me/token", headers=bearer(token))
        assert seen.status_code == 200
    await set_principal(context, seen.json()["sub"], disabled=True)
    refused = await client.get("/me/token", headers=bearer(token))
    assert refused.status_code == 401
    assert refused.json()["error_description"] == (
        "The access token is no longer valid: the account behind this token is disabled."
    )
