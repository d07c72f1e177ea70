"""Forms that create a key run once: sending the same form again creates nothing.

The page showing a new key's secret is the answer to the form's POST (so the secret is in
no URL), and reloading it makes the browser send the form again, as going back to it does.
Each such form carries a random one-time id (`form_id`, made when the form is shown); the
session cookie remembers the ids of the last few forms that succeeded, and a form sent
again with one of them gets a page saying the key was already made and its secret shown
once, and creates nothing. Per session, so any worker can tell; several tabs each have
their own id.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from keyservice.console.dependencies import read_session, write_session
from keyservice.console.forms import text
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


def already_done(request: Request, form_id: str | None) -> bool:
    session = read_session(request)
    return form_id is not None and session is not None and session.form_done(form_id)


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


def remember(request: Request, response: Response, form_id: str | None) -> None:
    """Remember in the session cookie that the form `form_id` succeeded."""
    session = read_session(request)
    if form_id is not None and session is not None:
        write_session(request, response, session.remembering(form_id))
