"""The key pages, written once for both places keys are managed in the console: one's own
(/console/keys) and a device's (/console/admin/devices/{id}/keys, for admins).

A `KeyPlace` says what differs: whose keys (the owner), who may manage them (its
dependency), at which addresses, in which words, and which service call makes each change
(the device ones lock the device). `add_key_routes` registers the Generate, Edit, Rotate
and Delete pages and forms of a place; the forms themselves are rendered below.
"""

# No `from __future__ import annotations` here: the key routes' parameters are annotated
# with an alias built inside add_key_routes (one per place), which FastAPI can only read as
# a value, not as a name to look up in this module.
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from keyservice.api_keys import service as api_keys
from keyservice.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead, ApiKeyUpdate
from keyservice.console.dependencies import CheckedForm, IpDep, Viewer
from keyservice.console.forms import (
    GRACE_CHOICES,
    SHOWN_FIELD,
    ExpiryLimits,
    FormErrors,
    KeyForm,
    expiry_limits,
    key_values,
    read_edit_form,
    read_grace,
    read_key_form,
    settings_stamp,
    text,
)
from keyservice.console.once import already_done_page, claim, posted_form_id
from keyservice.console.pages import render
from keyservice.console.session import new_form_id
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import KeyServiceError
from keyservice.ids import PathId
from keyservice.principals.models import Principal
from keyservice.scopes import service as scopes_service


@dataclass(frozen=True)
class Holder:
    """A key owner as the key forms show it, read before a change is tried: a refusal may
    roll back the session, which expires the owner's row."""

    permissions: frozenset[str]  # the scopes a key of theirs may be given
    label: str | None  # how the forms name the owner; None: "you"


@dataclass(frozen=True)
class KeyPlace(ABC):
    """Where a signed-in `viewer` manages keys, with the request's database `session`: what
    the shared key pages need to know.

    `home` is the page listing the keys (where every form leads back), `base` the prefix
    of the key pages' addresses ({base}/new, {base}/{key_id}/edit, ...), both known from
    the request's address alone: a form sent again is answered before the owner is read.
    """

    viewer: Viewer
    session: AsyncSession
    context: AppContext
    section: ClassVar[str]  # the menu entry the pages mark
    back_label: ClassVar[str]  # the words of the link back to `home`

    @property
    @abstractmethod
    def home(self) -> str: ...

    @property
    @abstractmethod
    def base(self) -> str: ...

    @abstractmethod
    async def owner(self) -> Principal:
        """The keys' owner (a 404 if there is none at this address)."""

    @abstractmethod
    def holder(self, owner: Principal) -> Holder:
        """The owner as the key forms show it."""

    @abstractmethod
    def deleted(self, owner: Principal) -> str:
        """Where a deletion leads, with its banner (read before the key is revoked)."""

    @abstractmethod
    async def create(self, data: ApiKeyCreate, ip: str | None) -> ApiKeyCreated: ...

    @abstractmethod
    async def update(self, key_id: str, data: ApiKeyUpdate, ip: str | None) -> object: ...

    @abstractmethod
    async def rotate(
        self, key_id: str, grace_seconds: int, ip: str | None
    ) -> tuple[ApiKeyCreated, datetime]:
        """The new key, and until when the old one works now."""

    async def key(self, owner: Principal, key_id: str) -> ApiKeyRead:
        """The owner's live key with this id, as the pages show it (404 for any other)."""
        key = await api_keys.get_owned(self.session, key_id=key_id, owner_id=owner.id)
        return api_keys.to_read(key, owner, self.context.settings, utcnow())

    async def sent_before(
        self, request: Request, form: FormData, *, rotated: bool
    ) -> HTMLResponse | None:
        """The answer to a Generate or Rotate form sent again (once.py), which makes
        nothing; None the first time (its one-time id is claimed then)."""
        if await claim(request, self.session, posted_form_id(form)):
            return None
        return already_done_page(
            request,
            back=self.home,
            back_label=self.back_label,
            rotated=rotated,
            section=self.section,
        )

    def shown_once(self, request: Request, created: ApiKeyCreated, **more: object) -> HTMLResponse:
        """The page showing a new key's secret, the one time it is shown."""
        values = {"created": created, "back": self.home, **more, "section": self.section}
        return render(request, "show_once.html", values)


def add_key_routes(
    router: APIRouter,
    path: str,
    place_of: Callable[..., Awaitable[KeyPlace]],
    names: Mapping[str, str],
) -> None:
    """Register a place's key pages and forms on `router`, under `path` (the router's part
    of the place's `base`). `place_of` is the dependency that builds the place from the
    request, refusing a viewer who may not manage its keys (after a form's CSRF check, as
    it is declared after the form); `names` are the routes' names, by operation: new,
    create, confirm_delete, delete, edit_page, edit, rotate_page, rotate.
    """
    Place = Annotated[KeyPlace, Depends(place_of)]

    @router.get(f"{path}/new", name=names["new"])
    async def new_key_page(request: Request, place: Place) -> Response:
        return await key_form_page(request, place, place.holder(await place.owner()))

    @router.post(path, name=names["create"])
    async def create_key(form: CheckedForm, request: Request, place: Place, ip: IpDep) -> Response:
        """Make the key and answer with the page showing its secret, once."""
        if (answered := await place.sent_before(request, form, rotated=False)) is not None:
            return answered
        holder = place.holder(await place.owner())
        errors = FormErrors()
        values, data = read_key_form(form, errors, expiry_limits(place.context.settings))
        if data is not None:
            try:
                created = await place.create(data, ip)
            except KeyServiceError as exc:
                refused_in_form(errors, exc)
            else:
                return place.shown_once(request, created)
        status_code = 409 if errors.general else 422
        return await key_form_page(request, place, holder, values, errors, status_code)

    @router.get(f"{path}/{{key_id}}/delete", name=names["confirm_delete"])
    async def confirm_delete_page(key_id: PathId, request: Request, place: Place) -> Response:
        """The confirmation page for browsers without JavaScript (others use a dialog)."""
        key = await place.key(await place.owner(), key_id)
        return render(
            request,
            "confirm_delete.html",
            {
                "section": place.section,
                "key": key,
                "action": f"{place.base}/{key.id}/delete",
                "cancel": place.home,
            },
        )

    @router.post(f"{path}/{{key_id}}/delete", name=names["delete"])
    async def delete_key(key_id: PathId, _form: CheckedForm, place: Place, ip: IpDep) -> Response:
        owner = await place.owner()
        done = place.deleted(owner)
        key = await api_keys.get_owned(place.session, key_id=key_id, owner_id=owner.id)
        actor = place.viewer.actor
        await api_keys.revoke(place.context, place.session, key=key, actor=actor, ip=ip)
        return RedirectResponse(done, status_code=303)

    @router.get(f"{path}/{{key_id}}/edit", name=names["edit_page"])
    async def edit_key_page(key_id: PathId, request: Request, place: Place) -> Response:
        owner = await place.owner()
        key = await place.key(owner, key_id)
        return await edit_form_page(request, place, place.holder(owner), key)

    @router.post(f"{path}/{{key_id}}/edit", name=names["edit"])
    async def edit_key(
        key_id: PathId, form: CheckedForm, request: Request, place: Place, ip: IpDep
    ) -> Response:
        """Save what the Edit form changed, as PATCH /api-keys/{key_id} or PATCH
        /admin/devices/{id}/api-keys/{key_id} does (edit_key_answer)."""
        owner = await place.owner()
        key = await place.key(owner, key_id)

        async def save(data: ApiKeyUpdate) -> object:
            return await place.update(key.id, data, ip)

        return await edit_key_answer(request, place, place.holder(owner), form, key, save)

    @router.get(f"{path}/{{key_id}}/rotate", name=names["rotate_page"])
    async def rotate_page(key_id: PathId, request: Request, place: Place) -> Response:
        key = await place.key(await place.owner(), key_id)
        return await rotate_form_page(request, place, key)

    @router.post(f"{path}/{{key_id}}/rotate", name=names["rotate"])
    async def rotate_key(
        key_id: PathId, form: CheckedForm, request: Request, place: Place, ip: IpDep
    ) -> Response:
        """Rotate the key and answer with the new one's secret, once (as create_key)."""
        if (answered := await place.sent_before(request, form, rotated=True)) is not None:
            return answered
        created, old_expires = await place.rotate(key_id, read_grace(form), ip)
        return place.shown_once(request, created, rotated=True, old_expires=old_expires)


def refused_in_form(errors: FormErrors, exc: KeyServiceError) -> None:
    """Put the service's refusal of a key form in the form (`errors`); one that is not the
    form's to show (an owner or key not found: 404, a server error) is raised again, for
    the error page."""
    if exc.status_code >= 500 or exc.status_code == 404:
        raise exc
    errors.add_service(exc, {"expires_at": "expires_on"})


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
    place: KeyPlace,
    holder: Holder,
    values: KeyForm | None = None,
    errors: FormErrors | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """Render the Generate form: one checkbox per scope the owner holds."""
    limits = expiry_limits(place.context.settings)
    return render(
        request,
        "key_form.html",
        {
            "title": "Generate API key",
            "section": place.section,
            "action": place.base,
            "cancel": place.home,
            "owner_label": holder.label,
            "scopes": await catalog_choices(place.session, only=holder.permissions),
            "limits": limits,
            "values": values or KeyForm(expires_on=limits.default.isoformat()),
            "errors": errors or FormErrors(),
            "form_id": new_form_id(),
        },
        status_code=status_code,
    )


async def rotate_form_page(request: Request, place: KeyPlace, key: ApiKeyRead) -> HTMLResponse:
    """Render the Rotate form, or (409) why this key cannot be rotated now.

    The decision is the key lists' (their Rotate button): not an expired key, nor one that
    rotation_holds() names, which the service refuses for the same reasons. A page opened
    by its address, an old bookmark or a second tab, agrees with them.
    """
    hold = None
    if key.status != "expired":
        holds = await api_keys.rotation_holds(place.session, owner_id=key.owner_id, now=utcnow())
        hold = holds.get(key.id)
    if key.status == "expired" or hold is not None:
        return render(
            request,
            "rotate_held.html",
            {
                "section": place.section,
                "key": key,
                "hold": hold,
                "back": place.home,
                "back_label": place.back_label,
            },
            status_code=409,
        )
    return render(
        request,
        "rotate.html",
        {
            "section": place.section,
            "key": key,
            "choices": GRACE_CHOICES,
            "action": f"{place.base}/{key.id}/rotate",
            "cancel": place.home,
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
    place: KeyPlace,
    holder: Holder,
    key: ApiKeyRead,
    *,
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
            {
                "section": place.section,
                "key": key,
                "back": place.home,
                "back_label": place.back_label,
            },
            status_code=409,
        )
    held = holder.permissions
    kept = set(key.scopes or ())
    settings = place.context.settings
    limits = expiry_limits(settings)
    stored = key_values(key)
    day = key.expires_at.astimezone(UTC).date()
    # The key's own day is always a value the date field accepts (one today, say).
    # No later than the key's secret may live (api_keys.latest_expiry).
    latest = min(limits.maximum, api_keys.latest_expiry(settings, key.created_at).date())
    offered = ExpiryLimits(minimum=min(limits.minimum, day), maximum=max(latest, day), default=day)
    return render(
        request,
        "key_form.html",
        {
            "title": "Edit API key",
            "section": place.section,
            "action": f"{place.base}/{key.id}/edit",
            "cancel": place.home,
            "owner_label": holder.label,
            "key": key,
            "scopes": await catalog_choices(place.session, only=held | kept),
            "unheld": kept - held,
            "limits": offered,
            "expiry_hold": await expiry_hold(place.session, key),
            "values": values or stored,
            "errors": errors or FormErrors(),
            "form_id": None,
            "shown": shown or settings_stamp(key),
        },
        status_code=status_code,
    )


async def edit_key_answer(
    request: Request,
    place: KeyPlace,
    holder: Holder,
    form: FormData,
    key: ApiKeyRead,
    save: Callable[[ApiKeyUpdate], Awaitable[object]],
) -> HTMLResponse | RedirectResponse:
    """Save what the Edit form changed (only that: read_edit_form) with `save` (the
    service's update), then back to the keys with a banner; a refusal shows the form again
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
            expiry_limits(place.context.settings),
            key,
            expiry_fixed=await expiry_hold(place.session, key) is not None,
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
                    refused_in_form(errors, exc)
                done = "updated"
            if not errors:
                back = f"{place.home}?done={done}&key={key.id}"
                return RedirectResponse(back, status_code=303)
    return await edit_form_page(
        request,
        place,
        holder,
        key,
        values=values,
        errors=errors,
        status_code=409 if errors.general else 422,
        shown=shown,
    )
