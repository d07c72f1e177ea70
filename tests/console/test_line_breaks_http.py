"""A description typed in a console textarea is stored as the API would store it, over HTTP.

A browser sends a textarea's line breaks as CRLF, and its `maxlength` counts each as one
character: the console reads them as LF, so the text is stored with LF, and 1000 characters
with line breaks (1000 + n as sent) are within the limit of 1000.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from sqlalchemy import select

from keyservice.api_keys.models import ApiKey
from keyservice.context import AppContext
from keyservice.principals.models import Principal
from keyservice.scopes.models import Scope
from tests.console.test_admin_http import banner_errors
from tests.console.test_edit_http import shown_form
from tests.console.test_http import field_error, signed_in
from tests.factories import add_scope, create_principal, service_key

SHORT = "First line\nsecond line\n\nafter an empty one"
# 1000 characters, 9 of them line breaks: 1009 as a browser sends it. In words: a run of 40
# letters is refused as shaped like a secret.
LONG = "\n".join([("d" * 32 + " ") * 3] * 10) + "."
assert len(LONG) == 1000


def as_sent(text: str) -> str:
    """The text as a browser submits a textarea: each line break as CRLF."""
    return text.replace("\n", "\r\n")


async def _key_description(context: AppContext, name: str) -> str:
    async with context.database.sessionmaker() as session:
        [description] = (
            await session.scalars(select(ApiKey.description).where(ApiKey.name == name))
        ).all()
        return description


async def _device_description(context: AppContext, name: str) -> str:
    async with context.database.sessionmaker() as session:
        [description] = (
            await session.scalars(select(Principal.description).where(Principal.name == name))
        ).all()
        return description


async def _scope_description(context: AppContext, name: str) -> str:
    async with context.database.sessionmaker() as session:
        scope = await session.get(Scope, name)
        assert scope is not None
        return scope.description


# Each form with a description textarea: post `description` (as sent) through it; return
# the response and the description as stored.
Post = Callable[[httpx.AsyncClient, AppContext, str], Awaitable[tuple[httpx.Response, str]]]


async def _own_key_created(
    client: httpx.AsyncClient, context: AppContext, description: str
) -> tuple[httpx.Response, str]:
    await create_principal(context, "alice", permissions=["api_keys:manage"])
    token = await signed_in(client, "alice")
    sent = {"csrf_token": token, "name": "ci", "description": description, "allowed_ips": ""}
    response = await client.post("/console/keys", data=sent)
    assert response.status_code == 200, field_error(response.text, "description")
    return response, await _key_description(context, "ci")


async def _own_key_edited(
    client: httpx.AsyncClient, context: AppContext, description: str
) -> tuple[httpx.Response, str]:
    alice = await create_principal(context, "alice", permissions=["api_keys:manage"])
    key = await service_key(context, alice, "ci", description="as created")
    token = await signed_in(client, "alice")
    form = shown_form((await client.get(f"/console/keys/{key.id}/edit")).text)
    sent = {**form, "description": description, "csrf_token": token}
    response = await client.post(f"/console/keys/{key.id}/edit", data=sent)
    assert response.status_code == 303, field_error(response.text, "description")
    return response, await _key_description(context, "ci")


async def _device_key_created(
    client: httpx.AsyncClient, context: AppContext, description: str
) -> tuple[httpx.Response, str]:
    await create_principal(context, "root", permissions=["admin"])
    device = await create_principal(context, "sensor-1", kind="device")
    token = await signed_in(client, "root")
    sent = {"csrf_token": token, "name": "station", "description": description}
    response = await client.post(f"/console/admin/devices/{device.id}/keys", data=sent)
    assert response.status_code == 200, field_error(response.text, "description")
    return response, await _key_description(context, "station")


async def _device_key_edited(
    client: httpx.AsyncClient, context: AppContext, description: str
) -> tuple[httpx.Response, str]:
    await create_principal(context, "root", permissions=["admin"])
    device = await create_principal(context, "sensor-1", kind="device")
    key = await service_key(context, device, "station", description="as created")
    token = await signed_in(client, "root")
    url = f"/console/admin/devices/{device.id}/keys/{key.id}/edit"
    form = shown_form((await client.get(url)).text)
    sent = {**form, "description": description, "csrf_token": token}
    response = await client.post(url, data=sent)
    assert response.status_code == 303, field_error(response.text, "description")
    return response, await _key_description(context, "station")


async def _device_registered(
    client: httpx.AsyncClient, context: AppContext, description: str
) -> tuple[httpx.Response, str]:
    await create_principal(context, "root", permissions=["admin"])
    token = await signed_in(client, "root")
    sent = {"csrf_token": token, "name": "sensor-1", "description": description}
    response = await client.post("/console/admin/devices", data=sent)
    assert response.status_code == 303, field_error(response.text, "description")
    return response, await _device_description(context, "sensor-1")


async def _scope_created(
    client: httpx.AsyncClient, context: AppContext, description: str
) -> tuple[httpx.Response, str]:
    await create_principal(context, "root", permissions=["admin"])
    token = await signed_in(client, "root")
    sent = {"csrf_token": token, "name": "files:read", "description": description}
    response = await client.post("/console/admin/scopes", data=sent)
    assert response.status_code == 303, field_error(response.text, "description")
    return response, await _scope_description(context, "files:read")


async def _scope_edited(
    client: httpx.AsyncClient, context: AppContext, description: str
) -> tuple[httpx.Response, str]:
    await create_principal(context, "root", permissions=["admin"])
    await add_scope(context, "files:read", "as created")
    token = await signed_in(client, "root")
    sent = {"csrf_token": token, "name": "files:read", "description": description}
    response = await client.post("/console/admin/scopes/edit", data=sent)
    assert response.status_code == 303, banner_errors(response.text)
    return response, await _scope_description(context, "files:read")


FORMS: dict[str, Post] = {
    "own key, create": _own_key_created,
    "own key, edit": _own_key_edited,
    "device key, create": _device_key_created,
    "device key, edit": _device_key_edited,
    "device, register": _device_registered,
    "scope, create": _scope_created,
    "scope, edit": _scope_edited,
}


@pytest.mark.parametrize("text", [SHORT, LONG], ids=["short", "1000 characters"])
@pytest.mark.parametrize("post", FORMS.values(), ids=FORMS.keys())
async def test_a_description_typed_with_line_breaks_is_stored_with_lf(
    client: httpx.AsyncClient, context: AppContext, post: Post, text: str
) -> None:
    # A lone CR (which no browser sends) is read as a line break as well.
    sent = as_sent(text) if text is LONG else as_sent(text).replace("\r\n\r\n", "\r\r")
    _, stored = await post(client, context, sent)
    assert stored == text
