"""Turning posted forms into service inputs, and service refusals into per-field messages."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.datastructures import FormData

from keyservice.api_keys.schemas import ApiKeyCreate, ApiKeyRead, ApiKeyUpdate, normalized_cidrs
from keyservice.config import Settings
from keyservice.exceptions import KeyServiceError

# Form field name for each schema field, where they differ.
KEY_FIELDS = {"expires_at": "expires_on"}
GRACE_CHOICES: list[tuple[int, str]] = [
    (0, "Now (the old key stops working at once)"),
    (3600, "1 hour"),
    (86400, "24 hours"),
    (7 * 86400, "7 days"),
]


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def textarea(form: FormData, name: str) -> str:
    """A textarea's text with its line breaks as LF, as the API would have it.

    A browser sends a textarea's line breaks as CRLF and counts each as one character
    against `maxlength`: read as sent, a description typed in the console was stored with
    CRLF, and one of 1000 characters with line breaks refused as too long.
    """
    return lines(text(form, name))


def texts(form: FormData, name: str) -> list[str]:
    return [value for value in form.getlist(name) if isinstance(value, str)]


def addresses(value: str) -> list[str]:
    """The allow-list as typed: one entry a line, or several separated by commas or spaces
    (no address or CIDR holds either, and "10.0.0.0/8, 192.168.0.0/16" is how people write
    a list)."""
    return [part for part in re.split(r"[\s,]+", value) if part]


def _message(error: ErrorDetails) -> str:
    """A schema refusal in words for the person at the form (pydantic's are for developers).

    The API's JSON keeps pydantic's wording; a form shows "Use at most 100 characters.",
    not "String should have at most 100 characters", and a refused name in the schemas'
    own words (users/schemas.py `matching`) as a sentence.
    """
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "This field is required."
    if kind == "string_too_long":
        return f"Use at most {ctx.get('max_length')} characters."
    if kind == "too_long":
        return f"Give at most {ctx.get('max_length')} entries."
    if kind in ("name_format", "looks_like_secret"):  # users/schemas.py's words, a sentence
        said = str(error.get("msg", ""))
        return said[:1].upper() + said[1:] + "."
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


@dataclass
class FormErrors:
    """Messages by form field; `general` for those that belong to no one field."""

    fields: dict[str, str] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fields or self.general)

    def add(self, name: str | None, message: str) -> None:
        if name is None:
            self.general.append(message)
        else:
            self.fields.setdefault(name, message)

    def add_validation(self, exc: ValidationError, names: dict[str, str] | None = None) -> None:
        for error in exc.errors(include_input=False):
            loc = [str(part) for part in error.get("loc", ()) if part != "body"]
            target = (names or {}).get(loc[0], loc[0]) if loc else None
            self.add(target, _message(error))

    def add_service(self, exc: KeyServiceError, names: dict[str, str] | None = None) -> None:
        """Place a service refusal next to its field (ValidationFailed names one)."""
        for detail in exc.details or []:
            loc = [str(part) for part in detail.get("loc", ()) if part != "body"]
            if loc:
                self.add((names or {}).get(loc[0], loc[0]), str(detail.get("msg", "")))
                return
        self.add(None, exc.description)


@dataclass(frozen=True)
class ExpiryLimits:
    minimum: date
    maximum: date
    default: date


def expiry_limits(settings: Settings, now: datetime | None = None) -> ExpiryLimits:
    """The dates the form offers: keys expire at 00:00 UTC on the chosen day."""
    now = now or datetime.now(UTC)
    today = now.date()
    return ExpiryLimits(
        minimum=today + timedelta(days=1),
        maximum=(now + timedelta(days=settings.key_max_ttl_days)).date(),
        default=today + timedelta(days=settings.key_default_ttl_days),
    )


@dataclass
class KeyForm:
    """What the Generate form holds, to show it again with the user's input after an error."""

    name: str = ""
    description: str = ""
    scopes: list[str] = field(default_factory=list)
    expires_on: str = ""
    allowed_ips: str = ""


def read_key_form(
    form: FormData, errors: FormErrors, limits: ExpiryLimits
) -> tuple[KeyForm, ApiKeyCreate | None]:
    """Parse the Generate form; on a problem, record it and return no ApiKeyCreate.

    The expiry day is checked against the days the form offers, so that the message names
    them; the service checks the exact limits again.
    """
    values = KeyForm(
        name=text(form, "name"),
        description=textarea(form, "description"),
        scopes=texts(form, "scopes"),
        expires_on=text(form, "expires_on").strip(),
        allowed_ips=textarea(form, "allowed_ips"),
    )
    expires_at: datetime | None = None
    if values.expires_on:
        expires_at = _expiry_day(values.expires_on, errors, limits)
    try:
        data = ApiKeyCreate(
            name=values.name,
            description=values.description,
            scopes=values.scopes or None,
            expires_at=expires_at,
            allowed_ips=addresses(values.allowed_ips),
        )
    except ValidationError as exc:
        errors.add_validation(exc, KEY_FIELDS)
        return values, None
    if errors:
        return values, None
    return values, data


def _expiry_day(text_day: str, errors: FormErrors, limits: ExpiryLimits) -> datetime | None:
    """The expiry a form's day gives (00:00 UTC that day); None with an error recorded."""
    try:
        day = date.fromisoformat(text_day)
    except ValueError:
        errors.add("expires_on", "Enter a date such as 2027-01-31.")
        return None
    if not limits.minimum <= day <= limits.maximum:
        errors.add(
            "expires_on",
            f"Choose a day from {limits.minimum.isoformat()} to {limits.maximum.isoformat()}.",
        )
        return None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def key_values(key: ApiKeyRead) -> KeyForm:
    """The Edit form filled with the key's settings as stored."""
    return KeyForm(
        name=key.name,
        description=key.description,
        scopes=list(key.scopes or []),
        expires_on=key.expires_at.astimezone(UTC).date().isoformat(),
        allowed_ips="\n".join(key.allowed_ips),
    )


# The Edit form's hidden field holding settings_stamp() of the key as the form showed it.
SHOWN_FIELD = "shown"


def settings_stamp(key: ApiKeyRead) -> str:
    """A digest of the key's editable settings, which the Edit form carries as it showed them.

    The form sends what differs from the key as stored when it is posted: a form shown
    before another edit (a second tab, another admin) would send that edit's change back
    as its own and undo it, a scope taken away given back. The stamp tells that the key
    changed since the form was shown (edit_key_answer).
    """
    settings = [
        key.name,
        key.description,
        None if key.scopes is None else sorted(set(key.scopes)),
        key.expires_at.astimezone(UTC).isoformat(),
        key.allowed_ips,
    ]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:32]


def lines(value: str) -> str:
    """The text with its line breaks as LF: how the console reads a textarea's text, and
    compares it with a stored one.

    A browser shows a stored CR, LF or CRLF as a line break and sends each as CRLF.
    """
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _same_cidrs(typed: list[str], stored: list[str]) -> bool:
    try:
        return normalized_cidrs(typed) == stored
    except ValueError:
        return False  # not the stored list: the schema says what is wrong with it


def read_edit_form(
    form: FormData,
    errors: FormErrors,
    limits: ExpiryLimits,
    key: ApiKeyRead,
    *,
    expiry_fixed: bool,
) -> tuple[KeyForm, ApiKeyUpdate | None]:
    """Parse the Edit form into an ApiKeyUpdate holding only what differs from `key`.

    A field the person left as shown is not sent, so the service neither checks it again
    nor sees a change: the expiry shown as a day is the stored moment unless another day is
    chosen (then 00:00 UTC that day, as at creation), which matters for a key being
    replaced, whose expiry cannot change (`expiry_fixed`: the field is not editable, and
    whatever is posted for it is ignored). On a problem, record it and return no update.
    """
    stored = key_values(key)
    values = KeyForm(
        name=text(form, "name"),
        description=textarea(form, "description"),
        scopes=texts(form, "scopes"),
        expires_on=stored.expires_on if expiry_fixed else text(form, "expires_on").strip(),
        allowed_ips=textarea(form, "allowed_ips"),
    )
    changed: dict[str, object] = {}
    if values.name.strip() != key.name:
        changed["name"] = values.name
    if lines(values.description) != lines(key.description):
        changed["description"] = values.description
    scopes = sorted(set(values.scopes)) or None
    if scopes != (None if key.scopes is None else sorted(set(key.scopes))):
        changed["scopes"] = scopes
    if values.expires_on != stored.expires_on:
        if not values.expires_on:
            errors.add("expires_on", "Enter a date such as 2027-01-31.")
        else:
            expires_at = _expiry_day(values.expires_on, errors, limits)
            if expires_at is not None:
                changed["expires_at"] = expires_at
    typed_ips = addresses(values.allowed_ips)
    if not _same_cidrs(typed_ips, key.allowed_ips):
        changed["allowed_ips"] = typed_ips
    try:
        data = ApiKeyUpdate.model_validate(changed)
    except ValidationError as exc:
        errors.add_validation(exc, KEY_FIELDS)
        return values, None
    if errors:
        return values, None
    return values, data


def read_grace(form: FormData) -> int:
    """The chosen grace period; anything not offered falls back to 24 hours."""
    try:
        seconds = int(text(form, "grace_seconds"))
    except ValueError:
        return 86400
    return seconds if seconds in {choice for choice, _ in GRACE_CHOICES} else 86400
