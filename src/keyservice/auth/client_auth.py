"""Client authentication at /token and /revoke: exactly one of three methods.

- HTTP Basic `client_id:client_secret`, each form-urlencoded first (RFC 6749 §2.3.1, App. B)
- form fields `client_id` + `client_secret`
- form field `api_key` holding the single key string
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from keyservice.exceptions import InvalidClient, InvalidRequest
from keyservice.security.tokens import parse_api_key


@dataclass(frozen=True)
class ClientCredentials:
    method: str  # "basic", "post" or "api_key"
    client_id: str | None
    secret: str | None = field(repr=False)
    api_key: str | None = field(default=None, repr=False)

    @property
    def basic(self) -> bool:
        return self.method == "basic"


def _decode_basic(header: str) -> str | None:
    """The text a Basic header value carries, or None if it is not base64 of UTF-8."""
    _scheme, _, encoded = header.partition(" ")
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # bad base64, non-ASCII header, non-UTF-8 inside
        return None


def parse_basic(header: str) -> tuple[str, str]:
    """Decode a Basic header value into (client_id, secret)."""
    decoded = _decode_basic(header)
    if decoded is None:
        raise _malformed_basic(
            "The Basic credentials are not valid base64 of client_id:client_secret."
        )
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        raise _malformed_basic("The Basic credentials must have the form client_id:client_secret.")
    return unquote_plus(client_id), unquote_plus(secret)


def _malformed_basic(description: str) -> InvalidClient:
    return InvalidClient(
        description,
        headers={"WWW-Authenticate": 'Basic realm="keyservice"'},
        reason="malformed basic credentials",
    )


def _is_basic(authorization: str) -> bool:
    return authorization.split(" ", 1)[0].lower() == "basic"


def named_client_id(
    form: Mapping[str, str], authorization: str | None, query: Mapping[str, str] | None = None
) -> str | None:
    """Return the client id a request names by any method, unauthenticated, or None.

    For the audit trail of a request refused before its client was authenticated: the
    body, then the Basic header, then the query string (whose credentials are refused, but
    still name a client). Only the client id is taken, never a secret; the client id in an
    api_key string only when its checksum holds.
    """
    named = _named_in(form)
    if named is not None:
        return named
    if authorization and _is_basic(authorization):
        decoded = _decode_basic(authorization)  # a client id without its ':secret' included
        if decoded:
            return unquote_plus(decoded.partition(":")[0])
    return _named_in(query) if query is not None else None


def _named_in(params: Mapping[str, str]) -> str | None:
    """The client id that parameters (a form, a query) name: `client_id`, or the client id
    part of a well-formed `api_key`."""
    if params.get("client_id"):
        return params["client_id"]
    api_key = params.get("api_key")
    if api_key:
        parsed = parse_api_key(api_key)
        if parsed is not None:
            return parsed[0]
    return None


def client_credentials(
    form: Mapping[str, str], authorization: str | None
) -> ClientCredentials | None:
    """Return the one set of client credentials sent, None if none; refuse two at once."""
    methods: list[ClientCredentials] = []
    if authorization and _is_basic(authorization):
        client_id, secret = parse_basic(authorization)
        methods.append(ClientCredentials("basic", client_id, secret))
    if "client_id" in form or "client_secret" in form:
        if "client_secret" not in form:
            raise InvalidRequest(
                "client_id was sent without client_secret.", reason="client secret missing"
            )
        if "client_id" not in form:
            raise InvalidRequest(
                "client_secret was sent without client_id.", reason="client id missing"
            )
        methods.append(ClientCredentials("post", form["client_id"], form["client_secret"]))
    if "api_key" in form:
        methods.append(ClientCredentials("api_key", None, None, api_key=form["api_key"]))
    if len(methods) > 1:
        raise InvalidRequest(
            "Use exactly one client authentication method: HTTP Basic, "
            "client_id + client_secret, or api_key.",
            reason="two client authentication methods",
        )
    return methods[0] if methods else None
