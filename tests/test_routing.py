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
    # (HEAD is served as GET by the edge, for every route.)
    probes = [(route.path, route.methods) for route in direct[:2]]
    assert probes == [("/healthz", {"GET"}), ("/readyz", {"GET"})]

    def same(route: APIRoute) -> tuple[object, ...]:
        return (route.path, route.methods, route.endpoint, route.app, route.dependant)

    assert [same(route) for route in direct[2:]] == [same(route) for route in expected]
    assert not set(map(id, direct)) & set(map(id, expected))  # the routers' own untouched
    assert all(route._literal is None for route in expected)  # type: ignore[attr-defined]
    # Nothing was lost from the documentation either.
    documented = app.openapi()["paths"]
    for route in expected:
        if route.include_in_schema:  # documented without converters: {name:path} -> {name}
            assert route.path_format in documented, route.path


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
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"] == "method_not_allowed"
    response = await client.get("/me/tokens", headers=bearer(token))
    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "error_description": "There is nothing at this path.",
    }
    # The console (a router with one of its own inside) still answers behind them.
    assert (await client.get("/console/login")).status_code == 200


async def test_a_405_allows_every_method_the_path_takes(app, client, context) -> None:
    # RFC 9110 §15.5.6: Allow lists the resource's methods. Starlette named those of the
    # first route whose path matched, and FastAPI makes a route per method: `PUT /api-keys`
    # was told `Allow: POST`, GET being there too.
    token = await user_token(context, client, "rosa", ["admin"])
    expected = {
        "/api-keys": "GET, HEAD, POST",
        "/api-keys/some-id": "GET, HEAD, PATCH, DELETE",
        "/admin/scopes": "GET, HEAD, POST",
        "/admin/scopes/projects:read": "PATCH, DELETE",
        "/admin/devices/x/api-keys/y": "PATCH",
        "/token": "POST",
        "/.well-known/jwks.json": "GET, HEAD",
        "/openapi.json": "GET, HEAD",  # FastAPI's own route
        "/console/keys": "GET, HEAD, POST",  # behind the console's included router
    }
    for path, allow in expected.items():
        response = await client.put(path, headers=bearer(token))
        assert response.status_code == 405, (path, response.text)
        assert response.headers["allow"] == allow, path
        assert response.json()["error"] == "method_not_allowed"
    # Every method named there is taken: none of them is a 405 itself.
    for path, allow in expected.items():
        for method in allow.split(", "):
            response = await client.request(method, path, headers=bearer(token))
            assert response.status_code != 405, (method, path)


async def test_head_is_served_as_get_without_the_body(app, client, context) -> None:
    # RFC 9110 §9.1, §9.3.2: HEAD is GET without the content. FastAPI's routes take only
    # the methods they declare, so HEAD was a 405 wherever GET was served.
    token = await user_token(context, client, "hedda", ["api_keys:manage"])
    for path, headers in (
        ("/me", bearer(token)),
        ("/api-keys", bearer(token)),
        ("/.well-known/jwks.json", {}),
        ("/healthz", {}),
        ("/console/login", {}),
    ):
        got = await client.get(path, headers=headers)
        head = await client.head(path, headers=headers)
        assert (head.status_code, got.status_code) == (200, 200), path
        assert head.content == b"", path
        assert head.headers["content-length"] == got.headers["content-length"], path
        assert head.headers["content-type"] == got.headers["content-type"], path
    # Refused as a GET would be: no token is a 401 with its challenge.
    refused = await client.head("/me")
    assert refused.status_code == 401 and refused.content == b""
    assert refused.headers["www-authenticate"] == "Bearer"
    # A path without GET is still a 405 naming what it takes.
    head = await client.head("/token")
    assert head.status_code == 405 and head.headers["allow"] == "POST"


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


def _walk(routes: list[object], scope: dict[str, object]) -> tuple[object, object] | None:
    """FastAPI's answer from its walk of `routes`: the first full match, else None."""
    from starlette.routing import Match

    for route in routes:
        match, child_scope = route.matches(dict(scope))  # type: ignore[attr-defined]
        if match == Match.FULL:
            return match, child_scope
    return None


def test_the_fixed_path_index_answers_as_the_walk_of_the_table_would(tmp_path: Path) -> None:
    # ExactPaths sits first and answers the fixed paths by a lookup. For every request
    # around every route's path (methods, near misses, root paths), its full match must be
    # the walk's, and it must answer every request the walk gives a fixed-path route.
    from starlette.routing import Match

    from keyservice.routing import ExactPaths, TableRoute

    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/ks.db", tmp_path))
    index, *table = app.router.routes
    assert isinstance(index, ExactPaths)
    fixed = {r.path for r in table if isinstance(r, TableRoute) and "{" not in r.path}
    # Nothing of ours shadows a fixed path of ours, so every one of them is indexed.
    assert index.paths == fixed
    assert {"/healthz", "/me/token", "/.well-known/jwks.json", "/admin/audit-events"} <= fixed
    scopes = _scopes_to_try([route.path for route in table if isinstance(route, TableRoute)])
    scopes += [{**scope, "method": method} for scope in scopes for method in ("HEAD", "PUT")]
    # Once each (a HEAD made from a GET and from a POST of the same path is one request).
    scopes = list({(s["method"], s["root_path"], s["path"]): s for s in scopes}.values())
    answered = 0
    for scope in scopes:
        walked = _walk(table, scope)
        match, child_scope = index.matches(dict(scope))
        where = (scope["method"], scope["root_path"], scope["path"])
        if match == Match.FULL:
            assert (match, child_scope) == walked, where
            assert child_scope["route"].path == scope["path"], where
            answered += 1
        else:
            assert match == Match.NONE, where
            assert walked is None or not (
                scope["root_path"] == "" and walked[1]["route"].path in fixed  # type: ignore[index]
            ), where
    # Each fixed route once for each of its methods tried (at root path "", as written).
    methods = {scope["method"] for scope in scopes}
    pairs = {
        (method, route.path)
        for route in table
        if isinstance(route, TableRoute) and route.path in fixed
        for method in route.methods & methods
    }
    assert answered == len(pairs) > len(fixed)


async def test_a_fixed_path_request_asks_no_route_before_its_own(app, client, context) -> None:
    # The point of the index: `GET /me/token` is ninth in the table, and without it each
    # route before it was asked first (~0.45 us a refusal).
    from keyservice.routing import ExactPaths

    token = await user_token(context, client, "ines", ["projects:read"])
    table = app.router.routes
    own = next(i for i, r in enumerate(table) if getattr(r, "path", None) == "/me/token")
    assert own > 5
    asked: list[str] = []
    for route in table[:own]:
        if not isinstance(route, ExactPaths):
            original = route.matches

            def spy(scope, original=original, path=route.path):  # type: ignore[no-untyped-def]
                asked.append(path)
                return original(scope)

            route.matches = spy  # type: ignore[method-assign]
    try:
        assert (await client.get("/me/token", headers=bearer(token))).status_code == 200
        assert asked == []
        # What the index leaves to the walk walks as before: a wrong method is a 405.
        response = await client.delete("/me/token", headers=bearer(token))
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert "/healthz" in asked
    finally:
        for route in table[:own]:
            route.__dict__.pop("matches", None)


async def test_a_fixed_path_behind_a_pattern_that_matches_it_is_left_to_the_walk() -> None:
    # FastAPI takes the first route that fully matches: `/items/{item_id}` placed before
    # `/items/new` takes `GET /items/new`. The index must not answer for that path.
    from keyservice.routing import ExactPaths, TableRoute

    router = APIRouter(route_class=TableRoute)

    @router.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    @router.get("/items/new")
    async def new_get() -> dict[str, str]:
        return {"at": "new"}

    @router.post("/items/new")
    async def new_post() -> dict[str, str]:
        return {"at": "new", "method": "POST"}

    @router.get("/other")
    async def other() -> dict[str, str]:
        return {"at": "other"}

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)  # routes of ours only
    add_routes_flat(app, router)
    index = ExactPaths(app.router.routes)
    app.router.routes.insert(0, index)
    assert index.paths == {"/other"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/items/new")).json() == {"item": "new"}
        assert (await http.post("/items/new")).json() == {"at": "new", "method": "POST"}
        assert (await http.get("/other")).json() == {"at": "other"}
        wrong = await http.put("/other")
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "GET")
    rooted = httpx.ASGITransport(app=app, root_path="/v1")
    async with httpx.AsyncClient(transport=rooted, base_url="http://t") as http:
        assert (await http.get("/v1/other")).json() == {"at": "other"}
