"""50 concurrent refreshes of one token, 100 rounds: exactly one winner each time, no 5xx."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.conftest import BACKENDS
from tests.factories import create_key, user_token

pytestmark = pytest.mark.reliability

CONCURRENCY = 50
ROUNDS = 100


@pytest.mark.parametrize("database_url", [b for b in BACKENDS if b == "postgresql"], indirect=True)
async def test_one_winner_per_round(client, context):
    token = await user_token(context, client, "racer", ["api_keys:manage"])
    key = await create_key(client, token, name="race")
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    for round_ in range(ROUNDS):
        exchanged = await client.post(
            "/token", data={"grant_type": "client_credentials", "api_key": key["api_key"]}
        )
        assert exchanged.status_code == 200, exchanged.text
        refresh = exchanged.json()["refresh_token"]
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        responses = await asyncio.gather(
            *(client.post("/token", data=form) for _ in range(CONCURRENCY))
        )
        codes = Counter(r.status_code for r in responses)
        statuses.update(codes)
        assert codes[200] == 1, (round_, codes)
        assert codes[400] == CONCURRENCY - 1, (round_, codes)
        assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code != 200)
    elapsed = time.monotonic() - started
    print(f"\nrefresh race: {ROUNDS} rounds x {CONCURRENCY}: {dict(statuses)} in {elapsed:.1f} s")
    assert not any(code >= 500 for code in statuses)
