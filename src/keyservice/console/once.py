"""Forms that create a key run once: sending the same form again creates nothing.

The page showing a new key's secret is the answer to the form's POST (so the secret is in
no URL), and reloading it makes the browser send the form again, as going back to it does,
and a double click sends it twice before the first answer arrives. Each such form carries
a random one-time id (`form_id`, made when the form is shown). Sending it claims the id
on the server (a `console_spent` row, see models.py) in the transaction that creates the
key, so the claim stays only with the key: a form refused for its input or a limit can be
corrected and sent again. A send whose id is already claimed, by an earlier send or one
racing it on any worker or replica, gets a page saying the key was already made and its
secret shown once, and creates nothing. Several tabs each have their own id.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from keyservice.console import service
from keyservice.console.dependencies import codec, read_session
from keyservice.console.forms import text
from keyservice.console.models import FORM
from keyservice.console.pages import PageError, render
from keyservice.console.session import FORM_ID_PATTERN

FIELD = "form_id"


def posted_form_id(form: FormData) -> str | None:
    """The form's one-time id; None for a form shown before there were ids (it still works)."""
    value = text(form, FIELD)
    if not value:
        return None
    if FORM_ID_PATTERN.fullmatch(value) is None:
        raise PageError(
            400,
            "Request refused",
            "This form is damaged (its form id is not one this console made). "
            "Go back, reload the page and try again.",
        )
    return value


async def claim(request: Request, session: AsyncSession, form_id: str | None) -> bool:
    """Claim the form's id in the open transaction; False if another send has it.

    Call it before creating anything: the claim is committed with the key, and dropped
    with everything else when the transaction is rolled back. It is kept until the
    session's end, after which the form's CSRF token is refused anyway.
    """
    console = read_session(request)
    if form_id is None or console is None:  # no session: CheckedForm refused it already
        return True
    return await service.spend(
        session,
        digest=codec(request).spent_digest(FORM, form_id),
        kind=FORM,
        until=console.expires_at,
    )


def already_done_page(
    request: Request, *, back: str, back_label: str, rotated: bool, section: str
) -> HTMLResponse:
    """The answer to a form sent again: nothing made, no secret, a way back.

    409, not 200: the request (make a key) was not carried out, because the state it would
    change is already there; the page says so in words, the status says so to tools.
    """
    return render(
        request,
        "already_done.html",
        {"back": back, "back_label": back_label, "rotated": rotated, "section": section},
        status_code=409,
    )
