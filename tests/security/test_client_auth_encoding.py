"""Client credentials with odd characters (RFC 6749 §2.3.1, Appendix B): never a 500."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from tests.factories import create_key, user_token


def basic_raw(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


CC = {"grant_type": "client_credentials"}


@pytest.fixture
async def key(client, context):
    token = await user_token(context, client, "enc", ["api_keys:manage"])
    return await create_key(client, token, name="enc")


async def test_percent_encoded_basic_credentials_are_decoded(client, key):
    # Encoding every character, as a strict RFC 6749 Appendix B client may, still works.
    client_id = "".join(f"%{b:02X}" for b in key["client_id"].encode())
    secret = "".join(f"%{b:02X}" for b in key["client_secret"].encode())
    response = await client.post(
        "/token", data=CC, headers=basic_raw(f"{client_id}:{secret}".encode())
    )
    assert response.status_code == 200, response.text


ODD_BASIC = [
    b"kc_%41%3A:secret",  # '%3A' is a ':' inside the client id
    b"kc_a+b:se+cret",  # '+' is a space after form-decoding
    b"kc_100%:100%",  # a lone '%'
    b"kc_%FF%FE:%C3%28",  # percent-decodes to invalid UTF-8
    b"\xff\xfe\xfd:\x80\x81",  # not UTF-8 at all
    b"kc_x:" + "é".encode("latin-1"),  # Latin-1, as some old clients send
    b"kc_x:a:b:c",  # more colons: the secret holds them
    b":secret",  # empty client id
    b"no-colon-at-all",
    b"kc_x:\x00\x01\x02",
    "kc_ü:ñ".encode(),
    b"kc_%00:secret",  # NUL: PostgreSQL text cannot even hold it
    b"kc_x:sec%00ret",
]


async def test_odd_basic_credentials_are_invalid_client(client, key):
    for raw in ODD_BASIC:
        response = await client.post("/token", data=CC, headers=basic_raw(raw))
        assert response.status_code == 401, (raw, response.text)
        assert response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"].lower().startswith("basic")


async def test_malformed_basic_header_is_invalid_client(client, key):
    headers = [
        "Basic",
        "Basic ",
        "Basic !!!!",
        "Basic a",
        "Basic " + "A" * 5000,
        "Basic \u00e9\u00e9",
    ]
    for header in headers:
        value = header.encode("latin-1")  # as sent on the wire, not necessarily ASCII
        response = await client.post("/token", data=CC, headers={"Authorization": value})
        assert response.status_code in (400, 401), (header, response.text)
        assert response.json()["error"] in ("invalid_client", "invalid_request")


ODD_FORMS = [
    {"client_id": "kc_%41", "client_secret": "a+b%2B%25"},
    {"client_id": "kc_x:y", "client_secret": "p:q"},
    {"client_id": "\u202e\u0007", "client_secret": "\ud7ff"},
    {"api_key": "ksk_%00%FF"},
    {"api_key": "ksk_" + "A" * 16 + "_" + "é" * 49},
]


async def test_odd_form_credentials_are_invalid_client(client, key):
    for fields in ODD_FORMS:
        response = await client.post("/token", content=_form({**CC, **fields}), headers=_FORM)
        assert response.status_code == 401, (fields, response.text)
        assert response.json()["error"] == "invalid_client"


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _form(values: dict[str, str]) -> bytes:
    return "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in values.items()).encode()


NUL_FORMS = [
    b"grant_type=client_credentials&client_id=kc_%00&client_secret=x",
    b"grant_type=password&username=a%00b&password=x",
    b"grant_type=password&username=a\x00b&password=x",
]


async def test_nul_in_form_is_invalid_request(client, key):
    for body in NUL_FORMS:
        response = await client.post("/token", content=body, headers=_FORM)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"] == "invalid_request"


async def test_form_body_with_invalid_utf8_is_invalid_request(client, key):
    body = b"grant_type=client_credentials&client_id=%FF%FE&client_secret=x"
    response = await client.post("/token", content=body, headers=_FORM)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    raw = b"grant_type=client_credentials&client_id=\xff\xfe&client_secret=x"
    response = await client.post("/token", content=raw, headers=_FORM)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
