"""TableRoute's direct handler: routes whose dependencies need no solving skip the solver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.responses import JSONResponse, Response

from keyservice.main import add_routes_flat, create_app
from keyservice.routing import TableRoute
from tests.conftest import make_settings

CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


async def shared(request: Request) -> str:
    _count("shared")
    return request.url.path


async def fresh() -> int:
    _count("fresh")
    return CALLS["fresh"]


async def left(value: Annotated[str, Depends(shared)]) -> str:
    _count("left")
    return "left:" + value


async def right(
    value: Annotated[str, Depends(shared)],
    again: Annotated[int, Depends(fresh, use_cache=False)],
) -> str:
    _count("right")
    return f"right:{value}:{again}"


async def guard(request: Request) -> None:
    _count("guard")
    if request.headers.get("x-refuse"):
        raise HTTPException(403, "refused")


async def both(
    a: Annotated[str, Depends(left)],
    b: Annotated[str, Depends(right)],
    n: Annotated[int, Depends(fresh, use_cache=False)],
) -> Response:
    return JSONResponse({"a": a, "b": b, "n": n})


async def twice(
    x: Annotated[str, Depends(right)],
    y: Annotated[str, Depends(right)],
) -> Response:
    return JSONResponse({"x": x, "y": y})


async def mixed(
    first: Annotated[int, Depends(fresh, use_cache=False)],
    second: Annotated[int, Depends(fresh)],
    third: Annotated[int, Depends(fresh, use_cache=False)],
) -> Response:
    return JSONResponse({"first": first, "second": second, "third": third})


async def query(limit: int) -> Response:
    return JSONResponse({"limit": limit})


async def wrong() -> Response:
    return {"not": "a response"}  # type: ignore[return-value]


async def who(request: Request) -> str:
    return "real"


async def stand_in() -> str:
    return "override"


async def named(name: Annotated[str, Depends(who)]) -> Response:
    return JSONResponse({"name": name})


async def session() -> AsyncIterator[str]:
    yield "session"


def plain(request: Request) -> str:  # FastAPI runs it in a thread
    return "plain"


async def with_param(x_thing: str | None = None) -> str | None:  # a query parameter
    return x_thing


async def returns_model() -> dict[str, str]:
    return {}


def _routes(app: FastAPI) -> dict[str, TableRoute]:
    return {route.path: route for route in app.router.routes if isinstance(route, TableRoute)}


@pytest.fixture
def toy() -> FastAPI:
    CALLS.clear()
    router = APIRouter(route_class=TableRoute, dependencies=[Depends(guard)])
    router.add_api_route("/both", both)
    router.add_api_route("/query", query)
    router.add_api_route("/wrong", wrong)
    app = FastAPI()
    add_routes_flat(app, router)
    return app


def test_which_routes_of_the_app_skip_the_dependency_solver(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/ks.db", tmp_path))
    direct = {
        (sorted(route.methods)[0], route.path)
        for route in app.router.routes
        if isinstance(route, TableRoute) and route.direct
    }
    # Request-only dependencies and a Response returned: nothing for the solver to do.
    assert direct == {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("POST", "/token"),
        ("POST", "/revoke"),
        ("POST", "/introspect"),
        ("GET", "/me/token"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/.well-known/oauth-authorization-server"),
    }
    # A session (a `yield` dependency), a path or query parameter, a body, a model
    # returned: FastAPI's handler, as before.
    every = {(sorted(r.methods)[0], r.path) for r in app.router.routes if isinstance(r, APIRoute)}
    for route in (("GET", "/me"), ("GET", "/api-keys/{key_id}"), ("POST", "/api-keys")):
        assert route in every and route not in direct


async def test_the_direct_handler_calls_dependencies_as_fastapi_does(toy: FastAPI) -> None:
    routes = _routes(toy)
    assert routes["/both"].direct
    assert not routes["/query"].direct
    transport = httpx.ASGITransport(app=toy)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/both")
        assert response.status_code == 200
        # `shared` once per request for both its users (FastAPI's per-request cache);
        # `fresh` without the cache each time it is named; the router's guard first.
        assert response.json() == {"a": "left:/both", "b": "right:/both:1", "n": 2}
        assert CALLS == {"guard": 1, "shared": 1, "left": 1, "fresh": 2, "right": 1}
        # The same again: the cache is per request.
        assert (await http.get("/both")).json() == {"a": "left:/both", "b": "right:/both:3", "n": 4}
        # A dependency's exception reaches the app's handlers; the endpoint never ran.
        CALLS.clear()
        refused = await http.get("/both", headers={"x-refuse": "1"})
        assert refused.status_code == 403
        assert CALLS == {"guard": 1}
        # A route with a parameter to validate is FastAPI's: 422 on bad input, as ever.
        assert (await http.get("/query?limit=x")).status_code == 422
        assert (await http.get("/query?limit=3")).json() == {"limit": 3}


@pytest.mark.parametrize("path", ["/both", "/twice", "/mixed"])
async def test_the_direct_handler_calls_what_fastapis_calls_in_its_order(path: str) -> None:
    # The same endpoints and dependencies behind FastAPI's handler and behind ours: the
    # same answers and the same calls, request after request (the cache is per request;
    # a cached dependency's own dependencies are still solved; a use_cache=False result
    # is what a later cached use of the same dependency gets).
    seen: dict[str, list[object]] = {}
    for route_class in (APIRoute, TableRoute):
        router = APIRouter(route_class=route_class, dependencies=[Depends(guard)])
        for endpoint in (both, twice, mixed):
            router.add_api_route(f"/{endpoint.__name__}", endpoint)
        app = FastAPI()
        add_routes_flat(app, router)
        if route_class is TableRoute:
            assert _routes(app)[path].direct
        CALLS.clear()
        log: list[object] = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for _ in range(2):
                log.append((await http.get(path)).json())
                log.append(dict(CALLS))
        seen[route_class.__name__] = log
    assert seen["TableRoute"] == seen["APIRoute"]


async def test_the_direct_handler_refuses_an_endpoint_that_returns_no_response(
    toy: FastAPI,
) -> None:
    assert _routes(toy)["/wrong"].direct
    transport = httpx.ASGITransport(app=toy)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        with pytest.raises(TypeError, match="returned no Response"):
            await http.get("/wrong")


async def test_dependency_overrides_reach_a_direct_route_through_its_provider() -> None:
    app = FastAPI()
    router = APIRouter(route_class=TableRoute, dependency_overrides_provider=app)
    router.add_api_route("/who", named)
    add_routes_flat(app, router)
    assert _routes(app)["/who"].direct
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/who")).json() == {"name": "real"}
        app.dependency_overrides[who] = stand_in
        assert (await http.get("/who")).json() == {"name": "override"}
        app.dependency_overrides.clear()
        assert (await http.get("/who")).json() == {"name": "real"}


def test_what_the_solver_must_handle_keeps_fastapis_handler() -> None:
    router = APIRouter(route_class=TableRoute)
    router.add_api_route("/named", named)  # the controls: these qualify
    for name, dependency in (
        ("control", who),
        ("gen", session),
        ("sync", plain),
        ("param", with_param),
        ("scheme", HTTPBearer()),
    ):
        router.add_api_route(f"/{name}", _endpoint_using(dependency))
    router.add_api_route("/model", returns_model)
    direct = {route.path for route in router.routes if route.direct}  # type: ignore[attr-defined]
    assert direct == {"/named", "/control"}


def _endpoint_using(dependency: object) -> object:
    async def endpoint(value: Annotated[object, Depends(dependency)]) -> Response:
        return JSONResponse({"value": str(value)})

    endpoint.__annotations__["value"] = Annotated[object, Depends(dependency)]
    endpoint.__annotations__["return"] = Response
    return endpoint


async def refuse_all() -> None:
    raise HTTPException(403, "refused by the inclusion")


async def test_an_inclusion_with_dependencies_of_its_own_keeps_them() -> None:
    # include_router(dependencies=...) adds checks to each route under that inclusion only;
    # FastAPI builds that view's handler by asking the route again, and a direct handler
    # made from the route's own dependencies would skip them.
    router = APIRouter(route_class=TableRoute)
    router.add_api_route("/who", named)
    app = FastAPI()
    app.include_router(router, prefix="/guarded", dependencies=[Depends(refuse_all)])
    app.include_router(router, prefix="/open")
    assert router.routes[0].direct  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        refused = await http.get("/guarded/who")
        assert refused.status_code == 403
        assert refused.json() == {"detail": "refused by the inclusion"}
        assert (await http.get("/open/who")).json() == {"name": "real"}


async def test_the_apps_direct_routes_really_skip_the_solver(
    app, client, context, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastapi.routing

    from tests.factories import bearer, user_token

    token = await user_token(context, client, "sol", ["projects:read"])
    solved: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(**kwargs: object) -> object:
        solved.append(kwargs["request"].url.path)  # type: ignore[attr-defined]
        return await original(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    assert (await client.get("/me/token", headers=bearer(token))).status_code == 200
    assert (await client.get("/healthz")).status_code == 200
    assert solved == []
    # The control: a route with a session goes through FastAPI's solver.
    assert (await client.get("/me", headers=bearer(token))).status_code == 200
    assert solved == ["/me"]
