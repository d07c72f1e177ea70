"""Admin commands for operators without the console: keys, devices, audit, prune.

    keyservice keys list [--owner NAME] [--owner-type T] [--status S ...] [--json]
    keyservice keys revoke ID_OR_CLIENT_ID
    keyservice keys expiring [--within 7d] [--json]
    keyservice keys import-legacy FILE
    keyservice devices create NAME [--permission P ...] [--description D]
    keyservice devices list [--json]
    keyservice audit tail [--limit N] [--type T] [--json]
    keyservice prune
    keyservice backup FILE
    keyservice signing-keys list [--json]

Each command runs against the configured database (KEYSERVICE_DATABASE_URL) through the
same services as the HTTP API, and is audited with the actor `cli:` and the account that
ran it (`cli:alice`, keyservice.cli.cli_actor).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keyservice.cli import (
    cli_actor,
    load_settings,
    main,
    signing_keys,
    validated,
    with_context,
)

if TYPE_CHECKING:
    from keyservice.api_keys.models import ApiKey
    from keyservice.config import Settings
    from keyservice.context import AppContext
    from keyservice.principals.models import Principal

T = TypeVar("T")
STATUSES = ("valid", "suspended", "expired", "revoked")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Far past any key's expiry, and near enough that now + it is still a date.
MAX_DURATION = timedelta(days=36500)


def run(work: Callable[[AppContext], Awaitable[T]]) -> T:
    """Run `work` against the configured database; service errors become CLI errors."""
    from keyservice.exceptions import KeyServiceError

    settings = load_settings()
    try:
        return with_context(settings, work)
    except KeyServiceError as exc:
        raise click.ClickException(exc.description) from None


def console() -> Console:
    # Piped output (scripts, tests) gets wide lines instead of 80 columns of folded ids.
    return Console(width=None if sys.stdout.isatty() else 250, highlight=False)


# C0 and C1 controls (ESC starts the sequences that drive a terminal) and the bidi marks,
# embeddings, overrides and isolates that show text in another order than it is stored.
_UNSHOWABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def cell(value: str) -> str:
    """A stored string as a table shows it: Rich markup escaped, controls as `\\x1b`.

    A key's name is its owner's text (any user with api_keys:manage names their own keys),
    and descriptions and audit reasons are free text too: printed as they are, an escape
    sequence among them would rewrite the operator's screen or title, or hide a row.
    """
    shown = _UNSHOWABLE.sub(lambda found: found.group().encode("unicode_escape").decode(), value)
    return escape(shown)


def as_json(option: Callable[..., Any]) -> Callable[..., Any]:
    """The --json flag of a list command."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help='Print {"items": [...]} as JSON, the objects as the admin API shows them.',
    )(option)


def print_json(items: list[dict[str, Any]]) -> None:
    """One JSON document; non-ASCII and controls \\u-escaped, so safe on any terminal."""
    click.echo(json.dumps({"items": items}, indent=2))


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def parse_duration(value: str) -> timedelta:
    """Parse `7d`, `24h`, `30m`, `2w` or `90s` (at most MAX_DURATION)."""
    match = _DURATION.match(value)
    if match is None:
        raise click.BadParameter(f"'{value}' is not a duration like 24h, 7d or 30d")
    try:
        duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:  # past timedelta's range: beyond any date a key can have
        duration = MAX_DURATION + timedelta(days=1)
    if duration > MAX_DURATION:
        raise click.BadParameter(f"'{value}' is too long: at most {MAX_DURATION.days}d")
    return duration


def format_duration(value: timedelta) -> str:
    """Write a duration the way --within takes it (7d, 24h ...)."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _duration_option(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    return parse_duration(value)


def _keys_json(
    rows: list[tuple[ApiKey, Principal]], settings: Settings, now: datetime
) -> list[dict[str, Any]]:
    from keyservice.api_keys.service import to_read

    return [
        to_read(key, owner, settings, now).model_dump(mode="json") | {"owner_name": owner.name}
        for key, owner in rows
    ]


def _keys_table(rows: list[tuple[ApiKey, Principal]], now: datetime, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("ID", "CLIENT ID", "OWNER", "NAME", "STATUS", "EXPIRES", "LAST USED"):
        table.add_column(column, no_wrap=column in ("ID", "CLIENT ID"))
    for key, owner in rows:
        status = key.status(owner_usable=owner.usable, now=now)
        style = {"valid": "green", "suspended": "yellow"}.get(status, "red")
        table.add_row(
            cell(key.id),
            cell(key.client_id),
            cell(f"{owner.kind}:{owner.name}"),
            cell(key.name) + (" (legacy)" if key.is_legacy else ""),
            f"[{style}]{status}[/{style}]",
            when(key.expires_at),
            when(key.last_used_at),
        )
    return table


# keys ----------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """List, revoke and import API keys of every principal."""


@keys.command("list")
@click.option("--owner", help="Only keys of the user or device with this name.")
@click.option(
    "--owner-type", type=click.Choice(["user", "device"]), help="Only users' or devices'."
)
@click.option(
    "--status",
    "statuses",
    type=click.Choice(STATUSES),
    multiple=True,
    help="Only keys with this status (repeat for several).",
)
@as_json
def keys_list(
    owner: str | None, owner_type: str | None, statuses: tuple[str, ...], as_json: bool
) -> None:
    """List keys, newest first (revoked ones too, unless --status says otherwise)."""
    from sqlalchemy import select

    from keyservice.api_keys import service
    from keyservice.database import utcnow
    from keyservice.exceptions import NotFound
    from keyservice.principals.models import Principal, named

    now = utcnow()

    async def work(ctx: AppContext) -> tuple[list[tuple[ApiKey, Principal]], Settings]:
        async with ctx.database.sessionmaker() as session:
            found = await service.search(
                session,
                owner_name=owner,
                owner_type=owner_type,
                status=list(statuses) or None,
                now=now,
            )
            if not found and owner is not None:
                # A misspelt name is not an owner without keys: "no keys match" told an
                # operator checking a leaked key's owner that none was left.
                owners = select(Principal.id).where(named(owner))
                if owner_type is not None:
                    owners = owners.where(Principal.kind == owner_type)
                if await session.scalar(owners.limit(1)) is None:
                    raise NotFound(f"No {owner_type or 'user or device'} has this name.")
            return found, ctx.settings

    rows, settings = run(work)
    if as_json:
        print_json(_keys_json(rows, settings, now))
        return
    if not rows:
        click.echo("no keys match")
        return
    console().print(_keys_table(rows, now, f"{len(rows)} key(s)"))


@keys.command("revoke")
@click.argument("key_id", metavar="ID_OR_CLIENT_ID")
def keys_revoke(key_id: str) -> None:
    """Revoke a key for good (a leaked one, say); its tokens stop working within seconds.

    Give the key's id or its client id (kc_..., the 16 letters and digits after ksk_ in
    the key string). Never the key string itself: the command line is visible to every
    user of the machine (ps) and kept in shell history.
    """
    from keyservice.api_keys import service
    from keyservice.exceptions import KeyServiceError, NotFound
    from keyservice.ids import canonical_id
    from keyservice.security.tokens import CLIENT_ID_PREFIX, holds_api_key

    # Refused in the API's words, never quoted, before anything is read: the secret in it
    # is to be treated as leaked (and this revokes nothing for it: the client id does).
    by_client_id = key_id.startswith(CLIENT_ID_PREFIX) or holds_api_key(key_id)
    if by_client_id:
        try:
            service.check_client_id(key_id)
        except KeyServiceError as exc:
            raise click.ClickException(exc.description) from None

    async def work(ctx: AppContext) -> tuple[str, bool]:
        async with ctx.database.sessionmaker() as session:
            if by_client_id:
                found = await service.search(session, client_id=key_id)
                if not found:
                    raise NotFound("No API key with this client id.")
                key, owner = found[0]
            else:
                key, owner = await service.get_any(session, key_id=canonical_id(key_id))
            label = f"{key.id} ({key.client_id}) of {owner.kind} {owner.name}"
            if key.revoked_at is not None:
                return label, False
            await service.revoke(ctx, session, key=key, actor=cli_actor(), ip=None)
            return label, True

    label, revoked = run(work)
    click.echo(f"revoked key {label}" if revoked else f"key {label} was already revoked")


@keys.command("expiring")
@click.option(
    "--within",
    default="7d",
    show_default=True,
    callback=_duration_option,
    help="How far ahead to look: 24h, 7d, 30d ...",
)
@as_json
def keys_expiring(within: timedelta, as_json: bool) -> None:
    """List usable keys that expire within the given time, soonest first."""
    from keyservice.api_keys import service
    from keyservice.database import utcnow

    now = utcnow()

    async def work(ctx: AppContext) -> tuple[list[tuple[ApiKey, Principal]], Settings]:
        async with ctx.database.sessionmaker() as session:
            found = await service.search(
                session, status=["valid", "suspended"], expires_before=now + within, now=now
            )
            return found, ctx.settings

    found, settings = run(work)
    rows = sorted(found, key=lambda row: row[0].expires_at)
    if as_json:
        print_json(_keys_json(rows, settings, now))
        return
    if not rows:
        click.echo(f"no key expires within {format_duration(within)}")
        return
    console().print(
        _keys_table(rows, now, f"{len(rows)} key(s) expiring within {format_duration(within)}")
    )


@keys.command("import-legacy")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def keys_import_legacy(file: Path) -> None:
    """Import legacy keys from FILE (JSON lines); every line or none is imported.

    \b
    One object a line:
      {"owner": "alice", "owner_type": "user", "name": "ci",
       "scopes": ["projects:read"], "key": "<the old key string>"}
    owner_type is user or device; scopes may be null (the owner's permissions);
    "key_hash" (bcrypt or argon2) instead of "key"; optional "expires_at" (RFC 3339,
    default a year from now, or KEYSERVICE_KEY_MAX_TTL_DAYS if shorter). The keys work
    at /token as api_key until KEYSERVICE_LEGACY_KEYS_UNTIL.
    """
    from keyservice.api_keys.legacy_import import ImportFailed, ImportResult, import_lines

    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise click.ClickException(f"{file} is not UTF-8 text; nothing was imported") from None

    async def work(ctx: AppContext) -> tuple[ImportResult, datetime | None]:
        result = await import_lines(ctx, lines, actor=cli_actor())
        return result, ctx.settings.legacy_keys_until

    try:
        result, until = run(work)
    except ImportFailed as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        raise click.ClickException(
            f"{len(exc.errors)} problem(s) in {file}; nothing was imported"
        ) from None
    click.echo(f"imported {result.imported} legacy key(s)")
    for (kind, name), live in sorted(result.over_limit.items()):
        click.echo(
            f"note: {kind} {name} now has {live} live keys, more than the limit; it cannot "
            "create new keys until some are deleted or expire",
            err=True,
        )
    if until is not None:
        click.echo(f"legacy keys are accepted at /token until {when(until)}")


# devices -------------------------------------------------------------------------------


@click.group()
def devices() -> None:
    """Register and list devices (machines, connectors)."""


@devices.command("create")
@click.argument("name")
@click.option("--permission", "permissions", multiple=True, help="Grant a permission (repeat).")
@click.option("--description", default="", help="What the device is.")
def devices_create(name: str, permissions: tuple[str, ...], description: str) -> None:
    """Register a device; create its keys in the console (Devices) or the admin API.

    The API's route is POST /admin/devices/{id}/api-keys.
    """
    from keyservice.devices import service
    from keyservice.devices.schemas import DeviceCreate

    data = validated(
        DeviceCreate, name=name, description=description, permissions=list(permissions)
    )

    async def work(ctx: AppContext) -> str:
        async with ctx.database.sessionmaker() as session:
            device = await service.create(
                session,
                name=data.name,
                description=data.description,
                permissions=data.permissions,
                actor=cli_actor(),
                ip=None,
            )
            return device.id

    device_id = run(work)
    click.echo(f"created device {name} ({device_id})")


@devices.command("list")
@as_json
def devices_list(as_json: bool) -> None:
    """List the devices that are not deleted."""
    from keyservice.devices import service
    from keyservice.devices.schemas import DeviceRead

    async def work(ctx: AppContext) -> list[Principal]:
        async with ctx.database.sessionmaker() as session:
            return list(await service.list_devices(session))

    rows = run(work)
    if as_json:
        print_json([DeviceRead.of(device).model_dump(mode="json") for device in rows])
        return
    if not rows:
        click.echo("no devices")
        return
    table = Table(title=f"{len(rows)} device(s)", title_justify="left")
    for column in ("ID", "NAME", "PERMISSIONS", "STATE", "CREATED", "DESCRIPTION"):
        table.add_column(column, no_wrap=column == "ID")
    for device in rows:
        table.add_row(
            cell(device.id),
            cell(device.name),
            cell(" ".join(sorted(device.permissions))) or "-",
            "[yellow]disabled[/yellow]" if device.disabled else "[green]enabled[/green]",
            when(device.created_at),
            cell(device.description),
        )
    console().print(table)


# audit ---------------------------------------------------------------------------------


@click.group()
def audit() -> None:
    """Read the audit log."""


@audit.command("tail")
@click.option(
    "--limit",
    type=click.IntRange(1, 500),
    default=20,
    show_default=True,
    help="How many of the latest events.",
)
@click.option("--type", "event_type", help="Only events of this type, e.g. token.exchange.")
@as_json
def audit_tail(limit: int, event_type: str | None, as_json: bool) -> None:
    """Show the latest events, oldest of them first (like tail)."""
    from keyservice.audit import service
    from keyservice.audit.models import AuditEvent
    from keyservice.audit.schemas import AuditEventRead

    async def work(ctx: AppContext) -> list[AuditEvent]:
        async with ctx.database.sessionmaker() as session:
            items, _ = await service.list_events(session, type=event_type, limit=limit)
            return items

    events = list(reversed(run(work)))
    if as_json:
        print_json([AuditEventRead.model_validate(e).model_dump(mode="json") for e in events])
        return
    if not events:
        click.echo("no events")
        return
    table = Table(title=f"last {len(events)} event(s)", title_justify="left")
    for column in ("AT", "TYPE", "OUTCOME", "ACTOR", "PRINCIPAL", "KEY", "IP", "REASON"):
        table.add_column(column, no_wrap=column in ("AT", "TYPE"))
    for event in events:
        outcome = (
            "[green]success[/green]"
            if event.outcome == "success"
            else f"[red]{cell(event.outcome)}[/red]"
        )
        table.add_row(
            when(event.at),
            cell(event.type),
            outcome,
            cell(event.actor or "-"),
            cell(event.principal_id or "-"),
            cell(event.key_id or "-"),
            cell(event.ip or "-"),
            cell(event.reason or ""),
        )
    console().print(table)


# prune ---------------------------------------------------------------------------------


@click.command(short_help="Delete expired tokens, old audit events and spent records.")
def prune() -> None:
    """Delete refresh tokens expired over a day ago, audit events past retention,
    revocations of refresh-token families whose tokens have all expired, and the console's
    records of signed-out sessions and used key forms whose session ended over an hour ago,
    and signing keys retired over 8 days ago (the longest TTL any replica publishes them
    for, and a day).

    A prune already running (a server's own, PostgreSQL) is waited for, then this one runs.
    """
    from keyservice.database import utcnow

    settings = load_settings()
    now = utcnow()
    from keyservice.maintenance import FAMILY_MARK_KEPT, SIGNING_KEY_KEPT, prune_all

    def waiting() -> None:
        click.echo("another prune is running; waiting for it to finish", err=True)

    result = run(lambda ctx: prune_all(ctx, now=now, wait=True, waiting=waiting, actor=cli_actor()))
    assert result is not None  # it waits for its turn
    click.echo(
        f"deleted {result.refresh_tokens} refresh token(s) expired more than a day ago, "
        f"{result.audit_events} audit event(s) older than {settings.audit_retention_days} days, "
        f"{result.revoked_families} refresh-token family revocation(s) older than "
        f"{FAMILY_MARK_KEPT.days} days, {result.console_ids} console sign-out and form "
        "record(s) whose session ended over an hour ago and "
        f"{result.signing_keys} signing key(s) retired over {SIGNING_KEY_KEPT.days} days ago"
    )


# backup --------------------------------------------------------------------------------


@click.command(short_help="Copy the embedded SQLite database, consistently, while it serves.")
@click.argument("file", type=click.Path(path_type=Path))
def backup(file: Path) -> None:
    """Write a consistent copy of the embedded SQLite database to FILE, while the server
    runs (SQLite's online backup: one moment's snapshot, never a torn copy).

    FILE must not exist: a backup never overwrites. Given a folder, the copy is named
    keyservice-YYYYMMDDTHHMMSSZ.db in it (for a cron job). The copy is one file, mode 0600.
    The server secret is not in it: keep it too, stored apart, or the copy's API keys,
    refresh tokens and signing keys cannot be used. PostgreSQL: use pg_dump.
    """
    from keyservice.backup import BackupError, backup_sqlite, sqlite_path
    from keyservice.database import utcnow

    settings = load_settings()
    try:
        source = sqlite_path(settings.effective_database_url)
        if file.is_dir():
            file = file / f"keyservice-{utcnow():%Y%m%dT%H%M%SZ}.db"
        made = backup_sqlite(source, file)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"backed up the database (schema revision {made.revision}, "
        f"{made.size / 1_000_000:.1f} MB) to {made.path}"
    )
    if settings.secret_key is not None:
        where = "KEYSERVICE_SECRET_KEY"
    else:
        from keyservice.config import SECRET_KEY_FILE

        where = f"a copy of {(settings.data_dir / SECRET_KEY_FILE).resolve()}"
    if settings.secret_key_fallback is not None:
        # Mid-rotation, part of the copy is still under the previous secret.
        where += " and KEYSERVICE_SECRET_KEY_FALLBACK (a rotation is under way)"
    click.echo(
        f"The server secret is not in the backup: keep {where} too, stored apart from it. "
        "Without the secret the backup's API keys, refresh tokens and signing keys cannot be "
        "used; whoever holds both can."
    )


# signing keys --------------------------------------------------------------------------


def signing_key_schedule(
    keys: list[Any], now: datetime, published_after_retirement: timedelta
) -> list[dict[str, Any]]:
    """Each key's state (signing, pending, retired: still published, unpublished), when it
    signs from and until, and until when it is published; newest first."""
    from keyservice.security.jwt import signing_order

    order = signing_order(keys, now)
    items = []
    for key in sorted(keys, key=lambda k: (k.created_at, k.kid), reverse=True):
        published_until = (
            key.retired_at + published_after_retirement if key.retired_at is not None else None
        )
        signs_from = None
        if key in order:
            position = order.index(key)
            state = "signing" if position == 0 else "pending"
            if position:
                signs_from = order[position - 1].retired_at
        else:
            state = "retired" if published_until and published_until > now else "unpublished"
        items.append(
            {
                "kid": key.kid,
                "algorithm": key.algorithm,
                "state": state,
                "created_at": key.created_at,
                "signs_from": signs_from,
                "signs_until": key.retired_at,
                "published_until": published_until,
            }
        )
    return items


@signing_keys.command("list")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"items": [...]} as JSON.',
)
def signing_keys_list(as_json: bool) -> None:
    """Show the signing keys: which one signs, which is pending and from when, and until
    when each retired one stays published (`keyservice prune` deletes it 8 days after its
    retirement)."""
    from sqlalchemy import select

    from keyservice.auth.models import SigningKey
    from keyservice.database import utcnow

    async def work(ctx: AppContext) -> tuple[list[SigningKey], timedelta]:
        async with ctx.database.sessionmaker() as session:
            rows = list(await session.scalars(select(SigningKey)))
        return rows, ctx.keyring.published_after_retirement

    rows, published = run(work)
    items = signing_key_schedule(rows, utcnow(), published)
    if as_json:
        # Times as the other --json lists write them (the admin API's: UTC with a Z).
        from pydantic import TypeAdapter

        print_json(TypeAdapter(list[dict[str, Any]]).dump_python(items, mode="json"))
        return
    if not items:
        click.echo("no signing keys (the server makes one when it starts)")
        return
    table = Table(title=f"{len(items)} signing key(s)", title_justify="left")
    for column in (
        "KID",
        "ALG",
        "STATE",
        "CREATED",
        "SIGNS FROM",
        "SIGNS UNTIL",
        "PUBLISHED UNTIL",
    ):
        table.add_column(column, no_wrap=column == "KID")
    styles = {"signing": "green", "pending": "yellow"}
    for item in items:
        style = styles.get(item["state"], "red")
        table.add_row(
            cell(item["kid"]),
            cell(item["algorithm"]),
            f"[{style}]{item['state']}[/{style}]",
            when(item["created_at"]),
            when(item["signs_from"]),
            when(item["signs_until"]),
            when(item["published_until"]),
        )
    console().print(table)


# the server secret ---------------------------------------------------------------------


@click.group("secret-key")
def secret_key() -> None:
    """Rotating the server secret: what still needs the old one.

    The old secret is KEYSERVICE_SECRET_KEY_FALLBACK meanwhile (README, "Rotating the
    server secret")."""


@secret_key.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
def secret_key_status(as_json: bool) -> None:
    """Show what is stored under the current server secret and what still needs the
    fallback (KEYSERVICE_SECRET_KEY_FALLBACK): live API keys by the secret their HMAC was
    made under, and the published signing keys by the secret they are encrypted under.

    The secrets are shown by their labels (16 hex characters derived from each, never the
    secret). A key is moved to the current secret at its next exchange; a signing key when
    a server starts. Refresh tokens are not counted: those made under the fallback are gone
    one refresh-token lifetime after every replica runs with the new secret.
    """
    from keyservice import secret_rotation

    found = run(secret_rotation.status)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
        return
    click.echo(f"server secret:  {found.label}")
    click.echo(
        f"fallback:       {found.fallback_label}"
        if found.fallback_label is not None
        else "fallback:       not set (KEYSERVICE_SECRET_KEY_FALLBACK)"
    )
    click.echo(
        f"live API keys:  {found.live_keys_current} under the server secret, "
        f"{found.live_keys_fallback} under the fallback, "
        f"{found.live_keys_unlabelled} not labelled yet"
        + (f", {found.live_keys_other} under another secret" if found.live_keys_other else "")
    )
    click.echo(
        f"signing keys:   {len(found.signing_keys_current)} under the server secret, "
        f"{len(found.signing_keys_fallback)} under the fallback"
        + (
            f", {len(found.signing_keys_unreadable)} under neither"
            if found.signing_keys_unreadable
            else ""
        )
    )
    hours = found.refresh_lifetime_seconds / 3600
    if found.fallback_label is None:
        if found.live_keys_unlabelled:
            click.echo(
                "Keys not labelled yet are labelled with the server secret when a server "
                "starts without a fallback."
            )
        return
    if found.fallback_still_needed:
        waiting = []
        if found.live_keys_fallback or found.live_keys_unlabelled:
            waiting.append(
                "keys move at their next exchange; a key not exchanged before the "
                "fallback is removed stops working (--json names them: tell their owners, "
                "or rotate them)"
            )
        if found.signing_keys_fallback:
            waiting.append("signing keys move when a server starts")
        click.echo("The fallback is still needed: " + "; ".join(waiting) + ".")
    else:
        click.echo(
            "Nothing counted here needs the fallback. Remove it once every replica has run "
            f"with the new secret for {hours:g} hour(s) (the refresh-token lifetime)."
        )


def register(main: click.Group) -> None:
    """Add the admin commands to the `keyservice` command."""
    for command in (keys, devices, audit, prune, backup, secret_key):
        main.add_command(command)


register(main)
