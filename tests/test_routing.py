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
    # The health probes first, then every API route, the same objects in the same order
    # (order is precedence: the first route matching a path wins).
    assert [route.path for route in direct[:2]] == ["/healthz", "/readyz"]
    assert direct[2:] == expected  # the console's pages stay in their own router
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
