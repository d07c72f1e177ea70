"""create_app(): routers, exception handlers, middleware, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError, ValidationException
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyservice import __version__, apidoc, secret_rotation
from keyservice import database as database_module
from keyservice.audit import refusals
from keyservice.auth.router import answer_token, parse_form, token
from keyservice.config import Settings, get_settings
from keyservice.context import AppContext, ticks
from keyservice.docs_page import replace_docs_route
from keyservice.exceptions import (
    CREDENTIAL_LIKE,
    InvalidRequest,
    KeyServiceError,
    ServiceUnavailable,
    TemporarilyUnavailable,
    UnsupportedMediaType,
    quoted_loc,
)
from keyservice.responses import NO_STORE, JSONResponse
from keyservice.routing import ExactPaths, TableRoute
from keyservice.security.jwt import SIGNING_KEY_RELOAD_SECONDS

if TYPE_CHECKING:
    from keyservice.metrics import Metrics, MetricsListener

log = logging.getLogger("keyservice")
access_log = logging.getLogger("keyservice.access")

OAUTH_PATHS = ("/token", "/revoke", "/introspect")
_OAUTH_PATHS = frozenset(OAUTH_PATHS)
_NO_STORE_HEADERS = [
    (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in NO_STORE.items()
]
MAX_BODY_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_COUNT = 100


def _outage_types() -> tuple[type[BaseException], ...]:
    # Network errors only: a FileNotFoundError or PermissionError is a bug, not an outage.
    # A plain OSError is what asyncio raises when every address of a host refused.
    types: list[type[BaseException]] = [
        PoolTimeout,
        DisconnectionError,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
    ]
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ModuleNotFoundError:  # pragma: no cover - SQLite-only installs
        return tuple(types)
    types += [
        asyncpg.exceptions.PostgresConnectionError,  # class 08: connection lost or refused
        asyncpg.exceptions.OperatorInterventionError,  # 57P01-03: shutting down, starting up
        asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
        # Met on connecting: the database was dropped (3D000) or refuses our role (28).
        asyncpg.exceptions.InvalidCatalogNameError,
        asyncpg.exceptions.InvalidAuthorizationSpecificationError,
        # A pooled connection the server dropped, used again (asyncpg#1069): by the time
        # the token path's one retry also met one, the database is restarting.
        asyncpg.exceptions.InternalClientError,
    ]
    return tuple(types)


_OUTAGE_TYPES = _outage_types()


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what SQLAlchemy wrapped (`orig`) and its causes, each once."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack and len(seen) < 20:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        stack += [
            orig if isinstance(orig, BaseException) else None,
            current.__cause__,
            current.__context__,
        ]


def _is_db_outage(exc: BaseException) -> bool:
    """Whether an error means the database is unreachable (not a bug or a constraint).

    asyncpg raises OSError subclasses (refused, reset, TimeoutError) while connecting,
    PostgresConnectionError / ConnectionDoesNotExistError when a connection dies,
    CannotConnectNowError or AdminShutdownError while the server restarts, and its
    InterfaceError on a closed connection; SQLAlchemy wraps those in DBAPIError
    (`connection_invalidated` when it noticed a disconnect) or raises its pool TimeoutError.
    """
    for cause in _causes(exc):
        if isinstance(cause, _OUTAGE_TYPES) or type(cause) is OSError:
            return True
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, OperationalError) and "locked" in str(cause.orig):
            return True  # SQLite busy beyond busy_timeout
        if type(cause).__name__ == "InterfaceError" and "closed" in str(cause):
            return True  # asyncpg: "connection is closed"
    return False


# A path segment holding a credential-like run (exceptions.CREDENTIAL_LIKE): ids are UUIDs,
# whose runs are shorter, and no route answers a credential in its path.
_CREDENTIAL_SEGMENT = re.compile(r"[^/]*[0-9A-Za-z]{16}[^/]*")
# Characters that would end a log line or drive a terminal (a path's %0A, %1B), and the
# Unicode line and paragraph separators: written back percent-encoded.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def loggable_path(path: str) -> str:
    """The request path for a log line, any segment that may be a credential withheld.

    A key string where its id goes (`DELETE /api-keys/ksk_...`) would otherwise be in the
    access log, which every request reaches (the query string never is). The path is
    percent-decoded: a control character in it is encoded again, so that `GET /%0A...`
    cannot write a line of its own into the log (or colour an operator's terminal).
    """
    if _UNPRINTABLE.search(path) is not None:
        path = _UNPRINTABLE.sub(lambda found: quote(found.group(), safe=""), path)
    if CREDENTIAL_LIKE.search(path) is None:
        return path
    return _CREDENTIAL_SEGMENT.sub("(not logged)", path)


def _error_response(exc: KeyServiceError) -> Response:
    # On the OAuth paths the edge adds Cache-Control: no-store (EdgeMiddleware).
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def _unreadable_body(cause: BaseException | None) -> InvalidRequest | None:
    """Why FastAPI could not parse a JSON body, in words; never the body itself.

    FastAPI answers a decode error with a 422 "1: JSON decode error" and anything else its
    parser raised (too deep for json's recursion, not UTF-8) with a 400 "There was an
    error parsing the body": here all of them are a 400 invalid_request, as a body with a
    NUL is, and 422 stays for a readable body with wrong values.
    """
    if isinstance(cause, json.JSONDecodeError):
        # json's messages are fixed phrases ("Expecting value"): no part of the body. Two
        # of them end in "at" ("Invalid control character at", "Unterminated string
        # starting at"), written for json's own "<msg>: line 1 column 2": one "at" here.
        what = cause.msg.removesuffix(" at")
        return InvalidRequest(
            f"The body is not valid JSON: {what} at line {cause.lineno} column {cause.colno}."
        )
    if isinstance(cause, RecursionError):
        return InvalidRequest("The body is nested too deeply.")
    if isinstance(cause, UnicodeDecodeError):
        return InvalidRequest("The body is not valid JSON: it is not UTF-8 text.")
    if type(cause) is ValueError and "integer string conversion" in str(cause):
        # Python refuses to convert an integer of more digits than sys.get_int_max_str_digits()
        # (CVE-2020-10735) with a plain ValueError; its message holds counts, not digits.
        return InvalidRequest(
            "The body has a number too long to read: more than "
            f"{sys.get_int_max_str_digits()} digits."
        )
    return None


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    """The 405's Allow: every method some route takes at this path (RFC 9110 §15.5.6).

    Starlette names the methods of the first route whose path matched, and FastAPI makes a
    route per method: `PUT /api-keys` was told `Allow: POST`, though GET is there too. Each
    method is tried against the whole table (only on this error's path); HEAD goes with
    GET, which the edge serves it as.
    """
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    if "GET" in allowed:
        allowed.insert(1, "HEAD")
    return ", ".join(allowed)


def _http_error(exc: StarletteHTTPException) -> Response:
    unreadable = _unreadable_body(exc.__cause__) if exc.status_code == 400 else None
    if unreadable is not None:
        return JSONResponse(unreadable.body(), status_code=unreadable.status_code)
    codes = {
        400: "invalid_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "request_too_large",
    }
    description = exc.detail if isinstance(exc.detail, str) else "Request refused."
    if exc.status_code == 404:
        description = "There is nothing at this path."
    body = {"error": codes.get(exc.status_code, "http_error"), "error_description": description}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _unexpected(request: Request, exc: BaseException) -> Response:
    if isinstance(exc, ClientDisconnect):
        # The client hung up mid-request (a load generator stopping, a closed tab):
        # nothing to answer and nothing wrong on our side.
        log.debug("client disconnected during %s", loggable_path(request.url.path))
        return Response(status_code=400)
    if _is_db_outage(exc):
        # The throttle's Redis too: said as such, or the operator looks at the database.
        redis = any(type(cause).__module__.startswith("redis.") for cause in _causes(exc))
        log.warning(
            "%s unavailable during %s: %s",
            "Redis (KEYSERVICE_REDIS_URL)" if redis else "database",
            loggable_path(request.url.path),
            type(exc).__name__,
        )
        outage: KeyServiceError = (
            TemporarilyUnavailable() if request.url.path in OAUTH_PATHS else ServiceUnavailable()
        )
        return _error_response(outage)
    # The trace goes to the log without locals; the client learns nothing internal.
    log.error(
        "unhandled %s on %s",
        type(exc).__name__,
        loggable_path(request.url.path),
        exc_info=_without_inputs(exc),
    )
    return _error_response(KeyServiceError())


def _without_inputs(exc: BaseException) -> BaseException:
    """A validation error as its trace may be logged: where and why, not the values.

    pydantic's message quotes each value refused (for a missing field, the whole object)
    and FastAPI's ResponseValidationError prints its errors' `input`: a response model
    that a bug made fail would put the key secret it carries in the log.
    """
    if isinstance(exc, ValidationException):
        errors = [dict(error) for error in exc.errors()]
    elif isinstance(exc, ValidationError):
        errors = [dict(error) for error in exc.errors(include_input=False)]
    else:
        return exc
    where = "; ".join(
        f"{'.'.join(str(part) for part in quoted_loc(error.get('loc', ())))}: {error.get('msg')}"
        for error in errors
    )
    logged = RuntimeError(f"{type(exc).__name__} (values not logged): {where}")
    return logged.with_traceback(exc.__traceback__)


def error_response(request: Request, exc: Exception) -> Response:
    """The answer to an exception, as the app's handlers give it (for the fast routes)."""
    if isinstance(exc, KeyServiceError):
        return _error_response(exc)
    if isinstance(exc, StarletteHTTPException):
        return _http_error(exc)
    return _unexpected(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KeyServiceError)
    async def _service_error(request: Request, exc: KeyServiceError) -> Response:
        await refusals.record(request, status=exc.status_code, description=exc.description)
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        unreadable = _unreadable_body(exc.__cause__)
        if unreadable is not None:
            return await _service_error(request, unreadable)
        if isinstance(exc.body, bytes):
            # FastAPI hands a body over as bytes only when its Content-Type is not JSON
            # (`curl -d` sends form encoding; `requests.post(data=...)` sends none): the
            # field errors that follow ("Input should be a valid dictionary") would not say so.
            return await _service_error(request, UnsupportedMediaType())
        # Never echo `input`: it may hold a password or a secret; nor a name in `loc` that
        # is no field name (a key of a JSON object the client made up). A validator's own
        # sentence without pydantic's "Value error, " in front, as the console shows it.
        details = [
            {
                "loc": quoted_loc(err.get("loc", ())),
                "msg": str(err.get("msg", "")).removeprefix("Value error, "),
                "type": err.get("type"),
            }
            for err in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid"}
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        description = f"{where}: {first['msg']}"
        body = {"error": "validation_error", "error_description": description, "details": details}
        await refusals.record(request, status=422, description=description)
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            exc.headers = {**(exc.headers or {}), "Allow": _allowed_methods(request)}
        return _http_error(exc)

    async def _last_resort(request: Request, exc: Exception) -> Response:
        return _unexpected(request, exc)

    # Database errors and client disconnects are answered here, inside the app, so that an
    # outage is a plain 503 (a hang-up, nothing at all) and not an exception re-raised to
    # the server with a traceback per request.
    for error_type in (ClientDisconnect, SQLAlchemyError, OSError, *_OUTAGE_TYPES):
        app.add_exception_handler(error_type, _last_resort)
    # Anything else: the last-resort handler (Starlette re-raises after answering).
    app.add_exception_handler(Exception, _last_resort)


async def _fast_token(scope: Scope, receive: Receive, send: Send) -> None:
    """POST /token straight from the edge, past FastAPI's routing and dependency solving.

    The endpoint is the same function FastAPI routes to (and documents); skipping the
    framework's layers for it saves about as much CPU per exchange as signing the JWT
    (bench/README.md). Errors get the same answers as the app's exception handlers give.
    """
    request = Request(scope, receive)
    context: AppContext = scope["app"].state.context
    if context.metrics is not None:
        await _observed_token(request, context, context.metrics, send)
        return
    try:
        response = await token(request, context)
    except Exception as exc:
        response = error_response(request, exc)
    await response(scope, receive, send)


async def _observed_token(
    request: Request, context: AppContext, metrics: Metrics, send: Send
) -> None:
    """`_fast_token` with the metrics on: the same answers, counted and timed."""
    started = time.perf_counter()
    grant_type = None
    refused: Exception | None = None
    try:
        form, repeated = await parse_form(request)
        grant_type = form.get("grant_type")
        response = await answer_token(request, context, form, repeated)
    except Exception as exc:
        refused = exc
        response = error_response(request, exc)
    try:
        await response(request.scope, request.receive, send)
    finally:
        metrics.token(grant_type, time.perf_counter() - started, refused)


# PostgreSQL text cannot hold NUL and no identifier, name or secret of ours contains one:
# refuse it at the edge (raw, form-encoded or as a JSON escape) instead of deep inside.
_NUL_IN_URL = (b"\x00", b"%00")
_NUL_IN_JSON = (b"\x00", b"\\u0000")
_NUL_REFUSAL = {
    "error": "invalid_request",
    "error_description": "The request contains a NUL character.",
}


def _has_nul(data: bytes, markers: tuple[bytes, ...] = _NUL_IN_URL) -> bool:
    return any(marker in data for marker in markers)


def _two_authorizations(path: str) -> Response:
    """Authorization is a single-value header; which of two would count is anyone's guess.

    Counted here, in the walk of the headers the edge makes anyway: Starlette's
    `headers.get` takes the first, a proxy may take the last, and RFC 6750 §3.1 makes a
    malformed request 400 invalid_request rather than an answer for either credential.
    """
    # The edge adds no-store on the OAuth paths; elsewhere it is added here.
    headers = {} if path in _OAUTH_PATHS else dict(NO_STORE)
    if path not in ("/token", "/revoke"):  # client authentication there is Basic, not Bearer
        headers["WWW-Authenticate"] = 'Bearer error="invalid_request"'
    body = {"error": "invalid_request", "error_description": "Send one Authorization header."}
    return JSONResponse(body, status_code=400, headers=headers)


def _route_of(scope: Scope) -> str:
    """The template of the route that answered (never the path), for the metrics."""
    if scope["path"] == "/token" and scope["method"] == "POST":
        return "/token"  # answered by _fast_token, past the routing that sets "route"
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class EdgeMiddleware:
    """Pure-ASGI edge: size limits, security headers, an access log without query strings."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Credentials pass through the OAuth endpoints: none of their answers may be cached,
        # whichever layer gives it (this edge, a handler, Starlette's 405), so the headers
        # are added here, once, and nowhere else.
        no_store = scope["path"] in _OAUTH_PATHS
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if not scope["path"].startswith("/console"):
                    headers.append((b"x-frame-options", b"DENY"))
                    headers.append((b"referrer-policy", b"no-referrer"))
                else:
                    # The console's pages set their own; an answer under /console that no
                    # console handler gave (Starlette's 405, this edge's 413 or 431) gets
                    # these, where it got neither.
                    names = {name.lower() for name, _ in headers}
                    if b"x-frame-options" not in names:
                        headers.append((b"x-frame-options", b"DENY"))
                    if b"referrer-policy" not in names:
                        headers.append((b"referrer-policy", b"no-referrer"))
                if no_store:
                    headers += _NO_STORE_HEADERS
                message["headers"] = headers
            await send(message)

        started = time.perf_counter()
        refused = _edge_refusal(scope)
        if refused is not None:
            # Answered before routing, logged and counted as every other answer is.
            try:
                await refused(scope, receive, send_with_headers)
            finally:
                self._observed(scope, status, started, edge=True)
            return
        content_type = next((v for n, v in scope["headers"] if n == b"content-type"), b"")
        markers = _NUL_IN_URL if b"urlencoded" in content_type.lower() else _NUL_IN_JSON
        received = 0
        tail = b""

        async def limited_receive() -> Message:
            nonlocal received, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > MAX_BODY_BYTES:
                    raise StarletteHTTPException(413, "Body too large.")
                if _has_nul(tail + chunk, markers):
                    raise StarletteHTTPException(400, _NUL_REFUSAL["error_description"])
                tail = (tail + chunk)[-5:]  # a marker may straddle two chunks
            return message

        try:
            if scope["method"] == "POST" and scope["path"] == "/token":
                await _fast_token(scope, limited_receive, send_with_headers)
            elif scope["method"] == "HEAD":
                inner = {**scope, "method": "GET"}
                try:
                    await self.app(inner, limited_receive, _headers_only(send_with_headers))
                finally:
                    if "route" in inner:  # for the metrics, as routing sets it for a GET
                        scope["route"] = inner["route"]
            else:
                await self.app(scope, limited_receive, send_with_headers)
        finally:
            self._observed(scope, status, started)

    def _observed(self, scope: Scope, status: int, started: float, *, edge: bool = False) -> None:
        """The access-log line and the HTTP count of one answer; for an answer of the edge
        to POST /token, its count as a token request too (handlers count their own)."""
        elapsed = time.perf_counter() - started
        if self.metrics is not None:
            token_request = scope["method"] == "POST" and scope["path"] == "/token"
            self.metrics.http("edge" if edge and not token_request else _route_of(scope), status)
            if edge and token_request:
                self.metrics.token(None, elapsed, StarletteHTTPException(status))
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %s %.1fms",
                scope["method"],
                # Never the query string, nor a path segment that may be a credential.
                loggable_path(scope["path"]),
                status,
                elapsed * 1000,
            )


def _headers_only(send: Send) -> Send:
    """`send` for a HEAD served as a GET: the GET's status and headers, Content-Length
    included, and no body (RFC 9110 §9.3.2). FastAPI's routes take only the methods they
    declare, so HEAD was a 405 wherever GET was served (RFC 9110 §9.1: a general-purpose
    server supports both); the server leaves out a HEAD's body too, a test client may not."""

    async def without_body(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return without_body


def _edge_refusal(scope: Scope) -> Response | None:
    """The answer to a request refused on its head alone, or None: headers too large or
    too many (431), a body announced over the limit (413), two Authorization headers, a
    NUL in the path or query (400)."""
    headers_size = sum(len(name) + len(value) for name, value in scope["headers"])
    if headers_size > MAX_HEADER_BYTES or len(scope["headers"]) > MAX_HEADER_COUNT:
        # httptools, unlike h11, sets no limit of its own; a proxy in front should too.
        return JSONResponse(
            {
                "error": "request_header_fields_too_large",
                "error_description": "The request headers are too large.",
            },
            status_code=431,
        )
    authorization_fields = 0
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                too_big = int(value) > MAX_BODY_BYTES
            except ValueError:
                too_big = True
            if too_big:
                return JSONResponse(
                    {"error": "request_too_large", "error_description": "Body too large."},
                    status_code=413,
                )
        elif name == b"authorization":
            authorization_fields += 1
    if authorization_fields > 1:
        return _two_authorizations(scope["path"])
    if _has_nul(scope["query_string"]) or "\x00" in scope["path"]:
        return JSONResponse(_NUL_REFUSAL, status_code=400)
    return None


def _freeze_startup_heap() -> None:
    """Take what startup made (modules, models, the app) out of the cyclic GC's scans.

    Every full collection walked all of it: ~70 ms with every request on the worker
    stalled, about once a second under load: that was the whole p99 of the token
    endpoint at 32 connections (71 ms; 12 ms frozen). Objects made later are collected
    as usual. No gc.collect() first: it cost each start (and each test's app) ~0.1 s, and
    the little garbage startup leaves is freed at shutdown (unfreeze) like the rest.
    """
    gc.freeze()


async def release_idle_connections(context: AppContext) -> None:
    """Give the token path's long-unused kept connections back to the pool (database.py)."""
    async for _ in ticks(context.stopping, database_module.RAW_IDLE_CHECK_SECONDS):
        try:
            await context.database.release_idle()
        except Exception as exc:  # a release that failed has closed its connection
            log.warning("releasing idle token-path connections failed: %s", type(exc).__name__)


def _counter(context: AppContext, task: str) -> Callable[[], None] | None:
    """What a background task calls when a round of it fails: a count, if metrics are on."""
    metrics = context.metrics
    return None if metrics is None else lambda: metrics.background_failure(task)


def _metrics_listener(context: AppContext) -> MetricsListener | None:
    """The metrics' own listener, when this process is the whole server (not one of the
    workers of `serve --workers N`, whose parent serves the sum: keyservice.metrics)."""
    metrics, settings = context.metrics, context.settings
    if metrics is None or metrics.multiprocess or settings.metrics_port is None:
        return None
    from keyservice.metrics import MetricsListener

    listener = MetricsListener(
        metrics.registry, host=settings.metrics_host, port=settings.metrics_port
    )
    log.info("metrics at http://%s:%d/metrics", settings.metrics_host, listener.port)
    return listener


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    context: AppContext = app.state.context
    async with context.database.sessionmaker() as session:
        await context.keyring.ensure_key(session)
        await secret_rotation.settle(context, session)
        await context.revocation.reload(session)
    # A copy in hand from the start: the metadata then survives an outage that begins
    # before anyone asked for it.
    await context.scope_names.get(context.database)
    if context.settings.bootstrap_admin_username:
        from keyservice.users.service import ensure_bootstrap_admin

        async with context.database.sessionmaker() as session:
            await ensure_bootstrap_admin(session, context.settings)

    async def reload_signing_keys() -> None:
        async with context.database.sessionmaker() as session:
            await context.keyring.load(session)

    async def keep_signing_keys_fresh() -> None:
        async for _ in ticks(context.stopping, SIGNING_KEY_RELOAD_SECONDS):
            with contextlib.suppress(Exception):
                await reload_signing_keys()

    listener = _metrics_listener(context)  # first: a port taken leaves nothing running
    context.stopping.clear()
    tasks = [
        asyncio.create_task(
            context.revocation.run(
                context.database,
                context.stopping,
                reload_signing_keys,
                on_failure=_counter(context, "revocation_reload"),
            )
        ),
        asyncio.create_task(keep_signing_keys_fresh()),
    ]
    if not context.database.is_sqlite:
        tasks.append(asyncio.create_task(release_idle_connections(context)))
    if context.settings.prune_interval_seconds > 0:
        from keyservice.maintenance import prune_periodically

        tasks.append(asyncio.create_task(prune_periodically(context)))
    _freeze_startup_heap()
    try:
        yield
    finally:
        if listener is not None:
            listener.close()
        gc.unfreeze()  # what startup made is collectable again (tests run many apps)
        context.stopping.set()
        _done, pending = await asyncio.wait(tasks, timeout=10)
        for task in pending:  # stuck on an unanswering database: give up on it
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await context.throttle.close()
        await context.database.dispose()
        # Lines still waiting in the batching log handler (keyservice.logbuffer): a
        # single-process server ends by re-raising SIGTERM, which skips atexit hooks.
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(OSError, ValueError):  # as logging.shutdown() does
                handler.flush()


def create_app(settings: Settings | None = None, *, context: AppContext | None = None) -> FastAPI:
    """Build the application; `keyservice serve` runs it under uvicorn."""
    if context is None:
        context = AppContext(settings or get_settings())
    app = FastAPI(
        title="keyservice",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        # FastAPI's own OpenTelemetry switches itself on whenever some library sets a global
        # provider, and then hands span processors failed requests' bodies and validation
        # inputs (secrets, passwords, tokens) unredacted. Off until we ship a redacting
        # integration; it also saves the per-request provider check (~3 us).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if context.metrics is None and context.settings.metrics_port is not None:
        from keyservice.metrics import Metrics

        context.metrics = Metrics()
    app.state.context = context
    # FastAPI's own routes (the OpenAPI document and the docs pages), put in the table by
    # FastAPI() itself: moved to its end below. Its /docs page is ours (docs_page.py).
    replace_docs_route(app, app.router.routes)
    framework_routes = list(app.router.routes)
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware, metrics=context.metrics)

    # First in the route table: FastAPI matches a path against the routes in order, and
    # after all nine routers a probe paid ~80 us of matching, most of a bare request
    # (which also made the bench's "framework ceiling" read low: bench/README). The same
    # route class as the API's: the bench's bare endpoint is handled as its reads are.
    health = APIRouter(tags=["health"], route_class=TableRoute)

    # The bodies are documented through `responses=` (apidoc), never validated on the way.
    @health.get(
        "/healthz",
        summary="Liveness: 200 while the process is up",
        responses={200: {"model": apidoc.Liveness, "description": "The process is up."}},
    )
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @health.get(
        "/readyz",
        summary="Readiness: 200 when the database answers, else 503",
        responses={
            200: {"model": apidoc.Readiness, "description": "The database answers."},
            503: {"model": apidoc.Readiness, "description": "The database does not answer."},
        },
    )
    async def readyz() -> Response:
        try:
            async with asyncio.timeout(2):
                async with context.database.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except Exception:
            return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "up"})

    from keyservice.admin_keys.router import router as admin_keys_router
    from keyservice.api_keys.router import router as api_keys_router
    from keyservice.audit.router import router as audit_router
    from keyservice.auth.router import router as auth_router
    from keyservice.console.router import router as console_router
    from keyservice.devices.router import router as devices_router
    from keyservice.principals.router import router as me_router
    from keyservice.scopes.router import router as scopes_router
    from keyservice.users.router import router as users_router

    for router in (
        health,
        auth_router,
        me_router,
        api_keys_router,
        users_router,
        devices_router,
        admin_keys_router,
        scopes_router,
        audit_router,
    ):
        add_routes_flat(app, router)
    app.include_router(console_router)  # a tree of its own (the admin pages)
    # Last: at the head of the table every request paid for their three path regexes
    # before reaching any of ours (~0.7 us each on a fast day, bench/README.md "eighth
    # pass"), and no route of ours matches their paths (tests/test_routing.py), so nothing
    # else changes.
    ours = [route for route in app.router.routes if all(route is not f for f in framework_routes)]
    # First of all: the fixed paths found by a lookup instead of a walk of the table
    # (routing.ExactPaths); everything it does not answer walks the table as before.
    app.router.routes[:] = [ExactPaths(ours), *ours, *framework_routes]
    apidoc.install(app)
    return app


def add_routes_flat(app: FastAPI, router: APIRouter) -> None:
    """Put a router's routes into the app's own route table, in order.

    Since FastAPI 0.137 `include_router()` keeps each router as a node that every request
    walks with bookkeeping of its own: about 1 us per route passed; in-process a 404 went
    from 189 to 147 us and a Bearer read lost ~15 us (bench/README.md, "sixth pass"). Our
    API routers carry their prefix and tags in their routes and are included with no
    options, so the routes are complete as they are and go in unchanged, in the same
    order; a `TableRoute` goes in as a copy of itself with its quick path check on
    (keyservice/routing.py), the router's own route left as it was. A router holding
    anything else (a nested router, a mount) is included the usual way instead. One
    difference: `app.dependency_overrides` does not reach these routes (nothing uses it).
    """
    if all(isinstance(route, APIRoute) for route in router.routes):
        app.router.routes.extend(
            route.seated_copy() if isinstance(route, TableRoute) else route
            for route in router.routes
        )
    else:
        app.include_router(router)
