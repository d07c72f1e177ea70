"""The SDK modules must import with the base distribution only (httpx + PyJWT)."""

from __future__ import annotations

import subprocess
import sys

SERVER_SIDE = ("fastapi", "starlette", "sqlalchemy", "pydantic", "alembic", "uvicorn")


def test_sdk_imports_nothing_server_side() -> None:
    code = (
        "import sys, keyservice.client, keyservice.verify; "
        f"print(','.join(m for m in {SERVER_SIDE!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "", f"imported server-side modules: {result.stdout}"


def test_require_scopes_imports_fastapi_only_when_called() -> None:
    code = (
        "import sys; from keyservice.verify import TokenVerifier, require_scopes; "
        "assert 'fastapi' not in sys.modules; "
        "v = TokenVerifier('http://x/jwks', 'http://x', 'http://x'); "
        "require_scopes(v, 'a'); assert 'fastapi' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
