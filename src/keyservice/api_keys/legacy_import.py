"""Import keys from an older key store: one JSON object a line, all lines or none.

    {"owner": "<username or device name>", "owner_type": "user" | "device", "name": "...",
     "scopes": [...] | null, "key": "<old key string>"}        (or "key_hash": "<hash>")

Optional: "description", "expires_at" (RFC 3339; default one year from the import, or
KEYSERVICE_KEY_MAX_TTL_DAYS if that is shorter).
A plaintext key is stored only as a slow hash (`LEGACY_KEYS`) plus the peppered HMAC
lookup `legacy.authenticate` finds it by; a given bcrypt/argon2 hash is stored as is and
gets its lookup at first use. Imported keys count as live keys of their owner like any
other, but never block the import: an owner already at the limit ends up above it and
must delete keys before creating new ones (the import reports such owners).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.api_keys.legacy import MAX_LEGACY_KEY_LENGTH
from keyservice.api_keys.models import ApiKey
from keyservice.api_keys.service import (
    audited_settings,
    check_expiry,
    count_live,
    latest_expiry,
)
from keyservice.audit import service as audit
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import ValidationFailed, quoted_loc, quoted_names
from keyservice.principals.models import Principal, named
from keyservice.scopes import service as scopes_service
from keyservice.scopes.models import effective_permissions
from keyservice.scopes.schemas import SCOPE_NAME
from keyservice.security.hashing import LEGACY_KEYS, run_slow_hash
from keyservice.security.tokens import new_client_id, parse_api_key
from keyservice.timestamps import Timestamp
from keyservice.users.schemas import NoSecret

DEFAULT_TTL = timedelta(days=365)
HASH_SCHEMES = ("bcrypt", "argon2")
# Any constant: the transactions that write an import queue on it (PostgreSQL), so that each
# sees what the one before committed (see import_lines).
IMPORT_LOCK = 0x6B73_696D_706F_72  # "ksimpor"


class LegacyKeyLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: str = Field(min_length=1, max_length=100)
    owner_type: Literal["user", "device"]
    name: Annotated[str, Field(min_length=1, max_length=100), NoSecret]
    description: Annotated[str, Field(max_length=1000), NoSecret] = ""
    scopes: list[str] | None = Field(default=None, max_length=100)
    key: str | None = Field(
        default=None, min_length=1, max_length=MAX_LEGACY_KEY_LENGTH, repr=False
    )
    key_hash: str | None = Field(default=None, min_length=1, max_length=255, repr=False)
    expires_at: Timestamp | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> LegacyKeyLine:
        if (self.key is None) == (self.key_hash is None):
            raise ValueError("give exactly one of key or key_hash")
        if self.scopes is not None and not self.scopes:
            raise ValueError("scopes must be null (inherit) or a non-empty list")
        return self


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class ImportFailed(Exception):
    """The file has bad lines; nothing was imported."""

    def __init__(self, errors: list[LineError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(error) for error in errors))


@dataclass
class ImportResult:
    imported: int
    # Owners left above the live-key limit: (owner type, name) -> live keys.
    over_limit: dict[tuple[str, str], int] = field(default_factory=dict)


class _Repeated(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refuse_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of a repeated name: which key (or owner) was meant is a
    # guess, as at the API (routing.py: json_duplicate_key).
    value: dict[str, object] = {}
    for name, item in pairs:
        if name in value:
            raise _Repeated(name)
        value[name] = item
    return value


def parse(lines: Iterable[str]) -> tuple[list[tuple[int, LegacyKeyLine]], list[LineError]]:
    """Parse the lines (blank ones skipped), collecting every error with its line number."""
    entries: list[tuple[int, LegacyKeyLine]] = []
    errors: list[LineError] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw, object_pairs_hook=_refuse_repeats)
        except json.JSONDecodeError as exc:
            # json's fixed phrases, no part of the line ("Invalid control character at").
            what = exc.msg.removesuffix(" at")
            errors.append(LineError(number, f"not valid JSON ({what} at column {exc.colno})"))
            continue
        except _Repeated as exc:
            # A name we know is named; any other could be a pasted key: never echoed.
            shown = f"'{exc.name}'" if exc.name in LegacyKeyLine.model_fields else "a field"
            errors.append(LineError(number, f"{shown} is given more than once"))
            continue
        except RecursionError:
            errors.append(LineError(number, "not valid JSON (nested too deeply)"))
            continue
        except ValueError:  # the only other: an integer of more digits than Python converts
            errors.append(LineError(number, "not valid JSON (a number too long to read)"))
            continue
        if not isinstance(value, dict):
            errors.append(LineError(number, "expected a JSON object"))
            continue
        try:
            entries.append((number, LegacyKeyLine.model_validate(value)))
        except ValidationError as exc:
            # Never echo the input: a line may hold a key.
            problems = "; ".join(
                ".".join(str(part) for part in quoted_loc(error["loc"])) + ": " + error["msg"]
                if error["loc"]
                else error["msg"]
                for error in exc.errors(include_input=False)
            )
            errors.append(LineError(number, problems))
    return entries, errors


async def _already_imported(
    session: AsyncSession, entry: LegacyKeyLine, candidates: list[str] | None
) -> bool:
    """Whether the line's key is stored already: a plaintext `key` by its lookups (under
    the fallback secret too: imported before a rotation of the server secret), a `key_hash`
    by the hash itself, which has no unique constraint: this check is all that keeps it one."""
    if entry.key is not None:
        assert candidates is not None
        query = select(ApiKey.id).where(ApiKey.legacy_lookup.in_(candidates))
    else:
        query = select(ApiKey.id).where(ApiKey.legacy_hash == entry.key_hash)
    return await session.scalar(query.limit(1)) is not None


def _hash_problem(key_hash: str) -> str | None:
    scheme = LEGACY_KEYS.identify(key_hash)
    if scheme not in HASH_SCHEMES:
        return "key_hash is not a bcrypt or argon2 hash"
    try:
        LEGACY_KEYS.handler(scheme).from_string(key_hash)
    except (ValueError, TypeError):
        return f"key_hash is not a well-formed {scheme} hash"
    return None


async def import_lines(ctx: AppContext, lines: Iterable[str], *, actor: str) -> ImportResult:
    """Validate every line, then import all keys in one transaction (or raise ImportFailed)."""
    entries, errors = parse(lines)
    now = utcnow()
    owners: dict[tuple[str, str], Principal | None] = {}
    seen_keys: dict[str, int] = {}
    seen_hashes: dict[str, int] = {}
    lookups: dict[int, list[str]] = {}
    expiries: dict[int, datetime] = {}
    # A year, as documented, unless keys may not live that long (check_expiry).
    default_expiry = min(now + DEFAULT_TTL, latest_expiry(ctx.settings, now))
    async with ctx.database.sessionmaker() as session:
        for number, entry in entries:
            wanted = (entry.owner_type, entry.owner)
            if wanted not in owners:
                owners[wanted] = await session.scalar(
                    select(Principal).where(
                        Principal.kind == entry.owner_type,
                        named(entry.owner),
                        Principal.deleted_at.is_(None),
                    )
                )
            owner = owners[wanted]
            if owner is None:
                errors.append(LineError(number, f"no {entry.owner_type} named '{entry.owner}'"))
            elif entry.scopes is not None:
                missing = sorted(set(entry.scopes) - effective_permissions(owner.permissions))
                if missing:
                    errors.append(
                        LineError(
                            number,
                            f"scopes not held by {entry.owner_type} '{entry.owner}': "
                            + quoted_names(missing, SCOPE_NAME),
                        )
                    )
            if entry.expires_at is not None:
                # As POST /api-keys has it: no later than KEYSERVICE_KEY_MAX_TTL_DAYS ahead.
                try:
                    expiries[number] = check_expiry(entry.expires_at, ctx.settings, now)
                except ValidationFailed as exc:
                    errors.append(LineError(number, exc.description))
            if entry.key is not None:
                if parse_api_key(entry.key) is not None:
                    errors.append(LineError(number, "key is a keyservice key, not a legacy one"))
                    continue
                if entry.key in seen_keys:
                    errors.append(LineError(number, f"the same key as line {seen_keys[entry.key]}"))
                    continue
                seen_keys[entry.key] = number
                lookups[number] = ctx.hasher.lookups("legacy:" + entry.key)
                if await _already_imported(session, entry, lookups[number]):
                    errors.append(LineError(number, "this key was already imported"))
            else:
                assert entry.key_hash is not None
                problem = _hash_problem(entry.key_hash)
                if problem is not None:
                    errors.append(LineError(number, problem))
                    continue
                if entry.key_hash in seen_hashes:
                    errors.append(
                        LineError(
                            number, f"the same key_hash as line {seen_hashes[entry.key_hash]}"
                        )
                    )
                    continue
                seen_hashes[entry.key_hash] = number
                if await _already_imported(session, entry, None):
                    errors.append(LineError(number, "this key_hash was already imported"))
        # Leaving the block closes the session, ending the read transaction (and SQLite's
        # write lock) before the slow hashing; loaded owners stay readable, detached.
    if errors:
        raise ImportFailed(sorted(errors, key=lambda error: error.line))

    # Slow hashes (argon2) are computed outside any transaction, off the event loop.
    hashes: dict[int, str] = {}
    for number, entry in entries:
        if entry.key is not None:
            hashes[number] = await run_slow_hash(LEGACY_KEYS.hash, entry.key)
        else:
            assert entry.key_hash is not None
            hashes[number] = entry.key_hash

    async with ctx.database.sessionmaker() as session:
        # The keys were found new in the first transaction, and another import may have
        # written one of them since (or be writing it now, for another owner: the owner locks
        # below would not queue it). Imports queue here, before the owner locks (taken after
        # them, two imports could each hold an owner the other waits for), and each checks
        # the keys again below, seeing what the one before committed. SQLite: BEGIN
        # IMMEDIATE, at the first statement, already queues every writer.
        if not ctx.database.is_sqlite:
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": IMPORT_LOCK})
        # The owners were found live in the first transaction: lock their rows (by id, as a
        # device deletion and a key creation do) until this one commits, and refuse the
        # import if one was deleted meanwhile (its deletion revoked its keys; one written
        # now would live on). A deletion after this waits, then revokes what it wrote.
        # Disabled owners are not refused: their keys are suspended, as on creation.
        found = {owner.id for owner in owners.values() if owner is not None}
        undeleted = set(
            await session.scalars(
                select(Principal.id)
                .where(Principal.id.in_(found), Principal.deleted_at.is_(None))
                .order_by(Principal.id)
                .with_for_update()
            )
        )
        deleted = [
            LineError(number, f"{entry.owner_type} '{entry.owner}' was deleted meanwhile")
            for number, entry in entries
            if (owner := owners[(entry.owner_type, entry.owner)]) is not None
            and owner.id not in undeleted
        ]
        if deleted:
            raise ImportFailed(deleted)
        # The scopes were checked in the first transaction: keep them in the catalog until
        # this one commits, and refuse the import if one left it meanwhile (scopes/service.py).
        gone = await scopes_service.hold(
            session, names={scope for _, entry in entries for scope in entry.scopes or ()}
        )
        if gone:
            raise ImportFailed(
                [
                    LineError(
                        number,
                        "scopes deleted from the catalog meanwhile: "
                        + quoted_names(sorted(set(entry.scopes) & set(gone)), SCOPE_NAME),
                    )
                    for number, entry in entries
                    if entry.scopes is not None and set(entry.scopes) & set(gone)
                ]
            )
        raced = [
            LineError(
                number,
                f"this {'key' if entry.key is not None else 'key_hash'} was imported "
                "concurrently by another import",
            )
            for number, entry in entries
            if await _already_imported(session, entry, lookups.get(number))
        ]
        if raced:
            raise ImportFailed(raced)
        # A plaintext key's lookup may still be written meanwhile by no import (the first
        # exchange of the same key imported by its hash records it, legacy.py): the unique
        # constraint refuses it at the flush of its row or at the commit.
        try:
            touched: dict[str, tuple[str, str]] = {}
            for number, entry in entries:
                owner = owners[(entry.owner_type, entry.owner)]
                assert owner is not None
                touched[owner.id] = (owner.kind, owner.name)
                key = ApiKey(
                    client_id=new_client_id(),
                    secret_hash=None,
                    principal_id=owner.id,
                    name=entry.name,
                    description=entry.description,
                    scopes=sorted(set(entry.scopes)) if entry.scopes is not None else None,
                    allowed_ips=[],
                    created_at=now,
                    expires_at=expiries.get(number, default_expiry),
                    is_legacy=True,
                    legacy_hash=hashes[number],
                    legacy_lookup=lookups[number][0] if number in lookups else None,
                    hashed_under=ctx.hasher.label if number in lookups else None,
                )
                session.add(key)
                await session.flush()
                audit.record(
                    session,
                    type="api_key.created",
                    actor=actor,
                    principal_id=owner.id,
                    key_id=key.id,
                    reason=f"imported legacy key (line {number}); {audited_settings(key)}",
                )
            over_limit: dict[tuple[str, str], int] = {}
            for owner_id, label in touched.items():
                live = await count_live(session, owner_id=owner_id, now=now)
                if live > ctx.settings.max_keys_per_principal:
                    over_limit[label] = live
            await session.commit()
        except IntegrityError:
            await session.rollback()
            raise ImportFailed(
                [LineError(0, "a key was imported concurrently by someone else; run it again")]
            ) from None
    return ImportResult(imported=len(entries), over_limit=over_limit)
