"""The `keyservice` command: serve, migrate, users, signing keys (and admin tools)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import logging
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import click
    from pydantic import BaseModel, ValidationError
except ModuleNotFoundError as exc:  # pragma: no cover - the client-only install
    print(
        f"keyservice: the server is not installed ({exc.name} is missing); "
        "install it with: pip install 'keyservice[server]'",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

from keyservice.config import SECRET_KEY_FILE, Settings, configuration_errors, masked_url

if TYPE_CHECKING:
    from keyservice import migrations
    from keyservice.metrics import WorkerMetrics

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def load_settings(**overrides: Any) -> Settings:
    """Read settings; on a bad value, exit with a message naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = "".join(f"\n  {line}" for line in configuration_errors(exc))
        raise click.ClickException("invalid configuration:" + lines) from None


# What an account name may show in an actor; anything else (a control, a space, markup) is
# shown as "?": a name from the environment is whatever its setter wrote.
_ACCOUNT_UNSAFE = re.compile(r"[^A-Za-z0-9._@$+-]")


def _account(name: str) -> str:
    return _ACCOUNT_UNSAFE.sub("?", name[:64])


def cli_actor() -> str:
    """The actor of the events a command records: `cli:` and the account that ran it.

    The account's name is the system's user database's for the process's user (not $USER
    or $LOGNAME, which anyone sets); a uid without an entry (a container's) is named by the
    login name the environment gives, else by its number. Under sudo the account that ran
    sudo is added: `cli:root (sudo from alice)`. Whoever can run this command holds the
    database's credentials and could write any event: the name tells honest operators
    apart, it proves nothing.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    name = None
    if uid is not None:
        try:
            import pwd

            name = pwd.getpwuid(uid).pw_name
        except (ImportError, KeyError):
            name = None
    if not name:
        try:
            name = getpass.getuser()  # LOGNAME, USER, LNAME, USERNAME, then the passwd entry
        except Exception:  # KeyError before Python 3.13, OSError after
            name = None
    if not name:
        return "cli" if uid is None else f"cli:uid={uid}"
    actor = f"cli:{_account(name)}"
    sudo = os.environ.get("SUDO_USER")
    if sudo and sudo != name:
        actor += f" (sudo from {_account(sudo)})"
    return actor


# How long an idle keep-alive connection stays open (uvicorn's default is 5 s). Longer than
# the idle timeout of the load balancers and proxies in front of services (AWS ALB 60 s,
# nginx's upstream keepalive 60 s): one that sends a request on a connection the service
# is closing at that moment answers its client 502, or resets, for a request never read.
KEEP_ALIVE_SECONDS = 75


def configure_logging(level: str, log_format: str = "text") -> None:
    from keyservice.logbuffer import BatchingStreamHandler, JsonFormatter

    # What our format never shows, not worked out for every record (the logging HOWTO's
    # "Optimization"): the caller's file and line, thread, process and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

    handler = BatchingStreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    # Alembic announces each of its plugins at INFO: noise on every start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # aiosqlite's DEBUG lines name each call with its arguments: every statement of the
    # embedded database with its parameters (password hashes, key and token HMACs, a
    # username that may be a password typed in the wrong box). Never below INFO.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, getattr(logging, level)))


async def _with_context(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from keyservice import migrations
    from keyservice.context import AppContext
    from keyservice.database import ADMIN_CONNECT_TIMEOUT_SECONDS

    context = AppContext(settings, connect_timeout=ADMIN_CONNECT_TIMEOUT_SECONDS)
    try:
        # Before anything is read or written: an empty schema, or one behind or ahead of
        # this code's, is refused in the line `serve --no-migrate` gives (a raw "no such
        # table" at the first query otherwise, or a write the schema is not made for).
        await migrations.check_engine(context.database.engine)
        # Reading the signing keys proves the secret: a command run with another one would
        # write what the deployment cannot read (a signing key, a legacy key's hash).
        async with context.database.sessionmaker() as session:
            await context.keyring.load(session)
        return await work(context)
    finally:
        await context.database.dispose()


def with_context(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(context)` against the configured database, refused unless it is migrated.

    A SQLite file that is not there is refused before the data folder or the file is made.
    """
    from keyservice.security.jwt import WrongSecretError

    check_database_file(settings)
    prepare_data_dir(settings)
    if settings.audit_log and not logging.getLogger().handlers:
        # The events this command records are log lines too, as the server's are (on
        # stderr, written out at exit): KEYSERVICE_AUDIT_LOG promises every one of them.
        configure_logging(settings.log_level, settings.log_format)
    with database_errors(settings.effective_database_url):
        try:
            return asyncio.run(_with_context(settings, work))
        except WrongSecretError as exc:
            if settings.secret_key is not None:
                hint = "set KEYSERVICE_SECRET_KEY to the deployment's (the same on every replica)"
            else:
                hint = f"was {settings.data_dir / SECRET_KEY_FILE} replaced or lost?"
            raise click.ClickException(f"{exc}; {hint}") from None


def check_database_file(settings: Settings) -> None:
    """Refuse a SQLite database file that is not there, without making it or its folder.

    The embedded default's folder, ./.keyservice, is relative to the current folder: a
    command run elsewhere than the server finds none, and `keyservice migrate` there would
    make a second, empty database beside a new secret. So that case says where it looked.
    """
    from keyservice import migrations

    with database_errors(settings.effective_database_url):
        try:
            migrations.check_file(settings.effective_database_url)
        except migrations.NoDatabaseFile as exc:
            if not settings.embedded:
                raise
            if "data_dir" in settings.model_fields_set:
                folder = f"KEYSERVICE_DATA_DIR is {settings.data_dir}"
            else:
                folder = f"the default data folder, {settings.data_dir}"
            if not settings.data_dir.is_absolute():
                folder += ", in the current folder"
            raise click.ClickException(
                f"no database found at {exc.path} ({folder}): run this command where the "
                "server runs, or set KEYSERVICE_DATA_DIR or KEYSERVICE_DATABASE_URL to the "
                "server's. To start a new, empty database there instead, run `keyservice "
                "migrate` (or serve without --no-migrate)"
            ) from None


def prepare_data_dir(settings: Settings) -> None:
    """Create the embedded default's data folder and secret; one line if it cannot be."""
    if not settings.embedded:
        return
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # see server_secret
        settings.server_secret()  # generated once, before workers race for it
    except OSError as exc:
        raise click.ClickException(
            f"cannot use the data folder {settings.data_dir} "
            f"({exc.strerror or type(exc).__name__}); is KEYSERVICE_DATA_DIR right?"
        ) from None


@contextlib.contextmanager
def database_errors(database_url: str) -> Iterator[None]:
    """Turn a database that cannot be reached or is not migrated into one line and exit 1.

    Refused, timed out, unknown host, no such database, a refused role: the driver raises
    these unwrapped (an OSError) or wrapped by SQLAlchemy, and each is a traceback of a
    hundred lines or more for what the operator needs in one.
    """
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from keyservice.main import _is_db_outage
    from keyservice.migrations import DataConflict, MigrationBlocked, SchemaMismatch

    try:
        yield
    except (SchemaMismatch, MigrationBlocked, DataConflict) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        unreachable = _is_db_outage(exc)
        if not unreachable and not isinstance(exc, (OperationalError, ProgrammingError)):
            raise
        hint = (
            "is it running and reachable, and is KEYSERVICE_DATABASE_URL right?"
            if unreachable
            else "is it reachable, and migrated? Run `keyservice migrate` first."
        )
        raise click.ClickException(
            f"cannot use the database {masked_url(database_url, '(KEYSERVICE_DATABASE_URL)')} "
            f"({_reason(exc, database_url)}); {hint}"
        ) from None


def _reason(exc: BaseException, database_url: str) -> str:
    """The driver's own error, first line only, the URL's password masked should it appear."""
    from sqlalchemy.engine import make_url

    root = exc
    seen = {id(root)}
    while True:  # down SQLAlchemy's `orig` and the causes to what the driver raised
        inner = getattr(root, "orig", None) or root.__cause__
        if not isinstance(inner, Exception) or id(inner) in seen:  # not CancelledError
            break
        seen.add(id(inner))
        root = inner
    text = (str(root).strip().splitlines() or [""])[0][:200]
    with contextlib.suppress(Exception):
        password = make_url(database_url).password
        if password:
            text = text.replace(str(password), "***")
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


@click.group()
@click.version_option(package_name="keyservice")
def main() -> None:
    """keyservice: API keys exchanged for short-lived JWTs."""


@main.command()
@click.option(
    "--to",
    "revision",
    metavar="REVISION",
    help="Migrate to this schema revision instead of the newest, back down to it if the "
    "database is past it: before running an older release again (the newest revision "
    "that release knows). Undoing a migration drops what it added.",
)
def migrate(revision: str | None) -> None:
    """Apply pending database migrations."""
    settings = load_settings()
    from keyservice import migrations

    prepare_data_dir(settings)  # the embedded database's folder, as serve makes it
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    url, actor = settings.effective_database_url, cli_actor()
    with database_errors(url):
        if revision is None:
            upgraded = migrations.upgrade(url, waiting=say, actor=actor)
        else:
            moved = migrations.migrate_to(url, revision, waiting=say, actor=actor)
            if isinstance(moved, migrations.Downgraded):
                count = len(moved.undone)
                click.echo(
                    f"undid {count} migration{'s' if count > 1 else ''} "
                    f"({', '.join(moved.undone)}); the database is at {', '.join(moved.current)}"
                )
                _log_migration(settings, moved, say)
                return
            upgraded = moved
    _log_migration(settings, upgraded, say)
    at = ("up to date at " if revision is None else "at ") + ", ".join(upgraded.current)
    if not upgraded.applied:
        click.echo(f"the database is already {at}")
        return
    count = len(upgraded.applied)
    click.echo(
        f"applied {count} migration{'s' if count > 1 else ''} "
        f"({', '.join(upgraded.applied)}); the database is {at}"
    )


def _log_migration(
    settings: Settings,
    result: migrations.Upgraded | migrations.Downgraded,
    warn: Callable[[str], None],
) -> None:
    """After a migration: its `schema.migrated` event as a log line too (KEYSERVICE_AUDIT_LOG,
    as every committed event is), or a warning that it is not in the audit log."""
    if result.unrecorded is not None:
        warn(f"warning: the migration is not in the audit log: {result.unrecorded}")
    if result.event is None or not settings.audit_log:
        return
    from keyservice.audit.service import log_event

    if not logging.getLogger().handlers:
        configure_logging(settings.log_level, settings.log_format)
    log_event(**result.event)


async def _prepare(context: Any) -> tuple[str, str | None] | None:
    from keyservice.users.service import ensure_bootstrap_admin

    async with context.database.sessionmaker() as session:
        await context.keyring.ensure_key(session)
    async with context.database.sessionmaker() as session:
        return await ensure_bootstrap_admin(session, context.settings)


def check_redis(settings: Settings) -> None:
    """Refuse to serve, in one line, with a KEYSERVICE_REDIS_URL that cannot be reached: the
    server would start and look up while every /token answered 503 (failures are counted
    there)."""
    if settings.redis_url is None:
        return
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    url = settings.redis_url

    async def ping() -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            f"cannot use Redis at {masked_url(url, '(KEYSERVICE_REDIS_URL)')} "
            f"({_reason(exc, url)}); is it running and reachable, and is KEYSERVICE_REDIS_URL "
            "right?"
        ) from None


def _own_sockets(workers: int) -> bool:
    """Whether serve runs its workers with a socket each (workers.py): several, on Linux.

    Elsewhere SO_REUSEPORT is missing (Windows) or does not spread connections (macOS), and
    uvicorn's supervisor with its shared socket is the better choice.
    """
    return workers > 1 and sys.platform.startswith("linux")


def _say_token_commit(settings: Settings) -> None:
    """One line at start-up when KEYSERVICE_TOKEN_COMMIT trades durability or does nothing."""
    if settings.token_commit != "async":
        return
    if settings.effective_database_url.startswith("sqlite"):
        logging.getLogger("keyservice").warning(
            "KEYSERVICE_TOKEN_COMMIT=async applies to PostgreSQL only; "
            "the embedded SQLite database commits every token as before"
        )
    else:
        logging.getLogger("keyservice").info(
            "KEYSERVICE_TOKEN_COMMIT=async: exchanges and sign-ins are answered before "
            "their commit is flushed; a crash of the database server can lose the refresh "
            "tokens and audit events of its last moment (refreshes always wait)"
        )


def _say_issuer(settings: Settings) -> None:
    """One line at start-up when the default issuer is a bind-all address (`--host 0.0.0.0`)."""
    if settings.issuer_from_wildcard:
        logging.getLogger("keyservice").warning(
            "KEYSERVICE_ISSUER is not set, so tokens and the metadata name %s, which no client "
            "can reach and verifiers will not expect; set KEYSERVICE_ISSUER to the URL clients "
            "use (e.g. https://keys.example.com)",
            settings.effective_issuer,
        )


@main.command()
@click.option(
    "--host", default=None, help="Address to bind (default KEYSERVICE_HOST, else 127.0.0.1)."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to bind (default KEYSERVICE_PORT, else 8000).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes; one per core.",
)
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations at start.")
def serve(host: str | None, port: int | None, workers: int, no_migrate: bool) -> None:
    """Serve the HTTP API (embedded SQLite database when nothing is configured)."""
    # Workers read their settings from the environment: pass host and port on, so that the
    # default issuer is the same in every process.
    if host is not None:
        os.environ["KEYSERVICE_HOST"] = host
    if port is not None:
        os.environ["KEYSERVICE_PORT"] = str(port)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    _say_token_commit(settings)
    _say_issuer(settings)
    from keyservice.workers import check_address

    try:  # before migrations and the bootstrap admin: nothing done if it cannot serve
        check_address(settings.host, settings.port)
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        hint = ""
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            # A name that resolves to nothing, or an address of another machine: say what
            # set it, as the metrics' listener does.
            hint = "; is --host (else KEYSERVICE_HOST) a name or address of this machine?"
        raise click.ClickException(
            f"cannot listen on {where}: {exc.strerror or exc}{hint}"
        ) from None
    if settings.metrics_port is not None:
        # prometheus_client reads these once, when imported: set by an operator, either
        # would make a single process's metrics files that nobody reads. The parent of
        # several workers sets its own for them (keyservice.metrics.WorkerMetrics).
        for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
            os.environ.pop(name, None)
        try:
            check_address(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            where = f"{settings.metrics_host}:{settings.metrics_port}"
            raise click.ClickException(
                f"cannot listen on {where} for the metrics: {exc.strerror or exc}; "
                "check KEYSERVICE_METRICS_HOST and KEYSERVICE_METRICS_PORT"
            ) from None
    check_redis(settings)
    from keyservice import migrations

    if no_migrate:  # refused before the data folder, the secret or an empty file is made
        check_database_file(settings)
    prepare_data_dir(settings)
    with database_errors(settings.effective_database_url):
        if no_migrate:  # a schema older or newer than this code's fails later, and worse
            migrations.check_current(settings.effective_database_url)
        else:
            # Applied by the server: the event's actor is `server`, as the signing key
            # it makes at its first start is.
            say = logging.getLogger("keyservice").warning
            upgraded = migrations.upgrade(
                settings.effective_database_url, waiting=say, actor="server"
            )
            _log_migration(settings, upgraded, say)
    created = with_context(settings, _prepare)
    if created is not None:
        username, generated = created
        if generated is not None:
            # Shown once on the operator's terminal, never logged.
            click.echo(
                "\n  Created the first admin.\n"
                f"    username: {username}\n"
                f"    password: {generated}\n"
                "  It is shown only this once: sign in and change it.\n",
                err=True,
            )
        else:
            logging.getLogger("keyservice").info("created the bootstrap admin '%s'", username)

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "factory": True,
        "access_log": False,  # ours omits query strings, which may carry credentials
        "proxy_headers": False,  # client IPs follow KEYSERVICE_TRUSTED_PROXIES only
        "server_header": False,
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": 20,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    }
    if settings.log_format == "json" or workers == 1 or _own_sockets(workers):
        # uvicorn's own lines ("Started server process", errors) through our handler, as
        # JSON or with our text lines' time and logger name, in order with ours, instead
        # of its own handler (whose text lines have no time): one format on the stream.
        # The text lines of the workers uvicorn's supervisor spawns (several, not on
        # Linux) keep its handler: they start with no logging of ours to fall back on.
        options["log_config"] = None
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ModuleNotFoundError:  # pragma: no cover
        pass
    try:
        import httptools  # noqa: F401

        options["http"] = "httptools"
    except ModuleNotFoundError:  # pragma: no cover
        pass
    if settings.metrics_port is None or workers == 1:
        # One process: the app serves its own metrics, if on (main.lifespan).
        sys.exit(_run_workers(options, settings, workers, None))
    # Several: the parent serves the sum of the workers' (keyservice.metrics).
    from keyservice.metrics import WorkerMetrics

    try:
        metrics = WorkerMetrics(host=settings.metrics_host, port=settings.metrics_port)
    except OSError as exc:
        where = f"{settings.metrics_host}:{settings.metrics_port}"
        raise click.ClickException(
            f"cannot listen on {where} for the metrics: {exc.strerror or exc}"
        ) from None
    logging.getLogger("keyservice").info(
        "metrics at http://%s:%d/metrics", settings.metrics_host, metrics.port
    )
    try:
        status = _run_workers(options, settings, workers, metrics)
    finally:
        metrics.close()
    sys.exit(status)


def _run_workers(
    options: dict[str, Any], settings: Settings, workers: int, metrics: WorkerMetrics | None
) -> int:
    """Serve with `workers` processes until stopped; the exit status."""
    import uvicorn

    if not _own_sockets(workers):
        uvicorn.run("keyservice.main:create_app", workers=workers, **options)
        return 0
    # Several workers: each with its own SO_REUSEPORT socket, so that the kernel spreads
    # connections over them (uvicorn's own supervisor shares one socket: see workers.py).
    from keyservice.workers import Supervisor

    supervisor = Supervisor(
        options,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_format=settings.log_format,
        metrics=metrics,
    )
    return supervisor.run()


def validated(schema: type[M], **values: Any) -> M:
    """Check a command's input as the HTTP API checks the same body; one line if it is bad.

    The line names the argument and says what is wrong, never the value (a password).
    """
    try:
        return schema(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        raise click.ClickException(f"invalid {field or 'input'}: {error['msg']}") from None


@main.group()
def users() -> None:
    """Manage users."""


@users.command("create")
@click.argument("username")
@click.option("--admin", is_flag=True, help="Grant the admin permission.")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    help="Grant a permission (repeat); api_keys:manage lets the user manage their own keys.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_create(
    username: str, admin: bool, permissions: tuple[str, ...], password_stdin: bool
) -> None:
    """Create a user; the password is prompted for (or read from stdin).

    The password is never an argument: the command line is visible to every user of the
    machine (ps). In a script, pipe it in: `printf '%s\\n' "$PASSWORD" | keyservice users
    create NAME --password-stdin`.
    """
    perms = list(permissions) + (["admin"] if admin else [])
    settings = load_settings()
    from keyservice.exceptions import KeyServiceError
    from keyservice.users import service
    from keyservice.users.schemas import UserCreate

    # What POST /admin/users accepts, no more: names end up in audit actors and tables.
    # The name and permissions first, with a stand-in password (checked below), so that
    # nobody types a password for a name the API would refuse.
    early = validated(UserCreate, username=username, password="-", permissions=perms)

    async def check(context: Any) -> None:
        async with context.database.sessionmaker() as session:
            await service.check_new(session, username=early.username, permissions=early.permissions)

    # The database answers, is migrated, and the name is free: before the password too.
    try:
        with_context(settings, check)
    except KeyServiceError as exc:
        raise click.ClickException(exc.description) from None

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.ClickException("no password on standard input (--password-stdin)")
    elif not sys.stdin.isatty():
        # getpass would warn that it echoes, then read the pipe's lines as the password and
        # its confirmation.
        raise click.ClickException(
            "no terminal to ask for the password on; pipe it in with --password-stdin"
        )
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    data = validated(UserCreate, username=username, password=password, permissions=perms)

    async def work(context: Any) -> str:
        async with context.database.sessionmaker() as session:
            # Checks the name again: another user of that name may have been made while
            # the password was typed (the same 409, here or at the insert).
            user = await service.create(
                session,
                username=data.username,
                password=data.password,
                permissions=data.permissions,
                actor=cli_actor(),
                ip=None,
            )
            return str(user.id)

    try:
        user_id = with_context(settings, work)
    except KeyServiceError as exc:
        raise click.ClickException(exc.description) from None
    click.echo(f"created user {username} ({user_id})")


@main.group("signing-keys")
def signing_keys() -> None:
    """Manage JWT signing keys."""


@signing_keys.command("rotate")
@click.option(
    "--publish-first/--now",
    "publish_first",
    default=False,
    help=(
        "--publish-first (a planned rotation): publish the new key in the JWKS at once and "
        "sign with it later (80 s), when every JWKS cached before (max-age 60 s) has expired, "
        "the old key signing until then; no resource server meets an unknown kid. --now "
        "(the default, API.md: the new key is current for every replica within seconds; "
        "for a compromised key): resource servers holding a cached JWKS refuse the new "
        "tokens until they fetch it again, unless they refetch on an unknown kid. The old "
        "key is retired but stays published, so the tokens it signed (and any forged with "
        "it) stay valid, for the access-token TTL + 60 s unless revoked (keys revoke, or "
        "disabling the principal); no command unpublishes it sooner, a lower "
        "KEYSERVICE_ACCESS_TOKEN_TTL on every replica does."
    ),
)
def signing_keys_rotate(publish_first: bool) -> None:
    """Make a new signing key, publish it in the JWKS and make it current for every replica
    (within seconds; with --publish-first 80 s later, the old one signing until then). The
    old key stays published until the tokens it signed have expired (the access-token TTL
    and a minute after the handover)."""
    from keyservice.security.jwt import SIGNING_KEY_ACTIVATION_SECONDS

    settings = load_settings()
    delay = SIGNING_KEY_ACTIVATION_SECONDS if publish_first else 0

    async def work(context: Any) -> tuple[str, bool]:
        from keyservice.audit import service as audit
        from keyservice.auth.revocation import notify

        async with context.database.sessionmaker() as session:
            kid = await context.keyring.create_key(session, retire_current=True, delay=delay)
            await notify(session, "signing-keys")
            # Key material changed: who did it and when is for the audit log, in the same
            # transaction (the kid is public: it is in the JWKS and every token's header).
            audit.record(
                session,
                type="signing_key.rotated",
                actor=cli_actor(),
                reason=f"new signing key {kid}; "
                + (f"signs in {delay} s (--publish-first)" if delay else "signs at once"),
            )
            await session.commit()
            await context.keyring.load(session)
            return str(kid), context.keyring.current_kid == kid

    kid, signs = with_context(settings, work)
    if not signs:
        click.echo(
            f"new signing key {kid} is published; every replica signs with it in "
            f"{SIGNING_KEY_ACTIVATION_SECONDS} seconds (see: keyservice signing-keys list)"
        )
    elif not publish_first:
        click.echo(
            f"new signing key {kid} is current; every replica signs with it within "
            "5 seconds (a resource server holding a cached JWKS refuses its tokens until it "
            "fetches the JWKS again, at most 60 s; --publish-first avoids that)"
        )
    else:
        click.echo(f"new signing key {kid} is current (there was no other)")


# The admin commands (keys, devices, audit, prune) add themselves to `main` at the end of
# their module, whichever of the two modules is imported first.
import keyservice.admin_cli  # noqa: E402, F401
