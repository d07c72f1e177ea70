"""Pages shared by own keys and device keys: the Generate and Rotate forms."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.schemas import ApiKeyRead
from keyservice.console.forms import GRACE_CHOICES, FormErrors, KeyForm, expiry_limits
from keyservice.console.pages import render
from keyservice.console.session import new_form_id
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.scopes import service as scopes_service


async def catalog_choices(
    session: AsyncSession, *, only: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """(name, description) of catalog scopes, limited to `only` when given."""
    described = {
        scope.name: scope.description for scope in await scopes_service.list_scopes(session)
    }
    names = sorted(set(only)) if only is not None else sorted(described)
    return [(name, described.get(name, "")) for name in names]


async def key_form_page(
    request: Request,
    context: AppContext,
    session: AsyncSession,
    *,
    permissions: Iterable[str],
    action: str,
    cancel: str,
    owner_label: str | None = None,
    section: str = "keys",
    values: KeyForm | None = None,
    errors: FormErrors | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """Render the Generate form: one checkbox per scope the owner holds."""
    limits = expiry_limits(context.settings)
    return render(
        request,
        "key_form.html",
        {
            "title": "Generate API key",
            "section": section,
            "action": action,
            "cancel": cancel,
            "owner_label": owner_label,
            "scopes": await catalog_choices(session, only=permissions),
            "limits": limits,
            "values": values or KeyForm(expires_on=limits.default.isoformat()),
            "errors": errors or FormErrors(),
            "form_id": new_form_id(),
        },
        status_code=status_code,
    )


async def rotate_form_page(
    request: Request,
    session: AsyncSession,
    *,
    key: ApiKeyRead,
    action: str,
    back: str,
    back_label: str,
    section: str = "keys",
) -> HTMLResponse:
    """Render the Rotate form, or (409) why this key cannot be rotated now.

    The decision is the key lists' (their Rotate button): not an expired key, nor one that
    rotation_holds() names, which the service refuses for the same reasons. A page opened
    by its address, an old bookmark or a second tab, agrees with them.
    """
    hold = None
    if key.status != "expired":
        holds = await api_keys.rotation_holds(session, owner_id=key.owner_id, now=utcnow())
        hold = holds.get(key.id)
    if key.status == "expired" or hold is not None:
        return render(
            request,
            "rotate_held.html",
            {
                "section": section,
                "key": key,
                "hold": hold,
                "back": back,
                "back_label": back_label,
            },
            status_code=409,
        )
    return render(
        request,
        "rotate.html",
        {
            "section": section,
            "key": key,
            "choices": GRACE_CHOICES,
            "action": action,
            "cancel": back,
            "form_id": new_form_id(),
        },
    )
