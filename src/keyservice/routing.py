"""The API routers' route class: cheap to pass over in the app's own route table."""

from __future__ import annotations

import copy

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope


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
    """

    _literal: str | None = None
    _exact = False

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
