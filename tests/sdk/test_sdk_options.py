"""The SDK's numeric options are checked when the object is made, not found wrong later."""

from __future__ import annotations

import math

import pytest

from keyservice.client import KeyServiceAuth
from keyservice.verify import TokenVerifier

JWKS_URL = "https://issuer.test/.well-known/jwks.json"
ISSUER = "https://issuer.test"
TOKEN_URL = "https://issuer.test/token"
API_KEY = "ksk_" + "A" * 16 + "_" + "B" * 49
BAD = [-1, -0.5, math.nan, math.inf, -math.inf, True, "30"]


# (option, whether 0 is allowed): a zero leeway means "exact", a zero refetch interval
# "refetch at every unknown kid"; a zero timeout or cache lifetime means nothing useful.
@pytest.mark.parametrize(
    ("option", "zero"),
    [("leeway", True), ("jwks_ttl", False), ("jwks_refetch_interval", True), ("timeout", False)],
)
def test_verifier_refuses_a_negative_zero_or_nan_duration(option: str, zero: bool) -> None:
    for value in [*BAD, *([] if zero else [0, 0.0])]:
        with pytest.raises(ValueError, match=rf"^{option} must be a .*number of seconds") as info:
            TokenVerifier(JWKS_URL, ISSUER, ISSUER, **{option: value})
        assert repr(value) in str(info.value)
    for value in [0.5, 1, 300, *([0] if zero else [])]:
        verifier = TokenVerifier(JWKS_URL, ISSUER, ISSUER, **{option: value})
        assert getattr(verifier, option, value) == value


@pytest.mark.parametrize(("option", "zero"), [("leeway", True), ("timeout", False)])
def test_auth_refuses_a_negative_zero_or_nan_duration(option: str, zero: bool) -> None:
    for value in [*BAD, *([] if zero else [0, 0.0])]:
        with pytest.raises(ValueError, match=rf"^{option} must be a .*number of seconds") as info:
            KeyServiceAuth(API_KEY, TOKEN_URL, **{option: value})
        assert repr(value) in str(info.value)
        assert "B" * 49 not in str(info.value)
    for value in [0.5, 1, 60, *([0] if zero else [])]:
        KeyServiceAuth(API_KEY, TOKEN_URL, **{option: value})
