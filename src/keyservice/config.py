"""Settings, read from `KEYSERVICE_*` environment variables (see the README's table)."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from keyservice.security.ip import parse_cidrs
from keyservice.timestamps import Timestamp
from keyservice.users.schemas import MIN_PASSWORD_LENGTH, NAME_PATTERN

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Values people paste from examples; refused so that a deployment cannot run with them.
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "change_me", "secret", "please-change", "xxx"}
_MIN_SECRET_LENGTH = 32
SECRET_KEY_FILE = "secret_key"
# The bounds of the token lifetimes: also how long a family's revocation is kept (prune).
MAX_ACCESS_TOKEN_TTL = 86400 * 7
MAX_REFRESH_TOKEN_EXTRA_TTL = 86400 * 30
MAX_PASSWORD_SESSION_SECONDS = 86400 * 365
# Bounds of values only ever used as counts and spans: past them a day count overflows a
# date (OverflowError, a 500 at every key creation or /me) and a count a C size (the
# throttle's deque), where start-up can say so instead.
MAX_DAYS = 36500  # 100 years
MAX_THROTTLE_FAILURES = 1_000_000
MAX_THROTTLE_WINDOW_SECONDS = 86400
# The drivers the service runs on (asyncpg and aiosqlite are what it is built and tested with).
DATABASE_DRIVERS = ("postgresql+asyncpg", "sqlite+aiosqlite")
REDIS_SCHEMES = ("redis", "rediss", "unix")
# Bind addresses meaning "every interface": no URL a client could use.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class Settings(BaseSettings):
    """Every knob of the service; one instance per app."""

    # hide_input_in_errors: a ValidationError's text would quote the value refused (a
    # secret key too short) or, for a check across fields, all of them (passwords too).
    model_config = SettingsConfigDict(
        env_prefix="KEYSERVICE_", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Path(".keyservice")
    database_url: str | None = None
    secret_key: SecretStr | None = None
    # The secret before KEYSERVICE_SECRET_KEY, during a rotation: what was made under it is
    # still accepted and moved to the current secret as it is used; nothing new is made
    # under it (README, "Rotating the server secret").
    secret_key_fallback: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    issuer: str | None = None
    audience: str | None = None
    signing_algorithm: Literal["ES256", "EdDSA", "RS256"] = "ES256"

    access_token_ttl: int = Field(default=7200, ge=1, le=MAX_ACCESS_TOKEN_TTL)
    refresh_token_extra_ttl: int = Field(default=3600, ge=1, le=MAX_REFRESH_TOKEN_EXTRA_TTL)
    password_grant_enabled: bool = True
    # How long one password sign-in (its chain of refresh tokens) may go on being refreshed;
    # then the person signs in again. Keys' chains end with their key instead.
    password_session_max_seconds: int = Field(default=43200, ge=1, le=MAX_PASSWORD_SESSION_SECONDS)

    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = Field(default_factory=list)
    throttle_client_failures: int = Field(default=10, ge=1, le=MAX_THROTTLE_FAILURES)
    throttle_ip_failures: int = Field(default=100, ge=1, le=MAX_THROTTLE_FAILURES)
    throttle_window_seconds: int = Field(default=60, ge=1, le=MAX_THROTTLE_WINDOW_SECONDS)
    redis_url: str | None = None

    max_keys_per_principal: int = Field(default=5, ge=1)
    key_default_ttl_days: int = Field(default=90, ge=1, le=MAX_DAYS)
    key_max_ttl_days: int = Field(default=365, ge=1, le=MAX_DAYS)
    expiry_warning_days: int = Field(default=7, ge=0, le=MAX_DAYS)
    # As the API takes a moment: pydantic's own datetime would also read a number as Unix
    # seconds (a year, `2027`, is then 1970 and every legacy key refused at once).
    legacy_keys_until: Timestamp | None = None

    bootstrap_admin_username: str | None = None
    bootstrap_admin_password: SecretStr | None = None

    revocation_poll_seconds: float = Field(default=2.0, gt=0, le=5)
    last_used_interval_seconds: int = Field(default=60, ge=0, le=60)
    # PostgreSQL only. "durable": a token request is answered once its refresh token and
    # audit event are flushed to the WAL (the server's own synchronous_commit). "async":
    # exchanges and sign-ins are answered before that flush (auth/store.py); claims of a
    # refresh token always wait for it.
    token_commit: Literal["durable", "async"] = "durable"
    # PostgreSQL only: connections per pool and process (database.py, DEFAULT_POOL_SIZE).
    database_pool_size: int = Field(default=10, ge=1, le=100)
    # 100 years: a cut-off date before that is no date at all.
    audit_retention_days: int = Field(default=90, ge=1, le=MAX_DAYS)
    # Every committed audit event also a log line (logger keyservice.audit), for shipping.
    audit_log: bool = False
    prune_interval_seconds: int = Field(default=3600, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text: one line per record for people; json: one object per line for log shippers.
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics (keyservice/metrics.py): off unless a port is given; served on a
    # listener of their own, never on the API's port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(part, str) for part in value):
            # As allowed_ips are read: host bits set or a zone id is a mistake, said at start-up.
            return parse_cidrs(value, strict=True)
        return value

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _no_catch_all(cls, value: list[IPNetwork]) -> list[IPNetwork]:
        for net in value:
            if net.prefixlen == 0:
                raise ValueError(f"{net} would trust every address; list the proxies' own CIDRs")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_named(cls, value: object) -> object:
        # Path("") is the current folder: the database and the secret were written there,
        # beside whatever else it holds and with its mode, not in a 0700 folder of their own.
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: name a folder, or unset it for ./.keyservice")
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _supported_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        # Only the scheme is named: the URL may hold a password.
        try:
            driver = make_url(value).drivername
        except (ArgumentError, ValueError):
            raise ValueError(
                "is not a database URL like postgresql+asyncpg://user:password@host:5432/db"
            ) from None
        if driver not in DATABASE_DRIVERS:
            raise ValueError(
                f"a {driver}:// URL is not supported: use postgresql+asyncpg://user:password@"
                "host:5432/db (or sqlite+aiosqlite:///path/to/file.db)"
            )
        return value

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(
                "must be a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0"
            )
        # Read as the client will (a connection made, not opened): a port or an option's
        # value it cannot read was a traceback as the server started, after the migrations,
        # and an option it does not know a 500 at every /token. Its words are not repeated:
        # they may quote a part of the URL, and the URL may hold a password.
        from redis.asyncio import ConnectionPool

        try:
            ConnectionPool.from_url(value).make_connection()  # type: ignore[no-untyped-call]
        except (ValueError, TypeError):
            raise ValueError(
                "is not a URL the Redis client can read (a port of 1 to 65535, and only "
                "options it knows, with values it takes), e.g. redis://127.0.0.1:6379/0"
            ) from None
        if parts.scheme == "unix":
            if not parts.path.strip("/"):
                raise ValueError("needs the socket's path, e.g. unix:///run/redis/redis.sock")
        elif re.fullmatch(r"/?(\d+)?", parts.path) is None:
            # The client ignores a database it cannot read as a number, and uses 0.
            raise ValueError(
                "names no database number after the host: write redis://HOST:PORT/N, "
                "N a number (0 when left out)"
            )
        return value

    @field_validator("issuer", mode="after")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        # RFC 8414 §2: a URL without query or fragment; every token's `iss` and the
        # metadata's endpoint URLs are built from it.
        if value is None:
            return None
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
            or re.search(r"\s", value)
        ):
            raise ValueError(
                "must be an http(s) URL without query or fragment, e.g. https://keys.example.com"
            )
        return value

    @field_validator("bootstrap_admin_username", mode="after")
    @classmethod
    def _bootstrap_username(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 100 or re.fullmatch(NAME_PATTERN, value) is None):
            raise ValueError(
                "must be 1-100 letters, digits and . _ @ + - (starting with a letter or digit)"
            )
        return value

    @field_validator("bootstrap_admin_password", mode="after")
    @classmethod
    def _bootstrap_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"must have at least {MIN_PASSWORD_LENGTH} characters")
        return value

    @field_validator("secret_key_fallback", mode="before")
    @classmethod
    def _empty_is_no_fallback(cls, value: Any) -> Any:
        # `KEYSERVICE_SECRET_KEY_FALLBACK=` ends a rotation, as in a compose file that
        # passes the variable through with an empty default.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("secret_key", "secret_key_fallback", mode="after")
    @classmethod
    def _real_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if raw.strip().lower() in _PLACEHOLDER_SECRETS or len(raw) < _MIN_SECRET_LENGTH:
            raise ValueError(
                f"must be a random value of at least {_MIN_SECRET_LENGTH} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # Each message starts with the variable to change (configuration_errors).
        if self.key_default_ttl_days > self.key_max_ttl_days:
            raise ValueError(
                f"KEYSERVICE_KEY_DEFAULT_TTL_DAYS: {self.key_default_ttl_days} must not exceed "
                f"KEYSERVICE_KEY_MAX_TTL_DAYS ({self.key_max_ttl_days})"
            )
        if self.database_url is not None and self.secret_key is None:
            raise ValueError(
                "KEYSERVICE_SECRET_KEY: must be set when KEYSERVICE_DATABASE_URL is set, to the "
                "same value on every replica of the deployment"
            )
        if (
            self.secret_key_fallback is not None
            and self.secret_key is not None
            and self.secret_key_fallback.get_secret_value() == self.secret_key.get_secret_value()
        ):
            raise ValueError(
                "KEYSERVICE_SECRET_KEY_FALLBACK: must differ from KEYSERVICE_SECRET_KEY: it is "
                "the secret being rotated away from (leave it unset when not rotating)"
            )
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(
                f"KEYSERVICE_METRICS_PORT: must differ from KEYSERVICE_PORT ({self.port}): "
                "the metrics have a listener of their own, apart from the API"
            )
        if (self.bootstrap_admin_username is None) != (self.bootstrap_admin_password is None):
            missing, given = (
                ("PASSWORD", "USERNAME") if self.bootstrap_admin_password is None else
                ("USERNAME", "PASSWORD")
            )  # fmt: skip
            raise ValueError(
                f"KEYSERVICE_BOOTSTRAP_ADMIN_{missing}: must be set with "
                f"KEYSERVICE_BOOTSTRAP_ADMIN_{given} (set both or neither)"
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() show SecretStr fields masked; the URLs' passwords likewise.
        for name, value in super().__repr_args__():
            if name in _URL_FIELDS and isinstance(value, str):
                value = masked_url(value)
            yield name, value

    # Derived values -------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'keyservice.db').resolve()}"

    @property
    def effective_issuer(self) -> str:
        if self.issuer:
            return self.issuer.rstrip("/")
        # An IPv6 address goes in brackets in a URL (RFC 3986 §3.2.2): http://[::1]:8000.
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def issuer_from_wildcard(self) -> bool:
        """Whether the issuer defaults to a bind-all address, which no client can reach."""
        return not self.issuer and self.host in WILDCARD_HOSTS

    @property
    def effective_audience(self) -> str:
        return self.audience or self.effective_issuer

    @property
    def refresh_token_ttl(self) -> int:
        return self.access_token_ttl + self.refresh_token_extra_ttl

    def server_secret(self) -> bytes:
        """Return the server secret, generating it into the data directory when embedded."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / SECRET_KEY_FILE
        if not path.exists():
            # Only its owner may enter it: it holds the database (hashes, audit) and this.
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process of this deployment won the race
                pass
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()

    def server_secret_fallback(self) -> bytes | None:
        """The previous server secret during a rotation, or None.

        Beside the embedded secret file, a fallback equal to it is no fallback (nothing can
        have been made under another secret); beside KEYSERVICE_SECRET_KEY it is refused.
        """
        if self.secret_key_fallback is None:
            return None
        fallback = self.secret_key_fallback.get_secret_value().encode()
        return None if fallback == self.server_secret() else fallback


_URL_FIELDS = ("database_url", "redis_url")

# Pydantic's own messages, in the words of the rest ("must ..."); its `msg` otherwise.
_CONSTRAINTS = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "literal_error": "must be {expected}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "datetime_parsing": "needs an RFC 3339 date-time with an offset, e.g. 2027-01-01T00:00:00Z",
    "datetime_from_date_parsing": (
        "needs an RFC 3339 date-time with an offset, e.g. 2027-01-01T00:00:00Z"
    ),
    "datetime_type": "needs an RFC 3339 date-time with an offset, e.g. 2027-01-01T00:00:00Z",
    # timestamps.Timestamp's, but for its hint about a URL's + (a variable is no URL).
    "timestamp_format": "needs an RFC 3339 date-time with an offset, e.g. 2027-01-01T00:00:00Z",
}


def configuration_errors(exc: ValidationError) -> list[str]:
    """One line per error of Settings(): "KEYSERVICE_NAME: what is wrong".

    Not pydantic's text: no "Value error," and no documentation URL, and never the value
    (the model hides inputs, and only our messages and pydantic's `msg` are used here).
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        ctx = {  # a bound of a float field reads 0, not 0.0
            name: int(value) if isinstance(value, float) and value.is_integer() else value
            for name, value in (error.get("ctx") or {}).items()
        }
        if error["type"] == "value_error" and "error" in ctx:
            message = str(ctx["error"])  # ours, as raised by a validator
        elif error["type"] in _CONSTRAINTS:
            message = _CONSTRAINTS[error["type"]].format(**ctx)
        else:
            message = error["msg"].replace("Input should be", "must be")
        message = " ".join(message.splitlines())
        field = ".".join(str(part) for part in error["loc"])
        # A check across fields (_consistent) names its variable itself.
        lines.append(f"KEYSERVICE_{field.upper()}: {message}" if field else message)
    return lines


def masked_url(url: str, unreadable: str = "***") -> str:
    """The URL with its password, if any, replaced by ***; `unreadable` if it is no URL."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # nothing of it can be shown safely
        return unreadable


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings read from the environment."""
    return Settings()
