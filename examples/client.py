"""Call a keyservice-protected API with an API key, using the SDK's httpx auth.

    KEYSERVICE_API_KEY=ksk_... KEYSERVICE_URL=https://keys.example.com python examples/client.py

The key is exchanged for a short-lived access token at first use; the auth object then
refreshes it as needed. The key itself is only ever sent to the token endpoint.
"""

from __future__ import annotations

import logging
import os
import sys

import httpx

from keyservice.client import KeyServiceAuth, TokenExchangeError


def main() -> int:
    """Show who the API key belongs to and any expiry warnings."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    base_url = os.environ.get("KEYSERVICE_URL", "http://127.0.0.1:8000").rstrip("/")
    try:
        auth = KeyServiceAuth(token_url=f"{base_url}/token")  # key from KEYSERVICE_API_KEY
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with httpx.Client(base_url=base_url, auth=auth, timeout=10) as client:
            response = client.get("/me")
            response.raise_for_status()
    except TokenExchangeError as exc:
        # e.g. "token endpoint refused the request: invalid_client (HTTP 401): ..."
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPStatusError as exc:
        print(f"error: GET /me answered HTTP {exc.response.status_code}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        # e.g. "cannot reach http://127.0.0.1:8000: ConnectError: [Errno 111] Connection refused"
        print(f"error: cannot reach {base_url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    me = response.json()
    name = me.get("username") or me.get("name")
    print(f"authenticated as {name} ({me['type']})")
    print(f"permissions: {' '.join(sorted(me['permissions']))}")
    for warning in me.get("warnings", []):
        print(f"warning: key {warning['client_id']} expires at {warning['expires_at']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
