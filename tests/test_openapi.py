"""GET /openapi.json describes the API as API.md has it, for /docs and client generators.

The properties hold for every operation, so a route added without a summary, without its
Bearer scheme or without its error answers fails here. The schemathesis fuzz
(tests/hostile/test_fuzz_openapi.py) holds the real answers to the documented shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from keyservice.main import create_app
from tests.conftest import make_settings

# API.md: every endpoint other than these requires `Authorization: Bearer <JWT>`.
PUBLIC = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("post", "/token"),
    ("post", "/revoke"),
    ("get", "/.well-known/jwks.json"),
    ("get", "/.well-known/oauth-authorization-server"),
}
# Any valid token will do (API.md "The caller"); every other protected one needs a scope.
ANY_TOKEN = {("get", "/me"), ("get", "/me/token")}
FORMS = {"/token", "/revoke", "/introspect"}
_REF = "#/components/schemas/"
ERROR = "#/components/schemas/ErrorBody"
VALIDATION_ERROR = "#/components/schemas/ValidationErrorBody"
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp}/db.sqlite3", tmp))
    return app, app.openapi()


@pytest.fixture(scope="module")
def schema(built: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
    return built[1]


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def json_ref(response: dict[str, Any]) -> str | None:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    ref: str | None = schema.get("$ref")
    return ref


def test_every_operation_has_a_summary_of_its_own(built: tuple[Any, dict[str, Any]]) -> None:
    app, schema = built
    # FastAPI's default summary is the function's name in title case ("List Keys", twice).
    defaults = {
        (method.lower(), route.path_format): route.name.replace("_", " ").title()
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    summaries = []
    for method, path, operation in operations(schema):
        summary = operation.get("summary")
        assert summary, (method, path)
        assert summary != defaults[(method, path)], f"{method} {path}: FastAPI's default summary"
        summaries.append(summary)
    assert len(summaries) == len(set(summaries)), "two operations share a summary"
    assert len(summaries) >= 30


def test_the_bearer_scheme_is_declared(schema: dict[str, Any]) -> None:
    assert schema["components"]["securitySchemes"] == {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from POST /token (never an API key string).",
        }
    }
    assert "security" not in schema  # no global requirement: each operation says its own


def test_protected_operations_declare_bearer_and_document_401_and_403(
    schema: dict[str, Any],
) -> None:
    for method, path, operation in operations(schema):
        where = f"{method} {path}"
        responses = operation["responses"]
        if (method, path) in PUBLIC:
            assert "security" not in operation, where
            continue
        assert operation.get("security") == [{"bearerAuth": []}], where
        unauthorized = responses.get("401")
        assert unauthorized is not None, where
        assert json_ref(unauthorized) == ERROR, where
        assert "WWW-Authenticate" in unauthorized.get("headers", {}), where
        if (method, path) not in ANY_TOKEN:
            forbidden = responses.get("403")
            assert forbidden is not None, where
            assert json_ref(forbidden) == ERROR, where


def test_every_error_answer_is_the_services_error_body(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")) or (method, path, status) == (
                "get",
                "/readyz",
                "503",
            ):
                continue
            expected = VALIDATION_ERROR if status == "422" else ERROR
            assert json_ref(response) == expected, f"{method} {path} {status}"
            assert response.get("description"), f"{method} {path} {status}"
    names = set(schema["components"]["schemas"])
    assert {"ErrorBody", "ValidationErrorBody"} <= names
    assert not {"HTTPValidationError", "ValidationError"} & names  # FastAPI's, never answered
    details = schema["components"]["schemas"]["ValidationErrorBody"]["properties"]["details"]
    assert "ValidationDetail" in repr(details)


def test_operations_taking_input_document_their_refusals(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        where = f"{method} {path}"
        responses = operation["responses"]
        content = operation.get("requestBody", {}).get("content", {})
        if path in FORMS:
            assert list(content) == ["application/x-www-form-urlencoded"], where
            assert "400" in responses, where  # RFC 6749 §5.2 invalid_request, never a 422
            continue
        # A Bearer route refuses a query parameter it does not take (routing._checked_query).
        if content or operation.get("parameters") or (method, path) not in PUBLIC:
            assert "422" in responses, where
        if content:
            assert list(content) == ["application/json"], where
            assert {"400", "415"} <= set(responses), where
        if "{" in path:
            assert "404" in responses, where
        if path not in ("/healthz", "/.well-known/jwks.json"):
            assert "503" in responses, where


def test_query_parameters_are_described(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query":
                assert parameter.get("description"), f"{method} {path} {parameter['name']}"
    paging = {p["name"]: p for p in schema["paths"]["/admin/audit-events"]["get"]["parameters"]}
    assert paging["limit"]["schema"]["minimum"] == 1
    assert "500" in paging["limit"]["description"]


def test_creates_document_409_and_show_the_secret_once(schema: dict[str, Any]) -> None:
    for path in ("/api-keys", "/admin/users", "/admin/devices", "/admin/scopes"):
        assert json_ref(schema["paths"][path]["post"]["responses"]["409"]) == ERROR, path
    created = schema["components"]["schemas"]["ApiKeyCreated"]
    example = created["examples"][0]
    assert {"client_secret", "api_key", "client_id", "expires_at"} <= set(example)
    # A whole answer but its nulls (last_used_*), which FastAPI leaves out of the document.
    assert set(example) == set(created["properties"]) - {"last_used_at", "last_used_ip"}
    assert "only" in created["properties"]["api_key"]["description"]


def test_the_token_endpoint_documents_its_form_and_answers(schema: dict[str, Any]) -> None:
    operation = schema["paths"]["/token"]["post"]
    assert "security" not in operation
    form = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form["required"] == ["grant_type"]
    assert form["properties"]["grant_type"]["enum"] == [
        "client_credentials",
        "refresh_token",
        "password",
    ]
    assert {
        "api_key",
        "client_id",
        "client_secret",
        "refresh_token",
        "username",
        "password",
        "scope",
    } <= set(form["properties"])
    responses = operation["responses"]
    assert {"200", "400", "401", "429"} <= set(responses)
    ok = responses["200"]
    answer = ok["content"]["application/json"]["schema"]
    # RFC 6749 §5.1 and API.md's example.
    assert {"access_token", "token_type", "expires_in", "scope"} <= set(answer["required"])
    assert set(answer["example"]) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "refresh_token_expires_in",
        "scope",
    }
    assert {"Cache-Control", "Pragma", "Sunset"} <= set(ok["headers"])
    assert "Retry-After" in responses["429"]["headers"]
    assert "WWW-Authenticate" in responses["401"]["headers"]
    for status in ("400", "401", "429"):
        assert json_ref(responses[status]) == ERROR, status

    revoke = schema["paths"]["/revoke"]["post"]
    revoke_form = revoke["requestBody"]["content"]["application/x-www-form-urlencoded"]
    assert revoke_form["schema"]["required"] == ["token"]
    assert "content" not in revoke["responses"]["200"]  # always 200, empty
    introspect = schema["paths"]["/introspect"]["post"]
    introspect_form = introspect["requestBody"]["content"]["application/x-www-form-urlencoded"]
    assert introspect_form["schema"]["required"] == ["token"]
    assert json_ref(introspect["responses"]["200"]) == "#/components/schemas/Introspection"
    active = schema["components"]["schemas"]["Introspection"]
    assert active["required"] == ["active"]
    assert active["additionalProperties"] is True


def test_discovery_and_health_answers_are_typed(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    documented = {
        ("/.well-known/jwks.json", "200"): "JsonWebKeySet",
        ("/.well-known/oauth-authorization-server", "200"): "AuthorizationServerMetadata",
        ("/healthz", "200"): "Liveness",
        ("/readyz", "200"): "Readiness",
        ("/readyz", "503"): "Readiness",
    }
    for (path, status), name in documented.items():
        assert json_ref(schema["paths"][path]["get"]["responses"][status]) == _REF + name
    jwk = components["JsonWebKey"]
    assert set(jwk["required"]) == {"kty", "kid", "use", "alg"}  # RFC 7517 §4 as served
    assert {"crv", "x", "y", "n", "e", "key_ops"} <= set(jwk["properties"])
    assert "default" not in jwk["properties"]["crv"]  # absent when it does not apply
    metadata = components["AuthorizationServerMetadata"]
    assert {"issuer", "token_endpoint", "jwks_uri", "grant_types_supported"} <= set(
        metadata["required"]
    )


async def test_the_served_document_is_the_completed_one(app: Any, client: Any) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    served = response.json()
    assert served == app.openapi()
    assert served["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_the_documented_shapes_are_what_the_service_answers(client: Any) -> None:
    # 401: the error body and its challenge, as documented.
    missing = await client.get("/admin/users")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert set(missing.json()) == {"error", "error_description"}
    # 400 from /token: RFC 6749 §5.2's body, never FastAPI's 422.
    refused = await client.post("/token", data={"grant_type": "nonsense"})
    assert refused.status_code == 400
    assert refused.json()["error"] == "unsupported_grant_type"
