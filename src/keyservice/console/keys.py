"""Pages shared by own keys and device keys: the Generate, Edit and Rotate forms."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.schemas import ApiKeyRead, ApiKeyUpdate
from keyservice.console.forms import (
    GRACE_CHOICES,
    SHOWN_FIELD,
    ExpiryLimits,
    FormErrors,
    KeyForm,
    expiry_limits,
    key_values,
    read_edit_form,
    settings_stamp,
    text,
)
from keyservice.console.pages import render
from keyservice.console.session import new_form_id
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import KeyServiceError
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


def key_notice(request: Request, keys: Sequence[ApiKeyRead]) -> str | None:
    """The banner after an edit (`?done=updated&key=<id>`), naming the key if it is listed.

    The name is read from the list shown, never from the query: a link with any query
    cannot put a stranger's words in the banner.
    """
    done = request.query_params.get("done", "")
    if done not in ("updated", "unchanged"):
        return None
    key_id = request.query_params.get("key")
    name = next((key.name for key in keys if key.id == key_id), None)
    if done == "updated":
        return f"Key {name} was updated." if name else "The key was updated."
    what = f"key {name}" if name else "the key"
    return f"Nothing was changed: the form held the settings {what} has."


async def expiry_hold(session: AsyncSession, key: ApiKeyRead) -> api_keys.RotationHold | None:
    """The rotation hold that fixes the key's expiry (it is being replaced), if any.

    The service refuses to move the end of a replaced key's grace period; the Edit form
    shows that expiry read-only instead of offering a change it would refuse.
    """
    return await api_keys.replacement_hold(
        session, owner_id=key.owner_id, key_id=key.id, now=utcnow()
    )


async def edit_form_page(
    request: Request,
    context: AppContext,
    session: AsyncSession,
    *,
    key: ApiKeyRead,
    permissions: Iterable[str],
    action: str,
    back: str,
    back_label: str,
    owner_label: str | None = None,
    section: str = "keys",
    values: KeyForm | None = None,
    errors: FormErrors | None = None,
    status_code: int = 200,
    shown: str | None = None,
) -> HTMLResponse:
    """Render the Edit form filled with the key's settings, or (409) why an expired key
    cannot be edited (the key lists offer no Edit for it; its address still leads here).

    The scopes offered are the permissions the owner holds and those the key has (one the
    owner lost since stays ticked, and the service accepts it unchanged; unticking drops it).
    `shown`: the stamp of the settings the form first showed, kept when it is shown again
    with the person's input (settings_stamp; the key's own when None).
    """
    if key.status == "expired":
        return render(
            request,
            "edit_expired.html",
            {"section": section, "key": key, "back": back, "back_label": back_label},
            status_code=409,
        )
    held = frozenset(permissions)
    kept = set(key.scopes or ())
    limits = expiry_limits(context.settings)
    stored = key_values(key)
    day = key.expires_at.astimezone(UTC).date()
    # The key's own day is always a value the date field accepts (one today, say).
    # No later than the key's secret may live (api_keys.latest_expiry).
    latest = min(limits.maximum, api_keys.latest_expiry(context.settings, key.created_at).date())
    offered = ExpiryLimits(minimum=min(limits.minimum, day), maximum=max(latest, day), default=day)
    return render(
        request,
        "key_form.html",
        {
            "title": "Edit API key",
            "section": section,
            "action": action,
            "cancel": back,
            "owner_label": owner_label,
            "key": key,
            "scopes": await catalog_choices(session, only=held | kept),
            "unheld": kept - held,
            "limits": offered,
            "expiry_hold": await expiry_hold(session, key),
            "values": values or stored,
            "errors": errors or FormErrors(),
            "form_id": None,
            "shown": shown or settings_stamp(key),
        },
        status_code=status_code,
    )


async def edit_key_answer(
    request: Request,
    context: AppContext,
    session: AsyncSession,
    *,
    form: FormData,
    key: ApiKeyRead,
    save: Callable[[ApiKeyUpdate], Awaitable[object]],
    permissions: Iterable[str],
    action: str,
    back: str,
    back_label: str,
    owner_label: str | None = None,
    section: str = "keys",
) -> HTMLResponse | RedirectResponse:
    """Save what the Edit form changed (only that: read_edit_form) with `save` (the
    service's update), then back to `back` with a banner; a refusal shows the form again
    with the input and the message.

    Sent twice, the form changes nothing the second time (its values are the stored ones
    then), so it needs no one-time id. An expired key gets the page saying why it cannot be
    edited (the service would refuse it: 409). A form shown before the key's settings
    changed (another tab, another admin, the API) is refused (409) and shown again with the
    key as it is now: saved, it would have undone that change, a scope taken away given back.
    """
    errors = FormErrors()
    values = None
    shown = text(form, SHOWN_FIELD) or None  # none from a page served before it was added
    if key.status != "expired":
        values, data = read_edit_form(
            form,
            errors,
            expiry_limits(context.settings),
            key,
            expiry_fixed=await expiry_hold(session, key) is not None,
        )
        if data is not None:
            done = "unchanged"
            if data.model_fields_set and shown is not None and shown != settings_stamp(key):
                errors.add(
                    None,
                    "This key's settings were changed since this page was shown (in another "
                    "window, or by someone else), so nothing was saved: the form now shows the "
                    "key as it is. Make your changes again.",
                )
                values, shown = None, None
            elif data.model_fields_set:
                try:
                    await save(data)
                except KeyServiceError as exc:
                    if exc.status_code >= 500 or exc.status_code == 404:
                        raise
                    errors.add_service(exc, {"expires_at": "expires_on"})
                done = "updated"
            if not errors:
                return RedirectResponse(f"{back}?done={done}&key={key.id}", status_code=303)
    return await edit_form_page(
        request,
        context,
        session,
        key=key,
        permissions=permissions,
        action=action,
        back=back,
        back_label=back_label,
        owner_label=owner_label,
        section=section,
        values=values,
        errors=errors,
        status_code=409 if errors.general else 422,
        shown=shown,
    )
