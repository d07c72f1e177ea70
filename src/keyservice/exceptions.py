"""The error tree. Services raise these; one handler renders them as JSON.

    KeyServiceError                      error, status_code, description, headers
    ├── OAuthError                       RFC 6749 §5.2 body, `Cache-Control: no-store`
    │   ├── InvalidRequest               400 invalid_request
    │   ├── InvalidClient                401 invalid_client (+ WWW-Authenticate: Basic)
    │   ├── InvalidGrant                 400 invalid_grant
    │   ├── InvalidScope                 400 invalid_scope
    │   ├── UnsupportedGrantType         400 unsupported_grant_type
    │   ├── SlowDown                     429 slow_down (+ Retry-After)
    │   └── TemporarilyUnavailable       503 temporarily_unavailable
    ├── BearerError                      RFC 6750 §3
    │   ├── MissingToken                 401, WWW-Authenticate: Bearer
    │   ├── InvalidToken                 401, Bearer error="invalid_token"
    │   └── InsufficientScope            403, Bearer error="insufficient_scope"
    ├── NotFound                         404 not_found
    ├── Conflict                         409 conflict
    ├── UnsupportedMediaType             415 unsupported_media_type (a body that is not JSON)
    ├── ValidationFailed                 422 validation_error (+ per-field details)
    └── ServiceUnavailable               503 service_unavailable

Descriptions are written for people and never contain a secret or say whether a given
client id exists. `reason`, when set, is the precise reason the audit trail records for a
request refused before any event was written (auth/router.py writes it); it is never sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any


class KeyServiceError(Exception):
    error = "server_error"
    status_code = 500
    default_description = "Something went wrong."

    def __init__(
        self,
        description: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
        reason: str | None = None,
    ) -> None:
        self.description = description or self.default_description
        self.headers = dict(headers or {})
        self.details = details
        self.reason = reason
        super().__init__(self.description)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "error_description": self.description}
        if self.details is not None:
            body["details"] = self.details
        return body


class OAuthError(KeyServiceError):
    status_code = 400


class InvalidRequest(OAuthError):
    error = "invalid_request"
    default_description = "The request is missing a parameter or is malformed."


class InvalidClient(OAuthError):
    error = "invalid_client"
    status_code = 401
    default_description = "Client authentication failed."


class InvalidGrant(OAuthError):
    error = "invalid_grant"
    default_description = "The grant is invalid, expired or revoked."


class InvalidScope(OAuthError):
    error = "invalid_scope"
    default_description = "The requested scope is not held by this client."


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    default_description = "This grant type is not supported."


class SlowDown(OAuthError):
    error = "slow_down"
    status_code = 429
    default_description = "Too many failed attempts; wait before trying again."

    def __init__(self, retry_after: int, description: str | None = None) -> None:
        super().__init__(description, headers={"Retry-After": str(max(1, retry_after))})


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status_code = 503
    default_description = "The service is temporarily unavailable; try again shortly."

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description, headers={"Retry-After": "1"})


class BearerError(KeyServiceError):
    status_code = 401


class MissingToken(BearerError):
    error = "unauthorized"
    default_description = "This endpoint needs an access token: Authorization: Bearer <JWT>."

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description, headers={"WWW-Authenticate": "Bearer"})


class InvalidToken(BearerError):
    error = "invalid_token"
    default_description = "The access token is invalid, expired or revoked."

    def __init__(self, description: str | None = None) -> None:
        super().__init__(
            description,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


class InsufficientScope(BearerError):
    error = "insufficient_scope"
    status_code = 403

    def __init__(self, scope: str, description: str | None = None) -> None:
        super().__init__(
            description
            or f"This needs the permission '{scope}', which the access token does not carry.",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )


class Forbidden(KeyServiceError):
    error = "forbidden"
    status_code = 403
    default_description = "This is not allowed."


class NotFound(KeyServiceError):
    error = "not_found"
    status_code = 404
    default_description = "Not found."


class Conflict(KeyServiceError):
    error = "conflict"
    status_code = 409
    default_description = "That conflicts with the current state."


class UnsupportedMediaType(KeyServiceError):
    error = "unsupported_media_type"
    status_code = 415
    default_description = (
        "The body must be JSON, sent with Content-Type: application/json; "
        "this request declared another type or none."
    )


class ValidationFailed(KeyServiceError):
    error = "validation_error"
    status_code = 422
    default_description = "The request is not valid."

    def __init__(
        self, description: str, *, field: str | None = None, location: str = "body"
    ) -> None:
        details = [{"loc": [location, field], "msg": description}] if field else None
        super().__init__(description, details=details)


class ServiceUnavailable(KeyServiceError):
    error = "service_unavailable"
    status_code = 503
    default_description = "The database is not answering; try again shortly."

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description, headers={"Retry-After": "1"})


# Quoting what a client sent ---------------------------------------------------------------

# Every credential this service hands out holds a run of 16 or more base62 characters
# (security/tokens.py: a key's client id part, secrets, refresh tokens; JWT segments too);
# names are made of shorter words.
CREDENTIAL_LIKE = re.compile(r"[0-9A-Za-z]{16}")
_MAX_ECHO = 64
# A field or parameter name.
FIELD_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def echoable(value: str, syntax: re.Pattern[str]) -> bool:
    """Return whether an error message may quote this value a client sent: a short name."""
    return (
        len(value) <= _MAX_ECHO
        and syntax.fullmatch(value) is not None
        and CREDENTIAL_LIKE.search(value) is None
    )


def quoted_names(values: Iterable[str], syntax: re.Pattern[str]) -> str:
    """The values a refusal names, comma-separated; those echoable() refuses only counted.

    A secret pasted into the wrong field (a key string among the scopes, say) is not sent
    back, not even in part: error bodies end up in clients' logs and support tickets.
    """
    values = list(values)
    shown = [value for value in values if echoable(value, syntax)]
    hidden = len(values) - len(shown)
    if hidden:
        shown.append(
            f"{hidden} more not quoted, as it may be a secret"
            if hidden == 1
            else f"{hidden} more not quoted, as they may be secrets"
        )
    return ", ".join(shown)


def quoted_loc(loc: Sequence[int | str]) -> list[int | str]:
    """A validation error's location with any part that is not a field name withheld."""
    return [
        part if isinstance(part, int) or echoable(part, FIELD_NAME) else "(not quoted)"
        for part in loc
    ]
