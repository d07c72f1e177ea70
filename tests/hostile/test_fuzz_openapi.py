"""Property-based fuzzing of the OpenAPI schema (schemathesis) against the app in process.

Positive and negative cases for every operation, anonymous and with an admin Bearer token,
on SQLite and PostgreSQL: no 5xx, and every response documented (its status and media type)
and matching its schema.
Bounded: a few examples per operation and mode, so both backends finish in about a minute.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keyservice.context import AppContext
from keyservice.main import create_app
from tests.conftest import make_settings, truncate_url

MAX_EXAMPLES = 6
# No 5xx; every answer's status and media type documented for its operation, and its body
# the documented schema (response_schema_conformance alone passes an undocumented status).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
ADMIN = "fuzz-admin"
ADMIN_PASSWORD = "fuzz-admin-password-" + "p" * 20


@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "admin"])
def test_no_server_error_and_responses_match_the_schema(database_url, tmp_path, authenticated):
    asyncio.run(truncate_url(database_url))
    ctx = AppContext(
        make_settings(
            database_url,
            tmp_path,
            bootstrap_admin_username=ADMIN,
            bootstrap_admin_password=ADMIN_PASSWORD,
        )
    )
    app = create_app(context=ctx)
    # schemathesis runs the app (and its lifespan) on one event loop thread of its own.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers: dict[str, str] = {}
    if authenticated:
        with asgi.get_client(app) as http:
            login = http.post(
                "/token",
                data={"grant_type": "password", "username": ADMIN, "password": ADMIN_PASSWORD},
            )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    statuses: collections.Counter[int] = collections.Counter()
    unsatisfiable = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    try:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for operation in operations:
                strategy = operation.as_strategy(generation_mode=mode)

                @given(case=strategy)
                @settings(
                    max_examples=MAX_EXAMPLES,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                def run(case: Any) -> None:
                    response = case.call(headers=headers)
                    statuses[response.status_code] += 1
                    case.validate_response(response, checks=CHECKS)

                try:
                    run()
                except Unsatisfiable:
                    # Nothing to negate (an operation without parameters or body).
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    unsatisfiable += 1
    finally:
        asgi.shutdown_lifespans()
    total = sum(statuses.values())
    print(f"\nfuzz {'admin' if authenticated else 'anonymous'}: {len(operations)} operations,")
    print(f"  {total} requests, statuses {dict(sorted(statuses.items()))},")
    print(f"  {unsatisfiable} operations with nothing to negate")
    assert total >= len(operations) * 2
    assert not any(status >= 500 for status in statuses)
    if authenticated:
        assert any(200 <= status < 300 for status in statuses)
