"""The app's route table: API routers' routes sit in it directly, in order (main.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.routing import APIRoute

from keyservice.main import add_routes_flat, create_app
from tests.conftest import make_settings
from tests.factories import bearer, user_token


def test_api_routes_sit_in_the_app_route_table_in_router_order(tmp_path: Path) -> None:
    from keyservice.admin_keys.router import router as admin_keys
    from keyservice.api_keys.router import router as api_keys
    from keyservice.audit.router import router as audit
    from keyservice.auth.router import router as auth
    from keyservice.devices.router import router as devices
    from keyservice.principals.router import router as me
    from keyservice.scopes.router import router as scopes
    from keyservice.users.router import router as users

    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/ks.db", tmp_path))
    expected = [
        route
        for router in (auth, me, api_keys, users, devices, admin_keys, scopes, audit)
        for route in router.routes
    ]
    direct = [route for route in app.router.routes if isinstance(route, APIRoute)]
    # The health probes first, then every API route in the same order (order is
    # precedence: the first route matching a path wins), each the router's own route or a
    # copy of it sharing its endpoint and handler (routing.TableRoute.seated_copy).
    assert [route.path for route in direct[:2]] == ["/healthz", "/readyz"]

    def same(route: APIRoute) -> tuple[object, ...]:
        return (route.path, route.methods, route.endpoint, route.app, route.dependant)

    assert [same(route) for route in direct[2:]] == [same(route) for route in expected]
    assert not set(map(id, direct)) & set(map(id, expected))  # the routers' own untouched
    assert all(route._literal is None for route in expected)  # type: ignore[attr-defined]
    # Nothing was lost from the documentation either.
    documented = app.openapi()["paths"]
    for route in expected:
        if route.include_in_schema:
            assert route.path in documented, route.path


async def test_a_router_holding_a_nested_router_is_included_as_usual() -> None:
    outer, inner = APIRouter(prefix="/outer"), APIRouter(prefix="/inner")

    @outer.get("/a")
    async def a() -> dict[str, str]:
        return {"at": "a"}

    @inner.get("/b")
    async def b() -> dict[str, str]:
        return {"at": "b"}

    outer.include_router(inner)
    app = FastAPI()
    add_routes_flat(app, outer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/outer/a")).json() == {"at": "a"}
        # Reached under both prefixes: its own and the one its inclusion in `outer` adds.
        assert (await http.get("/outer/inner/b")).json() == {"at": "b"}


async def test_a_flat_router_keeps_what_it_declares_for_all_its_routes() -> None:
    # Router-level dependencies (an authorization check, say) are part of each route when
    # it is made, so moving the routes into the app's table keeps them. Were they applied
    # at inclusion, as include_router() options are, this would answer 200.
    async def refuse() -> None:
        raise HTTPException(403, "refused")

    router = APIRouter(prefix="/guarded", dependencies=[Depends(refuse)])

    @router.get("/a")
    async def a() -> dict[str, str]:
        return {"at": "a"}

    app = FastAPI()
    add_routes_flat(app, router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/guarded/a")).status_code == 403


async def test_flat_routes_answer_wrong_methods_and_unknown_paths_as_before(
    client, context
) -> None:
    token = await user_token(context, client, "rita", ["projects:read"])
    response = await client.delete("/me/token", headers=bearer(token))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["error"] == "method_not_allowed"
    response = await client.get("/me/tokens", headers=bearer(token))
    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "error_description": "There is nothing at this path.",
    }
    # The console (a router with one of its own inside) still answers behind them.
    assert (await client.get("/console/login")).status_code == 200


def _scopes_to_try(paths: list[str]) -> list[dict[str, object]]:
    """Request scopes around each route path: its own, near misses, other roots."""
    variants: set[tuple[str, str]] = set()
    for path in paths:
        # "/api-keys/{key_id}" -> "/api-keys/key_id": a path the route matches
        concrete = path.replace("{", "").replace("}", "")
        for candidate in (
            concrete,
            concrete + "/",
            concrete.rstrip("/") + "/extra",
            concrete[:-1],
            concrete.upper(),
            "/ks" + concrete,
        ):
            for root_path in ("", "/ks"):
                variants.add((candidate or "/", root_path))
    variants |= {("/", ""), ("/nope", ""), ("/ks", "/ks"), ("/ks/", "/ks")}
    return [
        {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": root_path,
            "headers": [],
            "query_string": b"",
        }
        for path, root_path in sorted(variants)
        for method in ("GET", "POST", "DELETE")
    ]


def test_seated_routes_match_exactly_what_fastapi_matches(tmp_path: Path) -> None:
    # TableRoute answers "not mine" from the literal part of its path before FastAPI's own
    # check: for every route of the table and every path around every route's path, with
    # and without a root path, the answer must be FastAPI's (match kind and child scope).
    from keyservice.routing import TableRoute

    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/ks.db", tmp_path))
    seated = [route for route in app.router.routes if isinstance(route, TableRoute)]
    assert len(seated) > 25  # every API route
    assert all(route._literal is not None for route in seated)  # the quick check is on
    scopes = _scopes_to_try([route.path for route in seated])
    checked = matched = 0
    for route in seated:
        for scope in scopes:
            ours = route.matches(dict(scope))
            theirs = APIRoute.matches(route, dict(scope))
            assert ours == theirs, (route.path, scope["method"], scope["path"])
            checked += 1
            matched += theirs[0].value != 0
    assert matched > 2 * len(seated)  # the corpus reaches full and partial matches too
    assert checked == len(seated) * len(scopes)


async def test_routes_answer_under_a_root_path(app, client, context) -> None:
    token = await user_token(context, client, "rosa", ["projects:read"])
    transport = httpx.ASGITransport(app=app, root_path="/ks")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/ks/me/token", headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["sub"]
        assert (await http.delete("/ks/me/token", headers=bearer(token))).status_code == 405


async def test_a_table_route_router_included_under_a_prefix_is_matched_there() -> None:
    # The quick check is only on in the app's own table: included under another prefix a
    # route matches that prefix plus its path, which its own literal part does not start.
    from keyservice.routing import TableRoute

    router = APIRouter(prefix="/items", route_class=TableRoute)

    @router.get("/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    included, flat = FastAPI(), FastAPI()
    included.include_router(router, prefix="/v1")
    add_routes_flat(flat, router)
    for app, path in ((included, "/v1/items/7"), (flat, "/items/7")):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get(path)).json() == {"item": "7"}, path
            assert (await http.get("/elsewhere/items/7")).status_code == 404


async def test_fastapis_own_routes_sit_last_and_nothing_of_ours_matches_them(app, client) -> None:
    # create_app() moves the OpenAPI document and the docs pages to the end of the table,
    # which changes nothing only while no earlier route matches their paths.
    from starlette.routing import Match, Route

    paths = [app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url]
    tail = app.router.routes[-3:]
    assert [type(route) for route in tail] == [Route] * 3
    assert [route.path for route in tail] == paths
    for path in paths:
        for method in ("GET", "HEAD", "POST"):
            scope = {"type": "http", "method": method, "path": path, "root_path": "",
                     "headers": [], "query_string": b""}  # fmt: skip
            for route in app.router.routes[:-3]:
                assert route.matches(scope)[0] == Match.NONE, (route, path)
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert "/me/token" in response.json()["paths"]
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/docs/oauth2-redirect")).status_code == 200
