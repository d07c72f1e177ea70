"""`keyservice serve`: which supervisor runs the workers (the serving itself: tests/reliability)."""

from __future__ import annotations

import socket
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from keyservice.cli import main
from tests.reliability.support import free_port


@pytest.fixture
def served(monkeypatch, tmp_path) -> dict[str, Any]:
    """Run `serve` up to the point of serving, recording what would serve."""
    import uvicorn

    from keyservice import workers

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.update(uvicorn=kwargs))

    def supervise(self: workers.Supervisor) -> int:
        calls["supervisor"] = self.workers
        return 0

    monkeypatch.setattr(workers.Supervisor, "run", supervise)
    for name in ("KEYSERVICE_DATABASE_URL", "KEYSERVICE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEYSERVICE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME", "serve-admin")
    monkeypatch.setenv("KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD", "serve-admin-password-1234")
    return calls


def _serve(*args: str) -> None:
    port = str(free_port(21000))
    result = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1", "--port", port, *args])
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing")
def test_several_workers_on_linux_get_a_socket_each(served):
    _serve("--workers", "3")
    assert served == {"supervisor": 3}


def test_one_worker_or_no_linux_is_plain_uvicorn(served, monkeypatch):
    _serve()
    assert served["uvicorn"]["workers"] == 1 and "supervisor" not in served
    assert served["uvicorn"]["log_config"] is None  # its lines in our format (tests/e2e)
    served.clear()
    monkeypatch.setattr(sys, "platform", "darwin")  # SO_REUSEPORT would not spread there
    _serve("--workers", "2")
    assert served["uvicorn"]["workers"] == 2 and "supervisor" not in served
    # Its spawned workers set up no logging of ours: its own handler keeps their lines.
    assert "log_config" not in served["uvicorn"]


def test_async_token_commit_on_sqlite_is_named_as_doing_nothing(served, monkeypatch, caplog):
    monkeypatch.setenv("KEYSERVICE_TOKEN_COMMIT", "async")
    with caplog.at_level("INFO", logger="keyservice"):
        _serve()
    said = [r for r in caplog.records if "KEYSERVICE_TOKEN_COMMIT" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"], said
    assert "PostgreSQL only" in said[0].getMessage()


def test_async_token_commit_on_postgresql_says_what_it_trades(monkeypatch, caplog):
    from keyservice.cli import _say_token_commit
    from keyservice.config import Settings

    def said(**values: Any) -> list[str]:
        caplog.clear()
        settings = Settings(secret_key="s" * 40, **values)
        with caplog.at_level("INFO", logger="keyservice"):
            _say_token_commit(settings)
        return [r.getMessage() for r in caplog.records]

    pg = "postgresql+asyncpg://postgres@127.0.0.1/keyservice"
    assert said(database_url=pg) == []
    assert said(database_url=pg, token_commit="durable") == []
    (line,) = said(database_url=pg, token_commit="async")
    assert "crash of the database server can lose" in line and "refreshes always wait" in line


def test_a_bad_token_commit_value_stops_serve_naming_the_variable(served, monkeypatch):
    monkeypatch.setenv("KEYSERVICE_TOKEN_COMMIT", "sometimes")
    port = str(free_port(21000))
    result = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1", "--port", port])
    assert result.exit_code != 0
    assert "KEYSERVICE_TOKEN_COMMIT" in result.output and "durable" in result.output
    assert served == {}  # nothing served


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_a_port_out_of_range_is_refused_as_the_option(served, port):
    # It was passed on as KEYSERVICE_PORT, and the error named the variable, not --port.
    result = CliRunner().invoke(main, ["serve", "--port", port])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--port'" in result.output
    assert "KEYSERVICE_PORT" not in result.output.split("Error:")[1]
    assert served == {}


def test_a_port_in_use_is_one_line_before_anything_is_done(served, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1", "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert not (tmp_path / "data").exists()  # not migrated, no admin created
    assert served == {}


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["keys", "list"]], ids=" ".join)
def test_a_data_folder_that_cannot_be_made_is_one_line(served, monkeypatch, tmp_path, command):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("KEYSERVICE_DATA_DIR", str(tmp_path / "a-file" / "data"))
    if command == ["serve"]:
        command = ["serve", "--host", "127.0.0.1", "--port", str(free_port(21000))]
    result = CliRunner().invoke(main, command)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: cannot use the data folder {tmp_path / 'a-file' / 'data'} (Not a directory); "
        "is KEYSERVICE_DATA_DIR right?"
    ]
    assert served == {}


@pytest.mark.parametrize(
    ("host", "issuer"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("keys.internal", "http://keys.internal:8000"),
        ("::1", "http://[::1]:8000"),
        ("fd00::10", "http://[fd00::10]:8000"),
    ],
)
def test_the_default_issuer_is_a_url_for_every_host(host, issuer):
    # `serve --host ::1` gave tokens and the metadata `http://::1:8000`, no URL at all.
    from keyservice.config import Settings

    settings = Settings(host=host, port=8000)
    assert settings.effective_issuer == issuer
    assert settings.effective_audience == issuer
    assert Settings(host=host, port=8000, issuer="https://keys.example.com/").effective_issuer == (
        "https://keys.example.com"
    )


def test_a_default_issuer_on_a_bind_all_address_is_named_at_start_up(caplog):
    from keyservice.cli import _say_issuer
    from keyservice.config import Settings

    def said(**values: Any) -> list[str]:
        caplog.clear()
        with caplog.at_level("INFO", logger="keyservice"):
            _say_issuer(Settings(port=8000, **values))
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    # The image serves on 0.0.0.0: without KEYSERVICE_ISSUER every token said
    # iss=http://0.0.0.0:8000 and verifiers configured with the real URL refused them all.
    (line,) = said(host="0.0.0.0")
    assert "http://0.0.0.0:8000" in line and "set KEYSERVICE_ISSUER" in line
    (line,) = said(host="::")
    assert "http://[::]:8000" in line
    assert said(host="0.0.0.0", issuer="https://keys.example.com") == []
    assert said(host="127.0.0.1") == []


def test_serve_help_says_where_the_defaults_come_from():
    text = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    assert "default KEYSERVICE_HOST, else 127.0.0.1" in text
    assert "default KEYSERVICE_PORT, else 8000" in text
    assert "one per core" in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nine-thousand", "must be a whole number"),
        ("0", "must be at least 1"),
        ("70000", "must be at most 65535"),
    ],
)
def test_a_bad_metrics_port_stops_serve_naming_the_variable(served, monkeypatch, value, message):
    monkeypatch.setenv("KEYSERVICE_METRICS_PORT", value)
    result = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1", "--port", "8000"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: invalid configuration:",
        f"  KEYSERVICE_METRICS_PORT: {message}",
    ]
    assert served == {}


def test_the_metrics_port_cannot_be_the_api_port(served, monkeypatch):
    port = str(free_port(21000))
    monkeypatch.setenv("KEYSERVICE_METRICS_PORT", port)
    result = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1", "--port", port])
    assert result.exit_code == 1, result.output
    assert f"KEYSERVICE_METRICS_PORT: must differ from KEYSERVICE_PORT ({port})" in result.output
    assert served == {}


def test_a_metrics_port_in_use_is_one_line_before_anything_is_done(served, monkeypatch, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        monkeypatch.setenv("KEYSERVICE_METRICS_PORT", str(taken))
        port = str(free_port(21000))
        result = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1", "--port", port])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{taken} for the metrics: Address already in use; "
        "check KEYSERVICE_METRICS_HOST and KEYSERVICE_METRICS_PORT"
    ]
    assert not (tmp_path / "data").exists()  # not migrated, no admin created
    assert served == {}


def test_a_redis_that_cannot_be_reached_is_one_line_before_anything_is_done(
    served, monkeypatch, tmp_path
):
    # It started, and every /token answered 503 while /readyz said ready.
    from tests.conftest import refused_port

    port = refused_port()
    url = f"redis://:redis-pw-in-url@127.0.0.1:{port}/0"
    monkeypatch.setenv("KEYSERVICE_REDIS_URL", url)
    port_arg = str(free_port(21000))
    result = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1", "--port", port_arg])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Error: cannot use Redis at redis://:***@127.0.0.1:{port}/0 ("), (
        lines
    )
    assert lines[0].endswith("is it running and reachable, and is KEYSERVICE_REDIS_URL right?")
    assert "redis-pw-in-url" not in result.output
    assert not (tmp_path / "data").exists()  # not migrated, no admin created
    assert served == {}


def test_a_redis_that_answers_is_served_with(served, monkeypatch):
    from tests.security.test_throttle import REDIS_URL

    monkeypatch.setenv("KEYSERVICE_REDIS_URL", REDIS_URL)
    _serve()
    assert served["uvicorn"]["workers"] == 1


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
def test_a_host_that_is_not_this_machines_names_the_option(served, tmp_path, host):
    # "cannot listen on no-such-host.invalid:8000: Name or service not known", naming neither
    # --host nor KEYSERVICE_HOST, which is where the operator set it.
    port = free_port(21000)
    result = CliRunner().invoke(main, ["serve", "--host", host, "--port", str(port)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot listen on {host}:{port}: ")
    assert lines[0].endswith("is --host (else KEYSERVICE_HOST) a name or address of this machine?")
    assert not (tmp_path / "data").exists()
    assert served == {}
