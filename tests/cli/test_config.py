"""A bad KEYSERVICE_* value stops start-up with one line naming the variable, before anything
is done (no migration, no admin, nothing served), and never echoes a password it holds."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner

from keyservice.cli import main
from keyservice.config import MAX_DAYS, MAX_THROTTLE_FAILURES, MAX_THROTTLE_WINDOW_SECONDS, Settings
from tests.conftest import TEST_SECRET
from tests.factories import bearer, create_key, create_principal, login
from tests.reliability.support import free_port

BAD_VALUES = [
    ("DATABASE_URL", "postgresql://ops:pw-in-url@127.0.0.1/ks", "a postgresql:// URL is not"),
    ("DATABASE_URL", "mysql://ops:pw-in-url@127.0.0.1/ks", "a mysql:// URL is not supported"),
    ("DATABASE_URL", "not a url", "is not a database URL like postgresql+asyncpg://"),
    # Was the current folder: the database and the secret among its files, with its mode.
    ("DATA_DIR", "", "is empty: name a folder, or unset it for ./.keyservice"),
    ("REDIS_URL", "127.0.0.1:6379", "must be a redis://, rediss:// or unix:// URL"),
    # Each was a traceback as serve started (after its migrations), a 500 at every /token,
    # or a database number the client ignored (it used 0).
    ("REDIS_URL", "redis://:pw-in-url@127.0.0.1:six/0", "not a URL the Redis client can read"),
    ("REDIS_URL", "redis://:pw-in-url@127.0.0.1:6379/0?timeout=3", "not a URL the Redis client"),
    ("REDIS_URL", "redis://127.0.0.1:6379/0?socket_timeout=soon", "not a URL the Redis client"),
    ("REDIS_URL", "redis://:pw-in-url@127.0.0.1:6379/cache", "names no database number"),
    ("REDIS_URL", "unix://", "needs the socket's path"),
    # Every peer trusted: any client could name its own address in X-Forwarded-For.
    ("TRUSTED_PROXIES", "10.0.0.0/8, 0.0.0.0/0", "0.0.0.0/0 would trust every address"),
    ("TRUSTED_PROXIES", "::/0", "::/0 would trust every address"),
    ("ISSUER", "keys.example.com", "must be an http(s) URL"),
    ("ISSUER", "https://keys.example.com/?tenant=1", "without query or fragment"),
    ("AUDIT_RETENTION_DAYS", "1000000", "must be at most 36500"),
    ("ACCESS_TOKEN_TTL", "-5", "must be at least 1"),
    ("REVOCATION_POLL_SECONDS", "0", "must be more than 0"),
    ("TOKEN_COMMIT", "fast", "must be 'durable' or 'async'"),
    ("DATABASE_POOL_SIZE", "0", "must be at least 1"),
    ("PASSWORD_GRANT_ENABLED", "maybe", "must be true or false"),
    ("PASSWORD_SESSION_MAX_SECONDS", "0", "must be at least 1"),
    ("PASSWORD_SESSION_MAX_SECONDS", "12h", "must be a whole number"),
    ("LEGACY_KEYS_UNTIL", "tomorrow", "needs an RFC 3339 date-time with an offset"),
    # Read as Unix seconds, a year meant 1970: every legacy key refused from the start.
    ("LEGACY_KEYS_UNTIL", "2027", "needs an RFC 3339 date-time with an offset"),
    ("LEGACY_KEYS_UNTIL", "1800000000", "needs an RFC 3339 date-time with an offset"),
    ("LEGACY_KEYS_UNTIL", "0001-01-01T00:00:00+14:00", "in UTC it falls before year 1"),
    ("SECRET_KEY", "pw-in-url-but-too-short", "must be a random value of at least 32"),
    ("BOOTSTRAP_ADMIN_PASSWORD", "short", "must have at least 8 characters"),
    ("BOOTSTRAP_ADMIN_USERNAME", "first admin", "must be 1-100 letters, digits"),
    ("BOOTSTRAP_ADMIN_USERNAME", "root\n", "must be 1-100 letters, digits"),
    # Accepted unbounded, each was a 500 at its first use (a day count past a date, a
    # count past a C size): every key creation, /me, the first failed sign-in.
    ("KEY_MAX_TTL_DAYS", "99999999999", "must be at most 36500"),
    ("KEY_DEFAULT_TTL_DAYS", "99999999999", "must be at most 36500"),
    ("EXPIRY_WARNING_DAYS", "99999999999999", "must be at most 36500"),
    ("THROTTLE_CLIENT_FAILURES", "99999999999999999999999", "must be at most 1000000"),
    ("THROTTLE_IP_FAILURES", "99999999999999999999999", "must be at most 1000000"),
    ("THROTTLE_WINDOW_SECONDS", "99999999999999999", "must be at most 86400"),
]


@pytest.fixture
def nothing_served(monkeypatch, tmp_path):
    import uvicorn

    from keyservice import migrations

    def refuse(*_args, **_kwargs):
        raise AssertionError("start-up got past the configuration")

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setattr(migrations, "upgrade", refuse)
    for name in ("KEYSERVICE_DATABASE_URL", "KEYSERVICE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEYSERVICE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME", "root")
    monkeypatch.setenv("KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD", "bootstrap-password")


@pytest.mark.parametrize(("name", "value", "says"), BAD_VALUES)
@pytest.mark.usefixtures("nothing_served")
def test_a_bad_value_stops_start_up_naming_the_variable(monkeypatch, tmp_path, name, value, says):
    monkeypatch.setenv(f"KEYSERVICE_{name}", value)
    if name == "DATABASE_URL":
        monkeypatch.setenv("KEYSERVICE_SECRET_KEY", TEST_SECRET)
    for command in (["serve", "--port", str(free_port(21000))], ["migrate"]):
        result = CliRunner().invoke(main, command)
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert lines[0] == "Error: invalid configuration:", lines
        assert len(lines) == 2 and lines[1].startswith(f"  KEYSERVICE_{name}: "), lines
        assert says in lines[1], lines
        assert "pw-in-url" not in result.output
        # In words: not pydantic's "Value error, ..." or "Input should be ...", nor its URLs.
        assert "Value error" not in lines[1] and "Input should" not in lines[1], lines
        assert "pydantic" not in result.output, lines
    assert not (tmp_path / "data").exists()


CROSS_FIELD = [
    (
        {"KEYSERVICE_DATABASE_URL": "postgresql+asyncpg://ops:pw-in-url@127.0.0.1/ks"},
        "KEYSERVICE_SECRET_KEY: must be set when KEYSERVICE_DATABASE_URL is set, to the same "
        "value on every replica of the deployment",
    ),
    (
        {"KEYSERVICE_KEY_DEFAULT_TTL_DAYS": "400"},
        "KEYSERVICE_KEY_DEFAULT_TTL_DAYS: 400 must not exceed KEYSERVICE_KEY_MAX_TTL_DAYS (365)",
    ),
    (
        {"KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD": None},
        "KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD: must be set with "
        "KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME (set both or neither)",
    ),
    (
        {"KEYSERVICE_SECRET_KEY": "pw-in-url-too-short"},
        "KEYSERVICE_SECRET_KEY: must be a random value of at least 32 characters (e.g. "
        "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`)",
    ),
    ({"KEYSERVICE_PORT": "99999"}, "KEYSERVICE_PORT: must be at most 65535"),
    ({"KEYSERVICE_PORT": "eighty"}, "KEYSERVICE_PORT: must be a whole number"),
]


@pytest.mark.parametrize(("env", "line"), CROSS_FIELD)
@pytest.mark.usefixtures("nothing_served")
def test_the_error_is_one_line_naming_the_variable(monkeypatch, env, line):
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 1
    assert result.output.splitlines() == ["Error: invalid configuration:", f"  {line}"]
    assert "pw-in-url" not in result.output and "bootstrap-password" not in result.output


@pytest.mark.parametrize(
    "values",
    [
        {"database_url": "postgresql+asyncpg://ops:pw@db.internal:5432/ks?ssl=require"},
        {"database_url": "sqlite+aiosqlite:////var/lib/keyservice/keyservice.db"},
        {"redis_url": "rediss://:pw@cache.internal:6380/2"},
        {"redis_url": "unix:///run/redis.sock"},
        {"redis_url": "redis://127.0.0.1:6379"},
        {"redis_url": "redis://127.0.0.1:6379/0?socket_timeout=3"},
        {"redis_url": "unix:///run/redis.sock?db=2"},
        {"issuer": "https://keys.example.com"},
        {"issuer": "http://127.0.0.1:8000/auth"},
        {"audit_retention_days": 36500},
        {"legacy_keys_until": "2027-01-01T00:00:00Z"},
        {"legacy_keys_until": "2027-01-01T00:00:00+02:00"},
        {"bootstrap_admin_username": "ops.admin@example", "bootstrap_admin_password": "8 chars!"},
    ],
)
def test_the_documented_forms_are_accepted(values):
    Settings(secret_key=TEST_SECRET, **values)


LARGEST = {
    "key_max_ttl_days": MAX_DAYS,
    "key_default_ttl_days": MAX_DAYS,
    "expiry_warning_days": MAX_DAYS,
    "throttle_client_failures": MAX_THROTTLE_FAILURES,
    "throttle_ip_failures": MAX_THROTTLE_FAILURES,
    "throttle_window_seconds": MAX_THROTTLE_WINDOW_SECONDS,
}


@pytest.mark.parametrize("settings_overrides", [LARGEST])
async def test_the_largest_accepted_values_serve(context, client):
    """What start-up accepts works where it is used: no 500 at the bounds."""
    await create_principal(context, "alice", permissions=["api_keys:manage"])
    refused = await client.post(
        "/token", data={"grant_type": "password", "username": "alice", "password": "wrong"}
    )
    assert refused.status_code == 400, refused.text  # counted by the throttle
    token = (await login(client, "alice"))["access_token"]
    key = await create_key(client, token)  # the default expiry, 100 years ahead
    created, expires = (datetime.fromisoformat(key[f]) for f in ("created_at", "expires_at"))
    assert expires - created == timedelta(days=MAX_DAYS)
    me = await client.get("/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    assert [w["key_id"] for w in me.json()["warnings"]] == [key["id"]]  # within 100 years
