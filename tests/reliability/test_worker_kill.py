"""`kill -9` of a worker in the middle of refreshes: never two valid successors of one
refresh token, never a family left without a usable token, on the server's own books."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import httpx
import pytest

from tests.reliability.support import Server, admin_key
from tests.reliability.test_postgres_restart import assert_no_half_written_refresh

pytestmark = pytest.mark.reliability

CHAINS = 40
ROUNDS = 3


def test_kill_9_of_a_worker_mid_refresh(database: str, tmp_path):
    server = Server(database_url=database, data_dir=tmp_path / "server")
    server.start()
    try:
        keys = [k["api_key"] for k in admin_key(server.base_url, ["a", "b", "c"])]
        figures = asyncio.run(_run(server, keys))
    finally:
        server.terminate()
    figures.update(asyncio.run(assert_no_half_written_refresh(database)))
    print("\nkill -9 mid-refresh:", figures)
    assert figures["killed_workers"] == ROUNDS
    assert figures["doubled"] == 0
    assert figures["lost_families"] == 0
    assert figures["interrupted"] > 0, "no request was cut short; the test proves nothing"


async def _refresh(http: httpx.AsyncClient, token: str) -> httpx.Response | None:
    try:
        return await http.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": token}
        )
    except httpx.HTTPError:
        return None


def _kill_a_worker(server: Server) -> None:
    """SIGKILL one worker; the pick is made again if it exited since it was listed (uvicorn's
    supervisor also replaces workers, e.g. one that missed its health ping)."""
    for _attempt in range(5):
        victims = server.worker_pids()
        assert victims, server.log()
        try:
            os.kill(random.choice(victims), signal.SIGKILL)
            return
        except ProcessLookupError:
            continue
    raise AssertionError("no worker could be killed: " + server.log())


async def _run(server: Server, keys: list[str]) -> dict[str, int]:
    figures = {"killed_workers": 0, "interrupted": 0, "rolled_back": 0, "doubled": 0}
    figures |= {"committed_unacknowledged": 0, "lost_families": 0, "refreshes": 0}
    # A new connection per request, so that a killed worker's sockets cannot be reused.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20, limits=limits) as http:
        tokens: list[str] = []
        for index in range(CHAINS):
            response = await http.post(
                "/token",
                data={"grant_type": "client_credentials", "api_key": keys[index % len(keys)]},
            )
            assert response.status_code == 200, response.text
            tokens.append(response.json()["refresh_token"])
        for _round in range(ROUNDS):
            requests = [asyncio.create_task(_refresh(http, token)) for token in tokens]
            await asyncio.sleep(random.uniform(0.002, 0.02))
            _kill_a_worker(server)
            figures["killed_workers"] += 1
            results = await asyncio.gather(*requests)
            next_tokens: list[str] = []
            for token, response in zip(tokens, results, strict=True):
                figures["refreshes"] += 1
                if response is not None and response.status_code == 200:
                    next_tokens.append(response.json()["refresh_token"])
                    continue
                # Cut short (or 503): the old token is good again, unless the commit landed
                # and only the answer was lost (then the family is revoked on retry).
                figures["interrupted"] += 1
                retry = await _wait_for_answer(http, token)
                if retry.status_code == 200:
                    figures["rolled_back"] += 1
                    next_tokens.append(retry.json()["refresh_token"])
                elif retry.json().get("error") == "invalid_grant":
                    figures["committed_unacknowledged"] += 1
                else:
                    figures["lost_families"] += 1
            await _wait_for_workers(server)
            # Every token handed out is usable exactly once; presenting one twice at once
            # gives one winner.
            checks = await asyncio.gather(
                *(_refresh(http, token) for token in next_tokens),
                *(_refresh(http, token) for token in next_tokens[:5]),
            )
            winners = sum(1 for r in checks if r is not None and r.status_code == 200)
            figures["lost_families"] += len(next_tokens) - min(winners, len(next_tokens))
            figures["doubled"] += max(0, winners - len(next_tokens))
            tokens = [
                r.json()["refresh_token"]
                for r in checks[5 : len(next_tokens)]
                if r is not None and r.status_code == 200
            ]
            # Top the chains up again with fresh exchanges.
            while len(tokens) < CHAINS:
                response = await http.post(
                    "/token",
                    data={"grant_type": "client_credentials", "api_key": random.choice(keys)},
                )
                assert response.status_code == 200, response.text
                tokens.append(response.json()["refresh_token"])
    return figures


async def _wait_for_answer(http: httpx.AsyncClient, token: str) -> httpx.Response:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = await _refresh(http, token)
        if response is not None and response.status_code != 503:
            return response
        await asyncio.sleep(0.2)
    raise AssertionError("the server did not answer again within 20 s")


async def _wait_for_workers(server: Server) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(server.worker_pids()) >= server.workers:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the supervisor did not replace the killed worker:\n" + server.log())
