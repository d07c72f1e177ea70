"""KeyServiceAuth against a real server: exchange, refresh, fallbacks, concurrency, logging."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import keyservice.client
import keyservice.verify
from keyservice.client import KeyServiceAuth, TokenExchangeError

from .support import ACCESS_TOKEN_TTL, Server, TokenLog, no_secret_hook

pytestmark = pytest.mark.e2e

# Past the adaptive refresh point (half the 3 s lifetime) and past expiry itself.
PAST_EXPIRY = ACCESS_TOKEN_TTL + 0.5


def secret_part(api_key: str) -> str:
    return api_key.split("_", 2)[2]


def test_sync_requests_exchange_once_then_refresh(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    with token_log.client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, token_client=token_client)
        hook = no_secret_hook(api_key, secret_part(api_key))
        with httpx.Client(base_url=server.url, auth=auth, event_hooks={"request": [hook]}) as c:
            for _ in range(10):
                assert c.get("/me").status_code == 200
            # Not one refresh per request (one at most if the server was slow to answer).
            assert token_log.exchanges == 1 and token_log.refreshes <= 1
            time.sleep(PAST_EXPIRY)
            for _ in range(3):
                assert c.get("/me").status_code == 200
    assert token_log.exchanges == 1
    assert token_log.refreshes >= 1
    assert all(status == 200 for _, status, _, _ in token_log.responses)


async def test_async_requests_exchange_once_then_refresh(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    async with token_log.async_client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, async_token_client=token_client)
        hook = no_secret_hook(api_key, secret_part(api_key))

        async def ahook(request: httpx.Request) -> None:
            hook(request)

        async with httpx.AsyncClient(
            base_url=server.url, auth=auth, event_hooks={"request": [ahook]}
        ) as c:
            for _ in range(10):
                assert (await c.get("/me")).status_code == 200
            await asyncio.sleep(PAST_EXPIRY)
            assert (await c.get("/me")).status_code == 200
    assert token_log.exchanges == 1
    assert token_log.refreshes >= 1


async def test_twenty_concurrent_tasks_on_a_cold_client_exchange_once(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    async with token_log.async_client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, async_token_client=token_client)
        async with httpx.AsyncClient(base_url=server.url, auth=auth) as c:
            responses = await asyncio.gather(*(c.get("/me") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert token_log.exchanges == 1


async def test_the_server_audit_log_agrees_one_exchange(server: Server) -> None:
    """Count on the service's side too, with the default internal token client."""
    key = server.create_key()
    auth = KeyServiceAuth(key["api_key"], server.token_url)
    async with httpx.AsyncClient(base_url=server.url, auth=auth) as c:
        responses = await asyncio.gather(*(c.get("/me") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    types = audit_types(server, key["id"])
    assert types.count("token.exchange") == 1


async def test_concurrent_tasks_share_one_refused_exchange(
    server: Server, token_log: TokenLog
) -> None:
    """Callers waiting for a token request that fails get its error, not a request each."""
    key = server.create_key()
    server.delete_key(key)
    async with token_log.async_client() as token_client:
        auth = KeyServiceAuth(key["api_key"], server.token_url, async_token_client=token_client)
        async with httpx.AsyncClient(base_url=server.url, auth=auth) as c:
            results = await asyncio.gather(
                *(c.get("/me") for _ in range(20)), return_exceptions=True
            )
    assert all(isinstance(r, TokenExchangeError) for r in results), results
    assert {r.error for r in results if isinstance(r, TokenExchangeError)} == {"invalid_client"}
    assert len({id(r) for r in results}) == 20  # each caller raises its own exception
    assert token_log.exchanges == 1
    assert audit_types(server, key["id"]).count("token.exchange") == 1


async def test_concurrent_tasks_share_one_timeout(silent_port: int) -> None:
    """A hung token endpoint costs the waiting callers one timeout, not one each in turn."""
    requests: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request)

    async with httpx.AsyncClient(timeout=0.5, event_hooks={"request": [record]}) as token_client:
        auth = KeyServiceAuth(
            "ksk_" + "A" * 16 + "_" + "B" * 49,
            f"http://127.0.0.1:{silent_port}/token",
            async_token_client=token_client,
        )
        async with httpx.AsyncClient(base_url="http://127.0.0.1:9", auth=auth) as c:
            results = await asyncio.gather(
                *(c.get("/me") for _ in range(5)), return_exceptions=True
            )
    assert all(isinstance(r, httpx.ReadTimeout) for r in results), results
    assert len(requests) == 1


def test_a_sync_request_inside_the_event_loop_of_a_token_request_raises(
    silent_port: int,
) -> None:
    """Waiting for the lock a task of the caller's own event loop holds would never end."""
    outcome: list[object] = []

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=3) as token_client:
            auth = KeyServiceAuth(
                "ksk_" + "A" * 16 + "_" + "B" * 49,
                f"http://127.0.0.1:{silent_port}/token",
                async_token_client=token_client,
            )
            async with httpx.AsyncClient(base_url="http://127.0.0.1:9", auth=auth) as c:
                hung = asyncio.create_task(c.get("/me"))
                await asyncio.sleep(0.2)  # the task now waits for the token endpoint
                with httpx.Client(base_url="http://127.0.0.1:9", auth=auth) as blocking:
                    try:
                        blocking.get("/me")  # a blocking call in async code
                    except RuntimeError as exc:
                        outcome.append(exc)
                with pytest.raises(httpx.ReadTimeout):
                    await hung

    thread = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the event loop deadlocked"
    assert len(outcome) == 1 and "httpx.AsyncClient" in str(outcome[0])


def test_twenty_threads_on_a_cold_client_exchange_once(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    barrier = threading.Barrier(20)
    with token_log.client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, token_client=token_client)
        with httpx.Client(base_url=server.url, auth=auth) as c:

            def call(_: int) -> int:
                barrier.wait()  # all threads hit the cold auth object at once
                return c.get("/me").status_code

            with ThreadPoolExecutor(max_workers=20) as pool:
                statuses = list(pool.map(call, range(20)))
    assert statuses == [200] * 20
    assert token_log.exchanges == 1


async def test_twenty_concurrent_tasks_on_a_due_token_refresh_once(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    # A refresh token presented twice revokes its family: the race must not happen.
    async with token_log.async_client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, async_token_client=token_client)
        async with httpx.AsyncClient(base_url=server.url, auth=auth) as c:
            assert (await c.get("/me")).status_code == 200
            await asyncio.sleep(PAST_EXPIRY)
            responses = await asyncio.gather(*(c.get("/me") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert token_log.exchanges == 1
    assert token_log.refreshes >= 1  # more only if the new 3 s token fell due meanwhile
    assert token_log.count("refresh_token", 400) == 0
    presented = token_log.presented_refresh_tokens
    assert len(presented) == len(set(presented)), "a refresh token was presented twice"


class HoldingTransport(httpx.HTTPTransport):
    """Token requests to the real server, with refreshes held until released (a hang)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if b"grant_type=refresh_token" in request.read():
            self.entered.set()
            self.release.wait(5)
        return super().handle_request(request)


def test_threads_with_a_live_token_do_not_wait_for_a_hung_refresh(
    server: Server, api_key: str
) -> None:
    transport = HoldingTransport()
    with httpx.Client(transport=transport, timeout=10) as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, token_client=token_client)
        with httpx.Client(base_url=server.url, auth=auth) as c:
            assert c.get("/me").status_code == 200
            held = auth._token
            assert held is not None
            # Due for its early refresh, still alive for a while (the server's TTL is 3 s).
            auth._token = dataclasses.replace(held, refresh_at=float("-inf"))
            with ThreadPoolExecutor(max_workers=1) as pool:
                renewing = pool.submit(c.get, "/me")
                assert transport.entered.wait(10)
                started = time.monotonic()
                statuses = [c.get("/me").status_code for _ in range(3)]
                waited = time.monotonic() - started
                assert not renewing.done()
                transport.release.set()
                assert renewing.result(timeout=10).status_code == 200
    assert statuses == [200] * 3
    assert waited < 1, "callers holding a live token waited for the hung refresh"


FORK_SCRIPT = """
import dataclasses, json, os, sys
import httpx
from keyservice.client import KeyServiceAuth

url, api_key = sys.argv[1], sys.argv[2]
grants = []
hook = lambda r: grants.append(dict(httpx.QueryParams(r.content.decode()))["grant_type"])
token_client = httpx.Client(timeout=10, event_hooks={"request": [hook]})
auth = KeyServiceAuth(api_key, url + "/token", token_client=token_client)
client = httpx.Client(base_url=url, auth=auth, timeout=10)
statuses = [client.get("/me").status_code]  # at start-up, before the workers fork

def renew():  # due for the early refresh, as a while later
    auth._token = dataclasses.replace(auth._token, refresh_at=float("-inf"))
    del grants[:]
    return client.get("/me").status_code

read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    os.write(write, json.dumps({"status": renew(), "grants": grants}).encode())
    os._exit(0)
os.close(write)
os.waitpid(pid, 0)
child = json.loads(os.read(read, 65536))
print(json.dumps({"child": child, "parent": {"status": renew(), "grants": grants}}))
"""


def test_a_forked_child_does_not_present_the_parents_refresh_token(server: Server) -> None:
    """A worker forked after start-up used the auth object gets its own token from the key."""
    key = server.create_key()
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, server.url, key["api_key"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["child"] == {"status": 200, "grants": ["client_credentials"]}
    assert result["parent"] == {"status": 200, "grants": ["refresh_token"]}
    types = audit_types(server, key["id"])
    assert "token.refresh_reuse" not in types
    assert types.count("token.refresh") == 1


def test_threads_and_event_loops_share_one_exchange(server: Server) -> None:
    """Sync threads and tasks on several event loops (one per thread) share one token."""
    key = server.create_key()
    auth = KeyServiceAuth(key["api_key"], server.token_url)
    barrier = threading.Barrier(8)

    async def async_calls(wait: bool = True) -> list[int]:
        if wait:
            barrier.wait()
        async with httpx.AsyncClient(base_url=server.url, auth=auth) as c:
            return [r.status_code for r in await asyncio.gather(*(c.get("/me") for _ in range(5)))]

    def sync_calls() -> list[int]:
        barrier.wait()
        with httpx.Client(base_url=server.url, auth=auth) as c:
            return [c.get("/me").status_code for _ in range(5)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(asyncio.run, async_calls()) for _ in range(4)]
        futures += [pool.submit(sync_calls) for _ in range(4)]
        statuses = [status for future in futures for status in future.result()]
    assert statuses == [200] * 40
    # The same auth object keeps working on yet another loop (its asyncio lock is per loop).
    assert asyncio.run(async_calls(wait=False)) == [200] * 5
    types = audit_types(server, key["id"])
    assert types.count("token.exchange") == 1


def audit_types(server: Server, key_id: str) -> list[str]:
    """Return the audit event types recorded for a key, once its first events are in."""
    deadline = time.monotonic() + 6  # events are readable within 5 s
    while True:
        with server.admin_client() as admin:
            page = admin.get("/admin/audit-events", params={"key_id": key_id, "limit": 500})
        assert page.status_code == 200, page.text
        types = [event["type"] for event in page.json()["items"]]
        if types or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(0.5)  # a second exchange, had there been one, is in by now too
    with server.admin_client() as admin:
        page = admin.get("/admin/audit-events", params={"key_id": key_id, "limit": 500})
    return [event["type"] for event in page.json()["items"]]


def test_default_internal_client_works(server: Server, api_key: str) -> None:
    auth = KeyServiceAuth(api_key, server.token_url)
    with httpx.Client(base_url=server.url, auth=auth) as c:
        me = c.get("/me")
    assert me.status_code == 200
    assert "api_keys:manage" in me.json()["permissions"]


async def test_default_internal_async_client_works(server: Server, api_key: str) -> None:
    auth = KeyServiceAuth(api_key, server.token_url)
    async with httpx.AsyncClient(base_url=server.url, auth=auth) as c:
        assert (await c.get("/me")).status_code == 200


def test_refused_key_raises_token_exchange_error(server: Server, api_key: str) -> None:
    client_id_part = api_key[:21]  # ksk_ + 16 + _
    wrong = client_id_part + "x" * (len(api_key) - len(client_id_part))
    auth = KeyServiceAuth(wrong, server.token_url)
    with httpx.Client(base_url=server.url, auth=auth) as c, pytest.raises(TokenExchangeError) as e:
        c.get("/me")
    assert e.value.error == "invalid_client"
    assert e.value.status_code == 401
    assert e.value.description
    assert "invalid_client" in str(e.value)
    assert wrong not in str(e.value) and "x" * 20 not in str(e.value)


async def test_refused_key_raises_in_async_too(server: Server) -> None:
    auth = KeyServiceAuth("ksk_" + "A" * 16 + "_" + "B" * 49, server.token_url)
    async with httpx.AsyncClient(base_url=server.url, auth=auth) as c:
        with pytest.raises(TokenExchangeError, match="invalid_client"):
            await c.get("/me")


def test_revoked_key_is_refused_at_the_next_exchange(server: Server) -> None:
    key = server.create_key()
    server.delete_key(key)
    auth = KeyServiceAuth(key["api_key"], server.token_url)
    with httpx.Client(base_url=server.url, auth=auth) as c, pytest.raises(TokenExchangeError) as e:
        c.get("/me")
    assert e.value.error == "invalid_client"


def test_spent_refresh_token_falls_back_to_an_exchange(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    with token_log.client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, token_client=token_client)
        with httpx.Client(base_url=server.url, auth=auth) as c:
            assert c.get("/me").status_code == 200
            # Someone else uses the refresh token first (as a leaked copy would).
            stolen = token_log.last_refresh_token()
            with httpx.Client(base_url=server.url) as other:
                spent = other.post(
                    "/token", data={"grant_type": "refresh_token", "refresh_token": stolen}
                )
            assert spent.status_code == 200
            time.sleep(PAST_EXPIRY)
            assert c.get("/me").status_code == 200
    assert token_log.count("refresh_token", 400) == 1
    assert token_log.exchanges == 2
    assert token_log.requests[-2:] == ["refresh_token", "client_credentials"]


def test_401_refreshes_once_and_retries(server: Server, api_key: str, token_log: TokenLog) -> None:
    seen: list[str] = []

    def record(request: httpx.Request) -> None:
        seen.append(request.headers["Authorization"])

    with token_log.client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, token_client=token_client)
        with httpx.Client(base_url=server.url, auth=auth, event_hooks={"request": [record]}) as c:
            assert c.get("/me").status_code == 200
            # Make the held access token one the server refuses, while it is not yet due.
            held = auth._token
            assert held is not None
            auth._token = dataclasses.replace(held, access_token=held.access_token[:-4] + "AAAA")
            response = c.get("/me")
            me = c.get("/me")
    assert response.status_code == 200
    assert me.status_code == 200
    assert (token_log.exchanges, token_log.refreshes) == (1, 1)
    assert len(seen) == 4  # first GET, rejected GET, its retry, last GET
    assert seen[1] != seen[2]


@contextlib.asynccontextmanager
async def refusing_api(
    auth: KeyServiceAuth, bodies: list[bytes] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a downstream API that answers 401 to every token (its clock or audience
    set wrong); the bodies it was sent go to `bodies` when given."""

    async def always_401(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        if bodies is not None:
            bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(app=always_401)
    async with httpx.AsyncClient(
        base_url="http://downstream", transport=transport, auth=auth
    ) as client:
        yield client


async def test_401_twice_returns_the_401_after_one_retry(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    bodies: list[bytes] = []
    async with token_log.async_client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, async_token_client=token_client)
        async with refusing_api(auth, bodies) as c:
            response = await c.post("/anything", json={"n": 1})
    assert response.status_code == 401
    assert bodies == [b'{"n":1}', b'{"n":1}']  # the body was replayed on the retry
    assert (token_log.exchanges, token_log.refreshes) == (1, 1)


async def test_an_api_refusing_fresh_tokens_gets_no_renewal_per_request(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    async with token_log.async_client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, async_token_client=token_client)
        async with refusing_api(auth) as c:
            statuses = [(await c.get("/anything")).status_code for _ in range(10)]
            assert (token_log.exchanges, token_log.refreshes) == (1, 1)
            # Once the pause is over, a 401 is worth one more renewal.
            assert auth._token is not None and auth._token.after_401 is not None
            auth._token.after_401.at -= 30
            statuses.append((await c.get("/anything")).status_code)
    assert statuses == [401] * 11
    assert (token_log.exchanges, token_log.refreshes) == (1, 2)


def test_an_api_refusing_fresh_tokens_gets_no_renewal_per_request_sync(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    def always_401(environ: Any, start_response: Any) -> list[bytes]:
        start_response("401 Unauthorized", [])
        return [b""]

    with token_log.client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, token_client=token_client)
        transport = httpx.WSGITransport(app=always_401)
        with httpx.Client(base_url="http://downstream", transport=transport, auth=auth) as c:
            statuses = [c.get("/anything").status_code for _ in range(10)]
    assert statuses == [401] * 10
    assert (token_log.exchanges, token_log.refreshes) == (1, 1)


async def test_a_token_renewed_after_a_401_and_accepted_is_renewed_after_the_next(
    server: Server, api_key: str, token_log: TokenLog
) -> None:
    """Its session revoked twice in a row, the caller still sees no 401."""
    async with token_log.async_client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, async_token_client=token_client)
        async with httpx.AsyncClient(base_url=server.url, auth=auth) as c:
            assert (await c.get("/me")).status_code == 200
            for exchanges in (2, 3):
                assert auth._token is not None and auth._token.refresh_token is not None
                async with httpx.AsyncClient(base_url=server.url) as plain:
                    form = {"token": auth._token.refresh_token}
                    assert (await plain.post("/revoke", data=form)).status_code == 200
                response = await c.get("/me")  # 401, renewed from the key, retried
                assert response.status_code == 200, response.text
                assert token_log.count("client_credentials", 200) == exchanges


def test_repr_masks_the_key(server: Server, api_key: str) -> None:
    auth = KeyServiceAuth(api_key, server.token_url)
    text = repr(auth)
    assert api_key[:21] + "…" in text
    assert secret_part(api_key) not in text
    assert secret_part(api_key)[:8] not in text
    assert str(auth) == text


def test_legacy_key_is_masked_entirely() -> None:
    auth = KeyServiceAuth("legacy-secret-value-123", "http://127.0.0.1:9/token")
    assert "legacy" not in repr(auth)
    assert "api_key='…'" in repr(auth)


def test_plain_http_token_url_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="keyservice.client")
    KeyServiceAuth("ksk_" + "A" * 16 + "_secret", "http://127.0.0.1:9/token")
    assert caplog.records == []
    KeyServiceAuth("ksk_" + "A" * 16 + "_secret", "http://keys.example.com/token")
    [record] = caplog.records
    assert "plain HTTP" in record.getMessage() and "secret" not in record.getMessage()


def test_a_password_in_the_token_url_is_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="keyservice.client")
    auth = KeyServiceAuth("ksk_" + "A" * 16 + "_secret", "http://gw:pass-w0rd@keys.example.com/t")
    [record] = caplog.records
    for text in (record.getMessage(), repr(auth), str(auth)):
        assert "pass-w0rd" not in text and "http://gw:***@keys.example.com/t" in text
    assert auth.token_url == "http://gw:pass-w0rd@keys.example.com/t"  # still used as given


def test_key_and_token_url_from_the_environment(
    server: Server, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSERVICE_API_KEY", api_key)
    monkeypatch.setenv("KEYSERVICE_TOKEN_URL", server.token_url)
    with httpx.Client(base_url=server.url, auth=KeyServiceAuth()) as c:
        assert c.get("/me").status_code == 200
    monkeypatch.delenv("KEYSERVICE_API_KEY")
    with pytest.raises(ValueError, match="KEYSERVICE_API_KEY"):
        KeyServiceAuth()


def test_scope_narrows_the_token(server: Server, api_key: str, token_log: TokenLog) -> None:
    with token_log.client() as token_client:
        auth = KeyServiceAuth(
            api_key, server.token_url, scope=["projects:read"], token_client=token_client
        )
        with httpx.Client(base_url=server.url, auth=auth) as c:
            assert c.get("/me").status_code == 200
    assert token_log.responses[0][2]["scope"] == "projects:read"


def test_sunset_is_logged_once_per_auth_object(
    server: Server, token_log: TokenLog, caplog: pytest.LogCaptureFixture
) -> None:
    expires_at = (datetime.now(UTC) + timedelta(days=3)).isoformat().replace("+00:00", "Z")
    key = server.create_key(expires_at=expires_at)
    api_key = key["api_key"]
    caplog.set_level(logging.INFO, logger="keyservice.client")
    with token_log.client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, token_client=token_client)
        with httpx.Client(base_url=server.url, auth=auth) as c:
            assert c.get("/me").status_code == 200
            # Force a second exchange: spend the refresh token elsewhere, then let it age.
            stolen = token_log.last_refresh_token()
            with httpx.Client(base_url=server.url) as other:
                other.post("/token", data={"grant_type": "refresh_token", "refresh_token": stolen})
            time.sleep(PAST_EXPIRY)
            assert c.get("/me").status_code == 200
    sunsets = [h for g, s, _, h in token_log.responses if g == "client_credentials" and s == 200]
    assert len(sunsets) == 2 and all("Sunset" in h for h in sunsets)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert key["client_id"][3:] in message  # names the key by its public part
    secrets_seen = [api_key, secret_part(api_key), stolen]
    secrets_seen += [b["access_token"] for _, _, b, _ in token_log.responses if "access_token" in b]
    for record in caplog.records:
        for secret in secrets_seen:
            assert secret not in record.getMessage()

    # A second auth object warns again: the warning is per object, not per process.
    caplog.clear()
    with httpx.Client(base_url=server.url, auth=KeyServiceAuth(api_key, server.token_url)) as c:
        assert c.get("/me").status_code == 200
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_key_far_from_expiry_logs_no_warning(
    server: Server, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyservice.client")
    with httpx.Client(base_url=server.url, auth=KeyServiceAuth(api_key, server.token_url)) as c:
        assert c.get("/me").status_code == 200
    assert caplog.records == []


def test_a_redirecting_token_url_is_not_followed_and_says_so(server: Server) -> None:
    key = server.create_key()
    auth = KeyServiceAuth(key["api_key"], server.token_url + "/")  # the app redirects to /token
    with httpx.Client(base_url=server.url, auth=auth) as c, pytest.raises(TokenExchangeError) as e:
        c.get("/me")
    assert e.value.status_code == 307
    assert "redirects to" in str(e.value) and server.token_url in str(e.value)
    assert "set token_url" in str(e.value)
    assert audit_types(server, key["id"]) == ["api_key.created"]  # the key never arrived


def test_token_exchange_error_survives_pickling() -> None:
    """It crosses process boundaries (multiprocessing, ProcessPoolExecutor) intact."""
    error = TokenExchangeError("slow_down", "Wait.", status_code=429, retry_after=3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.error, copy.description, copy.status_code, copy.retry_after) == (
        "slow_down",
        "Wait.",
        429,
        3.0,
    )
    assert str(copy) == str(error)


def test_the_sdks_deadlines_count_a_system_suspend() -> None:
    # `time.monotonic` stops while Linux (or macOS) is suspended: after a night's sleep the
    # client took a token that had expired hours before for fresh.
    if sys.platform.startswith("linux"):
        assert keyservice.client.elapsed.args == (time.CLOCK_BOOTTIME,)  # type: ignore[attr-defined]
        assert abs(keyservice.client.elapsed() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1
    assert keyservice.verify.elapsed is keyservice.client.elapsed  # the JWKS cache's too


def test_a_client_waking_from_sleep_renews_before_sending_its_token(
    server: Server, api_key: str, token_log: TokenLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = keyservice.client.elapsed
    slept = [0.0]  # what the suspend-counting clock reports on waking, and monotonic not
    monkeypatch.setattr(keyservice.client, "elapsed", lambda: real() + slept[0])
    with token_log.client() as token_client:
        auth = KeyServiceAuth(api_key, server.token_url, token_client=token_client)
        with httpx.Client(base_url=server.url, auth=auth) as c:
            assert c.get("/me").status_code == 200
            assert (token_log.exchanges, token_log.refreshes) == (1, 0)
            slept[0] = 8 * 3600.0  # the token, and its refresh token, are long gone
            assert c.get("/me").status_code == 200
    assert token_log.exchanges == 2  # exchanged again before the request, not after a 401
    assert all(status == 200 for _, status, _, _ in token_log.responses)
