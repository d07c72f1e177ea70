"""A downstream API that accepts keyservice access tokens, using require_scopes.

    KEYSERVICE_URL=https://keys.example.com uvicorn downstream_service:app --port 9000

It never sees API keys: callers exchange their key at keyservice and send the access
token, which is verified here offline against the published JWKS.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route annotations,
# which refer to the verifier local to create_app.
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from keyservice.verify import TokenVerifier, require_scopes

PROJECTS = [{"id": "p1", "name": "Apollo"}, {"id": "p2", "name": "Gemini"}]


def create_app(keyservice_url: str, audience: str | None = None) -> FastAPI:
    """Build the service, trusting tokens issued by the keyservice at keyservice_url."""
    keyservice_url = keyservice_url.rstrip("/")
    verifier = TokenVerifier(
        f"{keyservice_url}/.well-known/jwks.json",
        issuer=keyservice_url,
        audience=audience or keyservice_url,  # keyservice's default audience is its issuer
    )
    app = FastAPI(title="projects (downstream example)")

    @app.get("/projects")
    async def list_projects(
        claims: Annotated[dict[str, Any], Depends(require_scopes(verifier, "projects:read"))],
    ) -> dict[str, Any]:
        return {"items": PROJECTS, "caller": claims["sub"], "client_id": claims.get("client_id")}

    @app.post("/invoices", status_code=201)
    async def create_invoice(
        claims: Annotated[dict[str, Any], Depends(require_scopes(verifier, "billing:write"))],
    ) -> dict[str, Any]:
        return {"created_by": claims["sub"]}

    return app


app = create_app(
    os.environ.get("KEYSERVICE_URL", "http://127.0.0.1:8000"),
    os.environ.get("KEYSERVICE_AUDIENCE"),
)
