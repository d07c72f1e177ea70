"""What /openapi.json (and /docs) says beyond what FastAPI reads off the routes.

Documentation only: nothing here runs on a request. Routes declare their own summaries,
bodies and the errors only they give (`responses=`, `openapi_extra`); `complete()` adds,
once, what follows from how the service works for every route alike:

- the Bearer scheme (`bearerAuth`), attached to each operation whose route depends on
  `get_current_principal` (the dependency stays a plain function: a FastAPI security
  class would take the routes off their direct path, routing.TableRoute), with its 401,
  where a scope is required (`require_scope`) its 403, and its 422 for a query
  parameter it does not take (but /introspect: routing._checked_query);
- the service's error body in place of FastAPI's HTTPValidationError for 422, which the
  handler in main.py answers as `validation_error` with `details`;
- 400/415 for an unreadable or non-JSON body, 404 for a path with an id, 503 when the
  database is unreachable;
- 400 where a request is likely to be refused at the edge (a NUL in the path or query of
  an operation with parameters, two Authorization headers on a protected one).

tests/test_openapi.py asserts these properties for every operation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

BEARER = "bearerAuth"
_REF = "#/components/schemas/"


class ErrorBody(BaseModel):
    """Every error the service answers: RFC 6749 §5.2's shape, on every endpoint."""

    error: str = Field(description="A code: invalid_request, not_found, conflict, ...")
    error_description: str = Field(description="What went wrong, in words; never a secret.")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="Per-field problems (422 validation_error only)."
    )


class ValidationDetail(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `query` or `path`, then names.")
    msg: str
    type: str | None = None


class ValidationErrorBody(BaseModel):
    """422: a readable body or query with values the endpoint does not take."""

    error: str = Field(description="Always `validation_error`.", examples=["validation_error"])
    error_description: str = Field(examples=["name: String should have at least 1 character"])
    details: list[ValidationDetail] | None = Field(
        default=None,
        description="One entry per field refused; absent when no one field is to blame "
        "(e.g. a PATCH that changes nothing).",
    )


class Liveness(BaseModel):
    """GET /healthz: the process is up."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """GET /readyz: whether the database answers (200) or not (503)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ok", "database": "up"},
                {"status": "unavailable", "database": "down"},
            ]
        }
    )

    status: Literal["ok", "unavailable"]
    database: Literal["up", "down"]


def error(description: str, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A `responses=` entry answered with the service's error body."""
    entry: dict[str, Any] = {"model": ErrorBody, "description": description}
    if headers:
        entry["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return entry


UNAUTHORIZED = error(
    "No access token (`WWW-Authenticate: Bearer`), or one that is malformed, expired, "
    'revoked or not this service\'s (`error="invalid_token"`).',
    headers={"WWW-Authenticate": 'Bearer, or Bearer error="invalid_token"'},
)
NOT_FOUND = error("`not_found`: no such object (or not the caller's).")
CONFLICT = error("`conflict`: the request clashes with the current state.")
EXPIRED_KEY_EDIT = error(
    "`conflict`: the key has expired (an edit cannot bring it back), or its `expires_at` "
    "is its rotation's grace period, which an edit cannot move."
)
UNAVAILABLE = error(
    "`service_unavailable` (`temporarily_unavailable` on the OAuth endpoints): the "
    "database or Redis is unreachable; try again shortly.",
    headers={"Retry-After": "Seconds to wait (on the OAuth endpoints)."},
)
UNKNOWN_QUERY: dict[str, Any] = {
    "model": ValidationErrorBody,
    "description": "`validation_error`, with `details`: a query parameter the endpoint does "
    "not take (`query_unknown`).",
}
BAD_BODY = error("`invalid_request`: the body is not readable JSON (or too deeply nested).")
REFUSED_AT_EDGE = error(
    "`invalid_request`: a NUL character in the path or query, or two `Authorization` "
    "headers (main.EdgeMiddleware refuses them before any route)."
)
NOT_JSON = error("`unsupported_media_type`: the body is not sent as application/json.")


def forbidden(scope: str) -> dict[str, Any]:
    return error(
        f"`insufficient_scope`: the token does not carry `{scope}`.",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
    )


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _response(operation: dict[str, Any], status: str, entry: dict[str, Any]) -> None:
    """Add `entry` (a `responses=` entry with a model) unless the route documented it."""
    if status in operation["responses"]:
        return
    model = entry["model"]
    answer: dict[str, Any] = {
        "description": entry["description"],
        "content": {"application/json": {"schema": {"$ref": _REF + model.__name__}}},
    }
    if "headers" in entry:
        answer["headers"] = entry["headers"]
    operation["responses"][status] = answer
    operation["responses"] = dict(sorted(operation["responses"].items()))


def _schemas(schema: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, ValidationDetail, ValidationErrorBody):
        if model.__name__ not in schemas:
            found = model.model_json_schema(ref_template=_REF + "{model}")
            schemas.update(found.pop("$defs", {}))
            schemas[model.__name__] = found
    return schemas


def complete(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """Add to FastAPI's document what every route has in common (see the module)."""
    from keyservice.dependencies import get_current_principal

    schemas = _schemas(schema)
    schema["components"]["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from POST /token (never an API key string).",
        }
    }
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        item = schema["paths"].get(route.path_format, {})
        for method in route.methods or ():
            operation = item.get(method.lower())
            if operation is None:
                continue
            calls = list(_calls(route.dependant))
            if get_current_principal in calls:
                operation["security"] = [{BEARER: []}]
                _response(operation, "401", UNAUTHORIZED)
                scopes = [s for s in (getattr(c, "required_scope", None) for c in calls) if s]
                if scopes:
                    _response(operation, "403", forbidden(scopes[0]))
                if getattr(route, "checks_query", False):  # routing._checked_query
                    _response(operation, "422", UNKNOWN_QUERY)
            responses = operation["responses"]
            if "422" in responses:
                responses["422"]["description"] = "`validation_error`, with `details`."
                responses["422"]["content"] = {
                    "application/json": {"schema": {"$ref": _REF + "ValidationErrorBody"}}
                }
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                _response(operation, "400", BAD_BODY)
                _response(operation, "415", NOT_JSON)
            if "{" in route.path_format:
                _response(operation, "404", NOT_FOUND)
            if operation.get("parameters") or "security" in operation:
                _response(operation, "400", REFUSED_AT_EDGE)
            if route.path_format not in ("/healthz", "/.well-known/jwks.json"):
                _response(operation, "503", UNAVAILABLE)
    # FastAPI's own 422 models, no longer referenced by any operation.
    text = repr(schema["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if f"'{_REF}{name}'" not in text:
            schemas.pop(name, None)
    return schema


def install(app: FastAPI) -> None:
    """Have `app.openapi()` (GET /openapi.json) answer the completed document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(app, build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
