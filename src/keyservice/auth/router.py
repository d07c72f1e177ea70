"""POST /token, /revoke, /introspect and the two /.well-known documents."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.responses import Response

from keyservice import apidoc
from keyservice.auth import service
from keyservice.auth import tokens as token_ops
from keyservice.auth.client_auth import ClientCredentials, client_credentials, named_client_id
from keyservice.auth.grants import client_credentials as cc_grant
from keyservice.auth.grants import password as password_grant
from keyservice.auth.grants import refresh_token as refresh_grant
from keyservice.auth.schemas import AuthorizationServerMetadata, Introspection, JsonWebKeySet
from keyservice.auth.service import Caller, Issued
from keyservice.context import AppContext
from keyservice.dependencies import ContextDep, CurrentPrincipal, audit_actor, client_ip
from keyservice.exceptions import (
    FIELD_NAME,
    InsufficientScope,
    InvalidRequest,
    KeyServiceError,
    UnsupportedGrantType,
    echoable,
)
from keyservice.responses import JSONResponse
from keyservice.routing import TableRoute
from keyservice.scopes.models import INTROSPECT
from keyservice.security.jwt import JWKS_MAX_AGE_SECONDS


class OAuthRoute(TableRoute):
    """The OAuth endpoints' route: a query parameter it does not take is ignored, as RFC 6749
    §3.2 has it, not refused as on the rest of the API (routing._checked_query); a
    credential there is refused all the same (`read_form`, `answer_token`)."""

    checks_query = False


router = APIRouter(tags=["oauth"], route_class=OAuthRoute)

MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 50
# Refused in the query of /token, /revoke and /introspect (API.md): a URL ends up in proxy
# logs, browser history and Referer headers. `token` is /revoke's and /introspect's.
_CREDENTIAL_PARAMS = {
    "client_secret",
    "api_key",
    "refresh_token",
    "password",
    "client_id",
    "token",
    "access_token",
}
_GRANT_TYPE_NAME = re.compile(r"[A-Za-z0-9_:./-]+")

Grant = Callable[[AppContext, dict[str, str], ClientCredentials | None, Caller], Awaitable[Issued]]
# Each grant's module: its `handle` and the audit `EVENT` of its refusals.
_GRANT_MODULES = {
    "client_credentials": cc_grant,
    "refresh_token": refresh_grant,
    "password": password_grant,
}
GRANTS: dict[str, Grant] = {name: module.handle for name, module in _GRANT_MODULES.items()}
EVENTS = {name: module.EVENT for name, module in _GRANT_MODULES.items()}


async def parse_form(request: Request) -> tuple[dict[str, str], list[str]]:
    """Parse an urlencoded body directly (cheaper than Form()): its parameters and repeats.

    Parameters without a value count as omitted (RFC 6749 §3.2); a repeated parameter keeps
    its first value and is named in the list returned, for the caller to refuse.
    """
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("The body must be application/x-www-form-urlencoded.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InvalidRequest("The request body is too large.")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:  # the body's bytes, or a %-escape's
        raise InvalidRequest("The body is not valid UTF-8 form encoding.") from None
    except ValueError:
        # parse_qsl's only other refusal (not strict_parsing): more fields than allowed,
        # counted as it counts them, one more than the '&' separators.
        raise InvalidRequest(
            f"The body has too many parameters: at most {MAX_FORM_FIELDS} are allowed."
        ) from None
    form: dict[str, str] = {}
    repeated: list[str] = []
    for name, value in pairs:
        if name in form:
            repeated.append(name)
        else:
            form[name] = value
    if not form:
        raise InvalidRequest("The request body is empty.")
    return {name: value for name, value in form.items() if value != ""}, repeated


def credentials_in_query(request: Request) -> bool:
    return bool(request.scope["query_string"]) and any(
        name in _CREDENTIAL_PARAMS for name in request.query_params
    )


def _query_refusal() -> InvalidRequest:
    return InvalidRequest(
        "Credentials must be sent in the request body, never in the URL.",
        reason="credentials in the query",
    )


def _repeat_refusal(name: str) -> InvalidRequest:
    # A double-encoded body puts a whole `api_key=...` into a parameter's name.
    shown = f"The parameter '{name}'" if echoable(name, FIELD_NAME) else "A parameter"
    return InvalidRequest(f"{shown} was sent more than once.", reason="parameter repeated")


async def read_form(request: Request) -> dict[str, str]:
    """Parse the form of /revoke and /introspect; refuse what RFC 6749 forbids.

    A repeated parameter is invalid_request; credentials are never accepted in the query.
    """
    if credentials_in_query(request):
        raise _query_refusal()
    form, repeated = await parse_form(request)
    if repeated:
        raise _repeat_refusal(repeated[0])
    return form


def token_response(issued: Issued) -> Response:
    # Cache-Control: no-store and Pragma: no-cache come from the edge (main.EdgeMiddleware).
    if issued.sunset is None:
        return JSONResponse(issued.body())
    sunset = format_datetime(issued.sunset, usegmt=True)
    return JSONResponse(issued.body(), headers={"Sunset": sunset})


_OAUTH_ERROR = apidoc.error(
    "RFC 6749 §5.2: `invalid_request`, `invalid_grant`, `invalid_scope` or "
    "`unsupported_grant_type`."
)
_TOKEN_FORM = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {
            "type": "string",
            "enum": ["client_credentials", "refresh_token", "password"],
        },
        "api_key": {
            "type": "string",
            "description": "client_credentials: the single API key string (or the next two).",
        },
        "client_id": {"type": "string", "description": "client_credentials (or HTTP Basic)."},
        "client_secret": {"type": "string", "description": "client_credentials."},
        "refresh_token": {"type": "string", "description": "refresh_token: single-use."},
        "username": {"type": "string", "description": "password grant."},
        "password": {"type": "string", "format": "password", "description": "password grant."},
        "scope": {"type": "string", "description": "Space-separated; narrows the token."},
    },
}
_TOKEN_ANSWER = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string", "description": "A JWT (RFC 9068)."},
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "expires_in": {"type": "integer"},
        "refresh_token": {"type": "string"},
        "refresh_token_expires_in": {"type": "integer"},
        "scope": {"type": "string"},
    },
    "example": {
        "access_token": "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6Ii4uLiJ9...",
        "token_type": "Bearer",
        "expires_in": 7200,
        "refresh_token": "<opaque>",
        "refresh_token_expires_in": 10800,
        "scope": "projects:read projects:write",
    },
}
_NO_STORE_HEADERS = {
    "Cache-Control": {"schema": {"type": "string", "enum": ["no-store"]}},
    "Pragma": {"schema": {"type": "string", "enum": ["no-cache"]}},
}


def _form(schema: dict[str, Any]) -> dict[str, Any]:
    """An `openapi_extra` for a route that reads its form itself (`parse_form`)."""
    content = {"application/x-www-form-urlencoded": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


# Served by main._fast_token from the edge: this route documents it (and serves the same
# answers when the edge is not in front, as in tests that build the router alone).
@router.post(
    "/token",
    summary="Exchange an API key, a refresh token or a password for an access token",
    openapi_extra=_form(_TOKEN_FORM),
    responses={
        200: {
            "description": "RFC 6749 §5.1; `Sunset` when the key expires within 7 days.",
            "headers": {
                **_NO_STORE_HEADERS,
                "Sunset": {"schema": {"type": "string"}, "description": "RFC 8594."},
            },
            "content": {"application/json": {"schema": _TOKEN_ANSWER}},
        },
        400: _OAUTH_ERROR,
        401: apidoc.error(
            "`invalid_client`: unknown client, wrong secret, key revoked, expired or "
            "suspended, or address not allowed.",
            headers={"WWW-Authenticate": "Basic, when Basic credentials were sent."},
        ),
        429: apidoc.error(
            "`slow_down`: too many failed attempts.",
            headers={"Retry-After": "Seconds to wait."},
        ),
    },
)
async def token(request: Request, context: ContextDep) -> Response:
    """RFC 6749 token endpoint: client_credentials, refresh_token, password.

    The grant type is checked first (API.md); any later refusal is audited as that grant's
    event, here when the grant did not (the form, the client authentication method).
    """
    form, repeated = await parse_form(request)
    return await answer_token(request, context, form, repeated)


async def answer_token(
    request: Request, context: AppContext, form: dict[str, str], repeated: list[str]
) -> Response:
    """The token endpoint's answer to a parsed form (`token`; metrics read the grant type
    from the form in between, main._observed_token)."""
    if "grant_type" in repeated:
        raise _repeat_refusal("grant_type")
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is missing.")
    grant = GRANTS.get(grant_type)
    if grant is None:
        shown = f" '{grant_type}'" if echoable(grant_type, _GRANT_TYPE_NAME) else ""
        raise UnsupportedGrantType(f"The grant type{shown} is not supported.")
    if grant_type == "password" and not context.settings.password_grant_enabled:
        raise UnsupportedGrantType("The password grant is switched off on this server.")
    caller = Caller(ip=client_ip(request, context))
    authorization = request.headers.get("authorization")
    try:
        if repeated:
            raise _repeat_refusal(repeated[0])
        if credentials_in_query(request):
            raise _query_refusal()
        creds = client_credentials(form, authorization)
        issued = await grant(context, form, creds, caller)
    except KeyServiceError as exc:
        if exc.reason is None:  # refused by the grant, which wrote the event
            raise
        await service.refuse_unaudited(
            context,
            exc,
            event=EVENTS[grant_type],
            caller=caller,
            client_id=named_client_id(form, authorization, request.query_params),
        )
    return token_response(issued)


@router.post(
    "/revoke",
    summary="Revoke a refresh token and its family (RFC 7009)",
    response_class=Response,  # an empty 200, documented without a body
    openapi_extra=_form(
        {
            "type": "object",
            "required": ["token"],
            "properties": {
                "token": {"type": "string", "description": "The refresh token."},
                "token_type_hint": {"type": "string"},
                "client_id": {"type": "string", "description": "Optional; must be its key's."},
                "client_secret": {"type": "string"},
            },
        }
    ),
    responses={
        200: {"description": "Revoked, or nothing to revoke (always 200, empty body)."},
        400: apidoc.error("`invalid_request`: `token` is missing or sent twice."),
        401: apidoc.error("`invalid_client`: client credentials sent are not the token's key."),
        429: apidoc.error("`slow_down`", headers={"Retry-After": "Seconds to wait."}),
    },
)
async def revoke(request: Request, context: ContextDep) -> Response:
    """RFC 7009: revoke a refresh token (or an access token's family); always 200."""
    caller = Caller(ip=client_ip(request, context))
    authorization = request.headers.get("authorization")
    if credentials_in_query(request):
        # Audited as on /token, as a refused revocation: the URL is in proxy logs now.
        await service.refuse_unaudited(
            context,
            _query_refusal(),
            event="token.revoke",
            caller=caller,
            client_id=named_client_id(request.query_params, authorization),
        )
    form = await read_form(request)
    value = form.get("token")
    if value is None:
        raise InvalidRequest("token is missing.")
    try:
        creds = client_credentials(form, authorization)
    except KeyServiceError as exc:
        # Malformed client authentication: audited and counted as on /token.
        if exc.reason is None:
            raise
        await service.refuse_unaudited(
            context,
            exc,
            event="token.revoke",
            caller=caller,
            client_id=named_client_id(form, authorization),
        )
    await token_ops.revoke(context, token=value, creds=creds, caller=caller)
    return Response(status_code=200)


@router.post(
    "/introspect",
    summary="Describe a token (RFC 7662); needs the `introspect` scope",
    openapi_extra=_form(
        {
            "type": "object",
            "required": ["token"],
            "properties": {
                "token": {"type": "string", "description": "An access or refresh token."},
                "token_type_hint": {"type": "string"},
            },
        }
    ),
    responses={
        200: {
            "model": Introspection,
            "description": '`{"active": false}` for a token no longer usable.',
        },
        400: apidoc.error("`invalid_request`: `token` is missing or sent twice."),
        403: apidoc.forbidden("introspect"),
    },
)
async def introspect(
    request: Request, context: ContextDep, principal: CurrentPrincipal
) -> Response:
    """RFC 7662 introspection; the caller needs the `introspect` permission."""
    if not principal.holds(INTROSPECT):
        raise InsufficientScope(INTROSPECT)
    if credentials_in_query(request):
        # Audited as on /token, under this endpoint's own `token.*` type (introspection
        # writes no other event): by the verified caller, naming the key the query names.
        async with context.database.sessionmaker() as session:
            actor = await audit_actor(session, principal)
        await service.refuse_unaudited(
            context,
            _query_refusal(),
            event="token.introspect",
            caller=Caller(ip=client_ip(request, context)),
            client_id=named_client_id(request.query_params, None),
            actor=actor,
        )
    form = await read_form(request)
    value = form.get("token")
    if value is None:
        raise InvalidRequest("token is missing.")
    result = await token_ops.introspect(context, token=value)
    return JSONResponse(result)


# Documented through `responses=`, not `response_model`: the keyring's JWKS goes out as
# it is, with no validation of it on the way (the same for the metadata).
@router.get(
    "/.well-known/jwks.json",
    summary="The public signing keys (JWKS)",
    responses={
        200: {
            "model": JsonWebKeySet,
            "description": "RFC 7517 JWK Set; `Cache-Control: public, max-age=...`.",
            "headers": {"Cache-Control": {"schema": {"type": "string"}}},
        }
    },
)
async def jwks(context: ContextDep) -> Response:
    # A rotated-in key signs only once a copy cached for this long has expired.
    cache = f"public, max-age={JWKS_MAX_AGE_SECONDS}"
    return JSONResponse(context.keyring.jwks(), headers={"Cache-Control": cache})


@router.get(
    "/.well-known/oauth-authorization-server",
    summary="Authorization server metadata (RFC 8414)",
    responses={200: {"model": AuthorizationServerMetadata, "description": "RFC 8414 §3.2."}},
)
async def metadata(context: ContextDep) -> Response:
    """RFC 8414 authorization server metadata."""
    issuer = context.settings.effective_issuer
    grants = ["client_credentials", "refresh_token"]
    if context.settings.password_grant_enabled:
        grants.append("password")
    body: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "grant_types_supported": grants,
        "response_types_supported": [],
        # "none": the refresh_token and password grants take no client authentication.
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "revocation_endpoint_auth_methods_supported": [
            "none",
            "client_secret_basic",
            "client_secret_post",
        ],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "scopes_supported": await context.scope_names.get(context.database),
        "access_token_signing_alg_values_supported": [context.settings.signing_algorithm],
    }
    return JSONResponse(body)
