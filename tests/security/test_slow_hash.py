"""Password hashing (argon2, 64 MiB per hash) runs on a bounded pool off the event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from keyservice.security import hashing
from tests.admin.support import admin_request, admin_token
from tests.factories import login

# The tests hash at a cheap cost (conftest.py); the service's own is this one.
SERVICE_COST = "$argon2id$v=19$m=65536,t=3,p=4$"


@pytest.mark.real_argon2
def test_passwords_are_hashed_at_the_service_s_argon2_cost():
    assert hashing.hash_password("correct horse battery").startswith(SERVICE_COST)
    # An unknown username is checked against a hash of the same cost: the same time.
    assert hashing._DUMMY_PASSWORD_HASH.startswith(SERVICE_COST)


def test_other_tests_hash_at_a_cheap_cost():
    assert not hashing.hash_password("correct horse battery").startswith(SERVICE_COST)


async def test_slow_hashes_run_at_most_pool_size_at_once():
    lock = threading.Lock()
    running = 0
    most = 0

    def job(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return n * n

    results = await asyncio.gather(*(hashing.run_slow_hash(job, n) for n in range(8)))
    assert results == [n * n for n in range(8)]
    # Bounded, and still parallel: exactly the pool's size at the busiest moment.
    assert most == hashing.SLOW_HASH_THREADS == 2


_BURST = """
import asyncio, resource
from keyservice.security import hashing  # hashes a dummy password at import: one 64 MiB peak
stored = hashing.hash_password("correct horse battery")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
async def burst():
    return await asyncio.gather(
        *(hashing.run_slow_hash(hashing.verify_password, "wrong guess", stored) for _ in range(12))
    )
assert not any(asyncio.run(burst()))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_burst_of_sign_ins_holds_at_most_the_pool_s_argon2_memory():
    # Through asyncio.to_thread (up to cores + 4 threads) twelve concurrent checks raised a
    # process's peak by ~320 MB; two at a time add one more 64 MiB hash to the import's.
    out = subprocess.run(
        [sys.executable, "-c", _BURST], capture_output=True, text=True, timeout=120, check=True
    )
    grown_mb = int(out.stdout.strip()) / 1024
    assert grown_mb < 64 + 40, f"peak grew by {grown_mb:.0f} MB during the burst"


async def test_user_creation_and_sign_in_hash_on_the_pool(client, context):
    admin = await admin_token(context, client)
    jobs = hashing.slow_hash_jobs()
    await admin_request(
        client,
        admin,
        "POST",
        "/admin/users",
        201,
        json={"username": "dora", "password": "long enough password", "permissions": []},
    )
    # Creating a user hashed its password on the event loop, blocking every request.
    assert hashing.slow_hash_jobs() == jobs + 1
    assert (await login(client, "dora", "long enough password"))["access_token"]
    assert hashing.slow_hash_jobs() == jobs + 2
