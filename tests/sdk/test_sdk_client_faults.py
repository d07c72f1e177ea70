"""KeyServiceAuth when token requests fail: lost answers, outages, throttling.

The service runs in-process on SQLite and on PostgreSQL (refresh tokens, their reuse
detection and the throttle are storage); a thin transport in front of it loses answers or
refuses connections the way a network would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from keyservice.client import KeyServiceAuth, TokenExchangeError
from keyservice.security.tokens import compose_api_key, new_client_secret
from tests.factories import audit_events, create_key, user_token

BASE = "http://keyservice.test"
TOKEN_URL = f"{BASE}/token"


class Faulty(httpx.AsyncBaseTransport):
    """The app's transport, with faults injected into the token requests that match."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        self.grants: list[str] = []  # grant types sent to /token, in order
        self.presented: list[str] = []  # refresh tokens sent to /token
        self.lose_answer: Callable[[str], bool] = lambda _grant: False
        self.down = False
        self.refused = 0  # connections refused while down
        self.hold: asyncio.Event | None = None  # refresh requests wait for it

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs((await request.aread()).decode())
        grant = form.get("grant_type", ["?"])[0]
        if self.down:
            self.refused += 1
            raise httpx.ConnectError("connection refused", request=request)
        self.grants.append(grant)
        self.presented += form.get("refresh_token", [])
        if self.hold is not None and grant == "refresh_token":
            await self.hold.wait()  # a hung token endpoint
        response = await self.inner.handle_async_request(request)
        if self.lose_answer(grant):
            # The service did the work; the answer never arrives.
            await response.aclose()
            raise httpx.ReadTimeout("timed out", request=request)
        return response


@pytest.fixture
async def key(client: httpx.AsyncClient, context: Any) -> dict[str, Any]:
    token = await user_token(context, client, "sdk-user", ["api_keys:manage"])
    return await create_key(client, token, name="sdk")


@pytest.fixture
def faulty(app: Any) -> Faulty:
    return Faulty(app)


def api(app: Any, auth: KeyServiceAuth) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url=BASE, auth=auth)


async def test_a_refresh_whose_answer_was_lost_is_not_presented_again(
    app: Any, context: Any, key: dict[str, Any], faulty: Faulty
) -> None:
    async with httpx.AsyncClient(transport=faulty) as token_client:
        auth = KeyServiceAuth(key["api_key"], TOKEN_URL, async_token_client=token_client)
        async with api(app, auth) as c:
            assert (await c.get("/me")).status_code == 200
            # The API refuses the held token, and the refresh's answer is lost on the way.
            held = auth._token
            assert held is not None
            auth._token = dataclasses.replace(held, access_token=held.access_token[:-4] + "AAAA")
            faulty.lose_answer = lambda grant: grant == "refresh_token"
            with pytest.raises(httpx.ReadTimeout):
                await c.get("/me")
            faulty.lose_answer = lambda _grant: False
            assert (await c.get("/me")).status_code == 200
    # The service used that refresh token: sending it again would be a replay.
    assert faulty.grants == ["client_credentials", "refresh_token", "client_credentials"]
    assert await audit_events(context, "token.refresh_reuse") == []


async def test_a_refused_refresh_token_is_not_presented_again(
    app: Any, context: Any, key: dict[str, Any], faulty: Faulty
) -> None:
    async with httpx.AsyncClient(transport=faulty) as token_client:
        auth = KeyServiceAuth(key["api_key"], TOKEN_URL, async_token_client=token_client)
        async with api(app, auth) as c:
            assert (await c.get("/me")).status_code == 200
            held = auth._token
            assert held is not None and held.refresh_token is not None
            # A leaked copy is refreshed elsewhere first...
            async with httpx.AsyncClient(transport=faulty.inner, base_url=BASE) as other:
                form = {"grant_type": "refresh_token", "refresh_token": held.refresh_token}
                assert (await other.post("/token", data=form)).status_code == 200
            # ...so the held token's early refresh is refused (and the family revoked), and
            # every exchange after it loses its answer for a while.
            auth._token = dataclasses.replace(held, refresh_at=float("-inf"))
            faulty.lose_answer = lambda grant: grant == "client_credentials"
            with pytest.raises(httpx.ReadTimeout):
                await c.get("/me")
            faulty.lose_answer = lambda _grant: False
            assert (await c.get("/me")).status_code == 200
    assert faulty.grants == [
        "client_credentials",
        "refresh_token",  # refused: already used
        "client_credentials",  # answer lost; the held token, revoked with its family, is 401
        "client_credentials",  # answer lost again
        "client_credentials",
    ]
    # One replay alarm (the refresh that found it used), not one more per later attempt.
    assert len(await audit_events(context, "token.refresh_reuse")) == 1


async def test_an_early_refresh_failing_in_an_outage_keeps_the_live_token(
    app: Any, key: dict[str, Any], faulty: Faulty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyservice.client")
    async with httpx.AsyncClient(transport=faulty) as token_client:
        auth = KeyServiceAuth(key["api_key"], TOKEN_URL, async_token_client=token_client)
        async with api(app, auth) as c:
            assert (await c.get("/me")).status_code == 200
            held = auth._token
            assert held is not None
            # Due for its early refresh (`leeway` before expiry), not expired.
            auth._token = dataclasses.replace(held, refresh_at=float("-inf"))
            faulty.down = True
            for _ in range(10):
                assert (await c.get("/me")).status_code == 200
            # One attempt and one warning, not one per request to an endpoint that is down.
            assert faulty.refused == 1
            # Once the pause has passed, the next request tries again.
            assert auth._failure is not None
            auth._failure = dataclasses.replace(auth._failure, at=auth._failure.at - 5)
            assert (await c.get("/me")).status_code == 200
            assert faulty.refused == 2
            # Once it has expired, nothing can bridge the outage.
            assert auth._token is not None
            auth._token = dataclasses.replace(auth._token, expires_at=float("-inf"))
            with pytest.raises(httpx.ConnectError):
                await c.get("/me")
            faulty.down = False
            assert (await c.get("/me")).status_code == 200
    # Connections were refused: the refresh token never reached the service and still works.
    assert faulty.grants == ["client_credentials", "refresh_token"]
    warnings = [r.getMessage() for r in caplog.records if "renewing" in r.getMessage()]
    assert len(warnings) == 2 and all("(ConnectError)" in w for w in warnings)
    for secret in (key["api_key"], held.access_token, held.refresh_token):
        assert all(secret not in r.getMessage() for r in caplog.records)


async def test_a_hung_early_refresh_does_not_hold_up_callers_with_a_live_token(
    app: Any, key: dict[str, Any], faulty: Faulty
) -> None:
    async with httpx.AsyncClient(transport=faulty) as token_client:
        auth = KeyServiceAuth(key["api_key"], TOKEN_URL, async_token_client=token_client)
        async with api(app, auth) as c:
            assert (await c.get("/me")).status_code == 200
            held = auth._token
            assert held is not None
            auth._token = dataclasses.replace(held, refresh_at=float("-inf"))  # due, alive
            faulty.hold = asyncio.Event()
            renewing = asyncio.create_task(c.get("/me"))
            while "refresh_token" not in faulty.grants:
                await asyncio.sleep(0.01)
            # The refresh hangs; the others go on with the live token meanwhile.
            others = await asyncio.wait_for(asyncio.gather(*(c.get("/me") for _ in range(5))), 5)
            assert [r.status_code for r in others] == [200] * 5
            assert not renewing.done()
            faulty.hold.set()
            assert (await renewing).status_code == 200
            assert auth._token is not None and auth._token.access_token != held.access_token
    assert faulty.grants == ["client_credentials", "refresh_token"]


@pytest.mark.parametrize("settings_overrides", [{"throttle_client_failures": 2}])
async def test_retry_after_is_honoured_after_slow_down(
    app: Any, key: dict[str, Any], faulty: Faulty
) -> None:
    wrong = compose_api_key(key["client_id"], new_client_secret())
    async with httpx.AsyncClient(transport=faulty) as token_client:
        auth = KeyServiceAuth(wrong, TOKEN_URL, async_token_client=token_client)
        async with api(app, auth) as c:
            errors = []
            for _ in range(4):
                with pytest.raises(TokenExchangeError) as caught:
                    await c.get("/me")
                errors.append(caught.value)
    assert [e.error for e in errors] == ["invalid_client"] * 2 + ["slow_down"] * 2
    # The last one was answered from the slow_down before it, without asking the service.
    assert faulty.grants == ["client_credentials"] * 3
    first, second = errors[2], errors[3]
    assert first.status_code == second.status_code == 429
    assert first.retry_after is not None and second.retry_after is not None
    assert 0 < second.retry_after <= first.retry_after <= 60
    assert second.description == first.description
    assert wrong not in str(second)
