"""The API routers' route class, cheap to pass over in the app's route table and to call;
and an index that finds a route with a fixed path without walking the table."""

from __future__ import annotations

import copy
import email.message
import inspect
import json
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import params
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_parameterless_sub_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from keyservice.dependencies import get_current_principal

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class TableRoute(APIRoute):
    """An APIRoute that tells in one string comparison that a path is not its own.

    FastAPI finds a request's route by asking each route of the table in order, and a
    route's `matches()` costs about 1 us (a lookup in the request scope, root-path
    handling, the path regex): a request for the table's twelfth route paid for eleven
    refusals first (bench/README.md, "seventh pass"). A route can only match paths that
    start with the literal part of its own path (up to its first `{param}`), and one
    without parameters only that path exactly; anything else gets `Match.NONE` here, as
    the regex would give it, and the rest goes to FastAPI's check unchanged (a method
    mismatch is still a partial match, so 405 and Allow stay as they are). With a root path
    in the scope, FastAPI's check does it all.

    The check is on only in the copy `main.add_routes_flat()` puts in the app's own table
    (`seated_copy()`): the router's own route may also be included under another router,
    where it matches that router's prefix plus its path.

    Its handler also skips FastAPI's dependency solver where there is nothing to solve
    (`get_route_handler()`).
    """

    # Whether a route of this class that needs a Bearer token refuses a query parameter it
    # does not take (`_checked_query`); the OAuth endpoints' routes have rules of their own.
    checks_query = True
    _literal: str | None = None
    _checks_ambiguity = False
    _exact = False
    _building = False
    _direct = False

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self._building = True  # get_route_handler() is called for the route itself
        try:
            super().__init__(path, endpoint, **kwargs)
        finally:
            self._building = False
        if self._checks_ambiguity:
            # Last of the route's dependencies, so that authentication comes first.
            self.dependant.dependencies.append(
                get_parameterless_sub_dependant(
                    depends=params.Depends(_refuse_ambiguous), path=self.path_format
                )
            )

    def seated_copy(self) -> TableRoute:
        """This route as the app's own table holds it: the same route, the check on."""
        seated = copy.copy(self)  # shares the endpoint, its dependencies and its handler
        literal, brace, _ = self.path.partition("{")
        seated._literal = literal
        seated._exact = not brace
        return seated

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        literal = self._literal
        if literal is not None and scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            if path != literal if self._exact else not path.startswith(literal):
                return Match.NONE, {}
        return super().matches(scope)

    def get_route_handler(self) -> Handler:
        """FastAPI's handler, or a direct one where the dependency solver has nothing to do.

        FastAPI solves a request's dependencies afresh each time: for every dependency it
        builds a cache key, classifies the callable, parses the query string and the cookies
        for parameters, and recurses; for `GET /me/token` that was 22 of its 56 us in
        process, where the authentication itself took 5 (bench/README.md, "eighth pass").
        A route qualifies for the direct handler only when none of that can matter: no
        path, query, header, cookie or body parameters anywhere in its dependency tree, no
        security scopes, nothing but `Request` and other such dependencies as arguments,
        every dependency a plain `async def` (no `yield`, no class, no security scheme), and
        an endpoint that returns a `Response` itself (so FastAPI would only pass it on).
        Then no request can fail validation, and calling the dependencies in FastAPI's
        order with its per-request cache (`_Plan.arguments`) is all its solver would do.
        Everything else keeps FastAPI's handler, which also takes over while
        `dependency_overrides` hold anything. The direct handler sits where FastAPI's does
        (inside `request_response()`), so errors reach the app's exception handlers as
        before. FastAPI's own telemetry is off in this app (main.create_app) and is not
        reported for these routes.
        """
        own = super().get_route_handler()
        full = _checked_query(self, _unambiguous_json(self, own))
        self._checks_ambiguity = full is not own
        if not self._building:
            # FastAPI asks again for each inclusion of the route's router under another
            # (include_router()), with the inclusion's own view of the route set aside for
            # it: that view's dependencies (an inclusion may add an authorization check)
            # and overrides are not this route's, so FastAPI's handler serves it.
            return full
        plan = _direct_plan(self.dependant, endpoint=True)
        if plan is None:
            return full
        self._direct = True
        provider = self.dependency_overrides_provider
        endpoint = self.dependant.call
        assert endpoint is not None

        checks_query = full is not own  # a direct route has no body: the query check

        async def direct(request: Request) -> Response:
            # A query there is refused by the route's last dependency (`_checked_query`),
            # which FastAPI's handler calls; the direct plan was made before it was added.
            if (checks_query and request.scope["query_string"]) or (
                provider is not None and getattr(provider, "dependency_overrides", None)
            ):
                return await full(request)
            response = await endpoint(**await plan.arguments(request, {}))
            if not isinstance(response, Response):  # its annotation said it would be
                raise TypeError(f"{endpoint.__qualname__} returned no Response")
            return response

        return direct

    @property
    def direct(self) -> bool:
        """Whether this route's own handler is the direct one (see get_route_handler)."""
        return self._direct


_AMBIGUOUS = "keyservice.ambiguous"


def _ambiguous(request: Request, errors: list[dict[str, Any]]) -> None:
    """Note a request's ambiguity, refused by `_refuse_ambiguous` once it is authenticated."""
    request.scope.setdefault(_AMBIGUOUS, []).extend(errors)


def _unreadable(request: Request, cause: ValueError | RecursionError) -> None:
    """Note that the request's JSON body could not be parsed, refused by `_refuse_ambiguous`
    once it is authenticated; this refusal, not an ambiguity found before, is the answer."""
    # FastAPI's own error for a decode error; the app's handler answers it, and any other
    # cause, in words by the cause (main._unreadable_body), as a 400 it audits.
    where = ("body", cause.pos) if isinstance(cause, json.JSONDecodeError) else ("body",)
    refusal = RequestValidationError(
        [{"type": "json_invalid", "loc": where, "msg": "There was an error parsing the body"}]
    )
    refusal.__cause__ = cause
    request.scope[_AMBIGUOUS] = refusal


async def _refuse_ambiguous(request: Request) -> None:
    """The 422 for a repeated JSON key or query parameter, or the 400 for a JSON body that
    could not be parsed; the route's last dependency.

    Raised here, not where it is found, so that a request without a valid token is a 401
    as any other is, one whose token lacks the permission a 403, and one with a token is
    audited as any other refusal of its caller is.
    """
    refusal = request.scope.get(_AMBIGUOUS)
    if refusal:
        if isinstance(refusal, RequestValidationError):
            raise refusal
        raise RequestValidationError(refusal)


def _unambiguous_json(route: APIRoute, handler: Handler) -> Handler:
    """`handler`, refusing a JSON body that gives an object the same key twice.

    JSON leaves the meaning of a repeated key open (RFC 8259 §4) and Python's parser keeps
    the last: `{"scopes": ["a"], "scopes": null}` made an inheriting key, where the client,
    a proxy or a log reader may have read the first. Such a body is a 422 naming the key,
    at any depth, raised by the route's last dependency (`_refuse_ambiguous`); FastAPI
    reads the body as it would (`request.json()`, which returns what was parsed here).

    A body that does not parse (bad syntax, nested too deeply, not UTF-8, an integer too
    long for Python) is refused by that dependency too: FastAPI parses the body before it
    solves any dependency, and its refusal came before the route's authentication (a 400
    to a caller with no token) and was not audited. FastAPI is handed no body instead
    (`request.json()` returns None) and never validates it: the dependency raises first.
    Only routes with a JSON body parameter are wrapped; `/token` and the other
    form-encoded endpoints are not.
    """
    body_field = route.body_field
    if body_field is None or isinstance(body_field.field_info, params.Form):
        return handler
    strict = route.strict_content_type
    if isinstance(strict, DefaultPlaceholder):
        strict = strict.value

    async def checked(request: Request) -> Response:
        if _json_content_type(request.headers.get("content-type"), strict=bool(strict)):
            body = await request.body()
            if body:
                try:
                    parsed, repeated = _parse_json(body)
                except (ValueError, RecursionError) as cause:  # JSONDecodeError, UnicodeDecodeError
                    parsed, repeated = None, []
                    _unreadable(request, cause)
                # Starlette's Request.json() parses once and keeps the value here.
                request._json = parsed
                if repeated:
                    _ambiguous(request, repeated)
        return await handler(request)

    return checked


_QUERY_REPEATED_MESSAGE = (
    "given more than once in the query string; send each parameter once (which of the "
    "values would count is a guess)"
)


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters `dependant` and its dependencies read, by their names in a URL."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _needs_bearer(dependant: Dependant) -> bool:
    """Whether `dependant` or one of its dependencies authenticates a Bearer token."""
    return any(
        sub.call is get_current_principal or _needs_bearer(sub) for sub in dependant.dependencies
    )


def _checked_query(route: APIRoute, handler: Handler) -> Handler:
    """`handler`, refusing a query string that gives one of its parameters twice, or one
    it does not take.

    FastAPI keeps the last value of a scalar query parameter: `?type=login&type=key.created`
    listed one type of audit event where the caller may have meant both, or the first. And
    it ignores a parameter the route does not read: `GET /admin/api-keys?ownerid=...`, a
    filter misspelt, listed every key, which a script revoking "the owner's keys" would
    then revoke; `GET /api-keys?status=revoked`, on a route with no filter at all, listed
    all the caller's keys. Such a request is a 422 naming the parameter (and, for an
    unknown one, those the route takes), raised by the route's last dependency
    (`_refuse_ambiguous`), as a JSON body's unknown field is (`extra="forbid"`).

    Wrapped: the routes with query parameters (the lists and their filters), and every
    route of the JSON API that needs a Bearer token. Not the others: the OAuth endpoints
    (`TableRoute.checks_query` off) refuse credentials in the query by rules of their
    own and ignore the rest (RFC 6749 §3.2), and the probes, the public metadata, the
    docs and the console are read by tools and browsers that may add a query of theirs.
    """
    names = _query_names(route.dependant)
    if not names and not (getattr(route, "checks_query", False) and _needs_bearer(route.dependant)):
        return handler
    unknown_message = (
        f"not a query parameter of this endpoint, which takes {', '.join(sorted(names))}"
        if names
        else "not a query parameter of this endpoint, which takes none"
    )

    async def checked(request: Request) -> Response:
        if request.scope["query_string"]:
            seen: set[str] = set()
            reported: set[str] = set()  # each name refused once, where it first went wrong
            refused: list[dict[str, Any]] = []
            for name, _ in request.query_params.multi_items():
                if name in reported:
                    continue
                if name not in names:
                    kind, message = "query_unknown", unknown_message
                elif name in seen:
                    kind, message = "query_repeated", _QUERY_REPEATED_MESSAGE
                else:
                    seen.add(name)
                    continue
                reported.add(name)
                refused.append({"type": kind, "loc": ("query", name), "msg": message})
            if refused:
                _ambiguous(request, refused)
        return await handler(request)

    return checked


def _json_content_type(value: str | None, *, strict: bool) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON (get_request_handler)."""
    if not value:
        return not strict
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class _Repeated(dict[str, Any]):
    """A JSON object in which some keys came more than once (`repeated`, in order)."""

    repeated: list[str]


_REPEATED_MESSAGE = (
    "given more than once in the same object; send each key once "
    "(JSON does not say which of the values would count)"
)


def _parse_json(body: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """The body as JSON, and the 422's errors for each key an object repeats, located by
    its path in the body. Raises json.loads's error (a ValueError, or RecursionError) for
    a body that does not parse.
    """
    repeated = False

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        value = dict(pairs)
        if len(value) == len(pairs):
            return value
        repeated = True
        ambiguous = _Repeated(value)
        seen: set[str] = set()
        ambiguous.repeated = []
        for key, _ in pairs:
            if key in seen and key not in ambiguous.repeated:
                ambiguous.repeated.append(key)
            seen.add(key)
        return ambiguous

    parsed = json.loads(body, object_pairs_hook=pairs_hook)
    if not repeated:
        return parsed, []
    errors = [
        {"type": "json_duplicate_key", "loc": ("body", *path), "msg": _REPEATED_MESSAGE}
        for path in _repeated_paths(parsed)
    ]
    return parsed, errors


def _repeated_paths(value: Any) -> list[tuple[int | str, ...]]:
    """The path of each repeated key in a parsed body, in the body's order."""
    found: list[tuple[int | str, ...]] = []
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), value)]
    while stack:  # no recursion: the body may be nested as deep as json.loads allows
        path, node = stack.pop()
        children: list[tuple[tuple[int | str, ...], Any]] = []
        if isinstance(node, dict):
            if isinstance(node, _Repeated):
                found += [(*path, key) for key in node.repeated]
            children = [((*path, key), child) for key, child in node.items()]
        elif isinstance(node, list):
            children = [((*path, index), child) for index, child in enumerate(node)]
        stack += reversed(children)
    return found


@dataclass(frozen=True)
class _Plan:
    """How to call one callable: where the request goes, and its dependencies in order."""

    request_name: str | None
    # (parameter name, the dependency, its plan, use_cache, FastAPI's cache key for it)
    dependencies: tuple[
        tuple[str | None, Callable[..., Awaitable[Any]], _Plan, bool, tuple[Any, str]], ...
    ]

    async def arguments(self, request: Request, cache: dict[Any, Any]) -> dict[str, Any]:
        """The keyword arguments, as FastAPI's solve_dependencies() makes them.

        In its order of calls too: a dependency's own dependencies are solved before its
        cached value is looked up (a `use_cache=False` one among them runs either way),
        and the first value of each key is kept for the rest of the request.
        """
        values: dict[str, Any] = {}
        if self.request_name is not None:
            values[self.request_name] = request
        for name, call, plan, use_cache, key in self.dependencies:
            arguments = await plan.arguments(request, cache)
            if use_cache and key in cache:
                value = cache[key]
            else:
                value = await call(**arguments)
            if name is not None:  # a route's `dependencies=[...]` are called, not passed
                values[name] = value
            cache.setdefault(key, value)
        return values


def _direct_plan(dependant: Dependant, *, endpoint: bool = False) -> _Plan | None:
    """A `_Plan` for `dependant` if nothing in its tree needs FastAPI's solver, else None."""
    call = dependant.call
    if (
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or dependant.own_oauth_scopes
        or getattr(dependant, "concurrency", None) is not None  # a limit FastAPI applies
        or not (inspect.isfunction(call) and inspect.iscoroutinefunction(call))
    ):
        return None
    if endpoint and not _returns_response(call):
        return None
    steps = []
    for sub in dependant.dependencies:
        plan = _direct_plan(sub)
        if plan is None:
            return None
        assert sub.call is not None
        # FastAPI's key: the callable, the security scopes (none here), the `scope` given.
        steps.append((sub.name, sub.call, plan, sub.use_cache, (sub.call, sub.scope or "")))
    return _Plan(dependant.request_param_name, tuple(steps))


def _returns_response(call: Callable[..., Any]) -> bool:
    try:
        returned = typing.get_type_hints(call).get("return")
    except Exception:  # an annotation that does not resolve: leave the route to FastAPI
        return False
    return isinstance(returned, type) and issubclass(returned, Response)


class ExactPaths(BaseRoute):
    """The head of the app's route table: the routes with a fixed path, found by a lookup.

    FastAPI tries a request's path against the table's routes in order, and even a quick
    refusal (`TableRoute.matches`) costs ~0.45 us: with this index `GET /me/token`, ninth
    in the table, is answered 3-4 us sooner, a 401 at `/admin/audit-events` (thirty-first)
    16-26 us (in process, bench/README.md "eleventh pass"). This route sits first in the
    table and answers `Match.FULL` for a request that one of the table's fixed-path routes
    (a seated `TableRoute` without `{param}`) fully matches, as that route itself would
    (its child scope, with `scope["route"]` set to that route, which `handle()` calls).
    Otherwise it answers `Match.NONE` and FastAPI's walk of the table goes on as before:
    a method that only partially matches (405), a path with parameters, a root path in the
    scope (where `TableRoute` leaves everything to FastAPI's own check), anything else.

    It gives the same answers as the walk because a path is indexed only when no route
    placed before its last fixed-path route could match it: every route there must be a
    seated `TableRoute`, with another fixed path or with a literal prefix (up to its first
    `{param}`) that the path does not start with. Those routes refuse the path on their
    quick check whatever the method, so for an indexed path the walk's first full match is
    the first of the path's own routes that matches, which is what this one returns. A
    route put in the table after the index was built (at its end, as `app.get()` or
    `include_router()` do) comes after all of them and changes nothing; one that shadows a
    fixed path (`/items/{id}` before `/items/new`) leaves that path to the walk. A route
    taken out of the table later would still be answered here; nothing in the app does that.

    FastAPI's telemetry names a request's route by the matching entry's `path_format`, which
    this one has none of: telemetry is off in this app (main.create_app).
    """

    def __init__(self, routes: list[BaseRoute]) -> None:
        members: dict[str, list[TableRoute]] = {}
        last: dict[str, int] = {}
        for position, route in enumerate(routes):
            if isinstance(route, TableRoute) and route._literal is not None and route._exact:
                members.setdefault(route._literal, []).append(route)
                last[route._literal] = position
        self._index = {
            path: tuple(own)
            for path, own in members.items()
            if all(_leaves_to_index(route, path) for route in routes[: last[path]])
        }

    @property
    def paths(self) -> frozenset[str]:
        """The fixed paths this index answers for."""
        return frozenset(self._index)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not scope.get("root_path"):
            own = self._index.get(scope["path"])
            if own is not None:
                for route in own:
                    match, child_scope = route.matches(scope)
                    if match is Match.FULL:
                        child_scope["route"] = route  # as APIRoute's own; handle() needs it
                        return match, child_scope
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)  # its routes are in the table, named there

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: BaseRoute = scope["route"]  # set by matches() above
        await route.handle(scope, receive, send)


def _leaves_to_index(route: BaseRoute, path: str) -> bool:
    """Whether the index may answer for `path` although `route` comes before its routes.

    True for a seated `TableRoute` with a fixed path (another path's, which it refuses on
    its quick check, or this one's, which the index asks itself, in table order) or with
    parameters after a literal part that `path` does not start with (refused as well).
    """
    if not isinstance(route, TableRoute) or route._literal is None:
        return False  # FastAPI's own check: it may match anything
    return route._exact or not path.startswith(route._literal)
