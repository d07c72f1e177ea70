"""The answers of the OAuth endpoints, as /openapi.json documents them.

Documentation only: these endpoints build their answers themselves (responses.JSONResponse,
from the keyring, the settings and the token store), and the routes name these models in
`responses=`, never as a `response_model`, so nothing here runs on a request.
tests/test_openapi_conformance.py holds the real answers to them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

GrantType = Literal["client_credentials", "refresh_token", "password"]
SigningAlgorithm = Literal["ES256", "EdDSA", "RS256"]


def _absent_not_null(schema: dict[str, Any]) -> None:
    # A member left out when it does not apply is absent from the answer, never null.
    for member in schema.get("properties", {}).values():
        if member.get("default", ...) is None:
            del member["default"]


class JsonWebKey(BaseModel):
    """A public signing key (RFC 7517 §4), the members its key type has (RFC 7518 §6,
    RFC 8037 §2): `crv`, `x`, `y` for EC (ES256, P-256); `crv`, `x` for OKP (EdDSA,
    Ed25519); `n`, `e` (and `key_ops`) for RSA (RS256)."""

    model_config = ConfigDict(json_schema_extra=_absent_not_null)

    kty: Literal["EC", "OKP", "RSA"]
    kid: str = Field(description="The `kid` in the header of the tokens this key signs.")
    use: Literal["sig"]
    alg: SigningAlgorithm
    crv: str | SkipJsonSchema[None] = Field(default=None, description="EC and OKP keys.")
    x: str | SkipJsonSchema[None] = Field(default=None, description="EC and OKP keys.")
    y: str | SkipJsonSchema[None] = Field(default=None, description="EC keys.")
    n: str | SkipJsonSchema[None] = Field(default=None, description="RSA keys.")
    e: str | SkipJsonSchema[None] = Field(default=None, description="RSA keys.")
    key_ops: list[Literal["verify"]] | SkipJsonSchema[None] = Field(
        default=None, description='RSA keys: `["verify"]`.'
    )


class JsonWebKeySet(BaseModel):
    """RFC 7517 §5: the current signing key and every retired one whose tokens may still be
    unexpired, in `kid` order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "keys": [
                        {
                            "kty": "EC",
                            "crv": "P-256",
                            "x": "j7zkX52IFUiIpXUFFUqH2aMlvwJgQbz1y-iPGzu3sxc",
                            "y": "UA6RTcTQOjFQyeBtBbm_hlWk0jUjzNgB3QgEJ77kvD8",
                            "kid": "09206d923acc41dab08d3a1da1a5b0a7",
                            "alg": "ES256",
                            "use": "sig",
                        }
                    ]
                }
            ]
        }
    )

    keys: list[JsonWebKey]


class AuthorizationServerMetadata(BaseModel):
    """RFC 8414 §2: what this server serves; `issuer` and the URLs are built from
    `KEYSERVICE_ISSUER`."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    revocation_endpoint: str
    introspection_endpoint: str
    grant_types_supported: list[GrantType] = Field(
        description="`password` only while the password grant is switched on."
    )
    response_types_supported: list[str] = Field(
        description="Always empty: there is no authorization endpoint."
    )
    token_endpoint_auth_methods_supported: list[
        Literal["client_secret_basic", "client_secret_post", "none"]
    ] = Field(description="`none`: the refresh_token and password grants.")
    revocation_endpoint_auth_methods_supported: list[
        Literal["client_secret_basic", "client_secret_post", "none"]
    ]
    introspection_endpoint_auth_methods_supported: list[Literal["bearer"]]
    scopes_supported: list[str] = Field(description="The scope catalog's names.")
    access_token_signing_alg_values_supported: list[SigningAlgorithm]


def _introspection_schema(schema: dict[str, Any]) -> None:
    _absent_not_null(schema)
    schema["examples"] = [
        {
            "active": True,
            "token_type": "Bearer",
            "scope": "projects:read",
            "client_id": "kc_...",
            "sub": "0b7c...",
            "exp": 1764000000,
            "principal_type": "device",
        },
        {"active": False},
    ]


class Introspection(BaseModel):
    """RFC 7662 §2.2: `{"active": false}` alone for a token no longer usable (or never
    this service's); for an active one, what it carries."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_introspection_schema)

    active: bool
    token_type: Literal["Bearer", "refresh_token"] | SkipJsonSchema[None] = Field(
        default=None, description="`Bearer` for an access token, else `refresh_token`."
    )
    scope: str | SkipJsonSchema[None] = Field(default=None, description="Space-separated.")
    client_id: str | SkipJsonSchema[None] = Field(
        default=None, description="The key's; absent for a password sign-in."
    )
    sub: str | SkipJsonSchema[None] = Field(default=None, description="The principal's id.")
    aud: str | SkipJsonSchema[None] = None
    iss: str | SkipJsonSchema[None] = None
    exp: int | SkipJsonSchema[None] = Field(
        default=None, description="Refused from then on (a shortened TTL included)."
    )
    iat: int | SkipJsonSchema[None] = None
    jti: str | SkipJsonSchema[None] = None
    sid: str | SkipJsonSchema[None] = Field(default=None, description="The token family.")
    principal_type: Literal["user", "device"] | None = Field(
        default=None, description="Access tokens only; null for a token without the claim."
    )
