"""Turning posted forms into service inputs, and service refusals into per-field messages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.datastructures import FormData

from keyservice.api_keys.schemas import ApiKeyCreate
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
    if kind == "name_format":  # the schemas' own words (users/schemas.py), as a sentence
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
        description=text(form, "description"),
        scopes=texts(form, "scopes"),
        expires_on=text(form, "expires_on").strip(),
        allowed_ips=text(form, "allowed_ips"),
    )
    expires_at: datetime | None = None
    if values.expires_on:
        try:
            day = date.fromisoformat(values.expires_on)
            expires_at = datetime(day.year, day.month, day.day, tzinfo=UTC)
        except ValueError:
            errors.add("expires_on", "Enter a date such as 2027-01-31.")
        else:
            if not limits.minimum <= day <= limits.maximum:
                errors.add(
                    "expires_on",
                    f"Choose a day from {limits.minimum.isoformat()} "
                    f"to {limits.maximum.isoformat()}.",
                )
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


def read_grace(form: FormData) -> int:
    """The chosen grace period; anything not offered falls back to 24 hours."""
    try:
        seconds = int(text(form, "grace_seconds"))
    except ValueError:
        return 86400
    return seconds if seconds in {choice for choice, _ in GRACE_CHOICES} else 86400
