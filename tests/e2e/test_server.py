"""The real `keyservice serve` process, as a newcomer and an operator use it."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import (
    SKIP_POSTGRES,
    create_postgres_database,
    drop_postgres_database,
)

pytestmark = pytest.mark.e2e
KEYSERVICE = str(Path(sys.executable).with_name("keyservice"))
# How long a started server may take to answer /readyz. A start takes 2-5 s; this only
# ends a run whose server never comes up, and on a loaded 2-core machine (make test runs
# the tests on parallel workers) a start of several workers has taken over 30 s.
START_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVICE_")}
    env.update(extra)
    return env


class Server:
    def __init__(self, cwd: Path, env: dict[str, str], port: int, *args: str) -> None:
        """Start `keyservice serve --port PORT [ARGS]` and wait until it is ready."""
        self.cwd, self.env, self.port = cwd, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = cwd / f"server-{port}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [KEYSERVICE, "serve", "--port", str(port), *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("server exited:\n" + self.log.read_text())
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("server did not become ready:\n" + self.log.read_text())

    def output(self) -> str:
        return self.log.read_text()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KEYSERVICE, *args],
            cwd=self.cwd,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(params=["embedded"] + ([] if SKIP_POSTGRES else ["postgresql"]))
def server_env(request, tmp_path) -> Iterator[dict[str, str]]:
    if request.param == "embedded":
        yield base_env()  # nothing configured at all
        return
    url = create_postgres_database("ks_e2e")
    try:
        yield base_env(
            KEYSERVICE_DATABASE_URL=url,
            KEYSERVICE_SECRET_KEY="e2e-" + "s" * 44,
            KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME="root",
            KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD="bootstrap-password-123",
        )
    finally:
        drop_postgres_database(url)


def admin_credentials(server: Server) -> tuple[str, str]:
    if "KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD" in server.env:
        return server.env["KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME"], server.env[
            "KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD"
        ]
    match = re.search(r"username: (\S+)\s+password: (\S+)", server.output())
    assert match, server.output()
    return match.group(1), match.group(2)


def verify_with_jwks(server: Server, token: str) -> dict:
    """Verify as a stranger would: a stock JWT library and the published JWKS."""
    client = jwt.PyJWKClient(server.url + "/.well-known/jwks.json", cache_keys=False)
    signing_key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token, signing_key.key, algorithms=["ES256"], audience=server.url, issuer=server.url
    )


def test_serve_login_verify_rotate(tmp_path, server_env):
    server = Server(tmp_path, server_env, free_port())
    try:
        username, password = admin_credentials(server)
        if "KEYSERVICE_DATABASE_URL" not in server_env:
            assert (tmp_path / ".keyservice" / "keyservice.db").exists()
            assert oct((tmp_path / ".keyservice" / "secret_key").stat().st_mode)[-3:] == "600"
            # The folder too: the database holds hashes and the audit log.
            assert oct((tmp_path / ".keyservice").stat().st_mode)[-3:] == "700"
        login = httpx.post(
            server.url + "/token",
            data={"grant_type": "password", "username": username, "password": password},
        )
        assert login.status_code == 200, login.text
        old = login.json()["access_token"]
        claims = verify_with_jwks(server, old)
        me = httpx.get(server.url + "/me", headers={"Authorization": f"Bearer {old}"}).json()
        assert me["id"] == claims["sub"] and me["username"] == username
        assert "admin" in me["permissions"]

        meta = httpx.get(server.url + "/.well-known/oauth-authorization-server").json()
        assert meta["issuer"] == server.url

        # HEAD is GET, headers only: probes (uptime monitors, load balancers) and every
        # other GET, through the real server.
        for probe, headers in (
            ("/healthz", {}),
            ("/readyz", {}),
            ("/me", {"Authorization": f"Bearer {old}"}),
        ):
            head = httpx.head(server.url + probe, headers=headers)
            assert head.status_code == 200, (probe, head.status_code)
            assert head.content == b""
            assert head.headers["content-type"] == "application/json"
            got = httpx.get(server.url + probe, headers=headers)
            assert head.headers["content-length"] == got.headers["content-length"], probe

        rotated = server.cli("signing-keys", "rotate", "--now")
        assert rotated.returncode == 0, rotated.stderr
        old_kid = jwt.get_unverified_header(old)["kid"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            new = httpx.post(
                server.url + "/token",
                data={
                    "grant_type": "password",
                    "username": username,
                    "password": password,
                },
            ).json()["access_token"]
            if jwt.get_unverified_header(new)["kid"] != old_kid:
                break
            time.sleep(0.5)
        assert jwt.get_unverified_header(new)["kid"] != old_kid
        kids = {k["kid"] for k in httpx.get(server.url + "/.well-known/jwks.json").json()["keys"]}
        assert old_kid in kids
        for token in (old, new):
            verify_with_jwks(server, token)
            assert (
                httpx.get(
                    server.url + "/me", headers={"Authorization": f"Bearer {token}"}
                ).status_code
                == 200
            )
        # The bootstrap password never reaches a log line; only the one-time banner shows it.
        assert server.output().count(password) <= 1
        assert old not in server.output()
    finally:
        server.stop()


def test_users_create_cli_and_bad_configuration(tmp_path):
    env = base_env()
    create = [
        KEYSERVICE,
        "users",
        "create",
        "ops",
        "--permission",
        "api_keys:manage",
        "--password-stdin",
    ]
    unmigrated = subprocess.run(
        create,
        cwd=tmp_path,
        env=env,
        input="a-long-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unmigrated.returncode != 0
    assert "keyservice migrate" in unmigrated.stderr
    migrated = subprocess.run(
        [KEYSERVICE, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    created = subprocess.run(
        create,
        cwd=tmp_path,
        env=env,
        input="a-long-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    assert "created user ops" in created.stdout
    assert "a-long-password" not in created.stdout + created.stderr

    bad = subprocess.run(
        [KEYSERVICE, "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(
            KEYSERVICE_DATABASE_URL="postgresql+asyncpg://x@127.0.0.1/y",
            KEYSERVICE_ACCESS_TOKEN_TTL="soon",
        ),
    )
    assert bad.returncode != 0
    assert "KEYSERVICE_ACCESS_TOKEN_TTL" in bad.stderr
    placeholder = subprocess.run(
        [KEYSERVICE, "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(KEYSERVICE_SECRET_KEY="changeme"),
    )
    assert placeholder.returncode != 0 and "KEYSERVICE_SECRET_KEY" in placeholder.stderr
    assert json.dumps("changeme") not in placeholder.stderr


def test_the_readmes_curl_tour_runs_as_written(tmp_path):
    # The README's first steps, run by bash as a newcomer pastes them against a fresh
    # server, with only its address and the printed password filled in. The tour kept the
    # new key and the tokens in files of the reader's folder (mode 0644, never removed):
    # it now keeps them in shell variables, and the folder stays empty. It put the client
    # secret on curl's command line, where `ps` shows it to every user of the machine: curl
    # and jq run here through stand-ins that write down their arguments, and no secret may
    # be among them.
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    tour = readme.split("## A 30-second tour with curl", 1)[1].split("```sh\n", 1)[1]
    script = tour.split("```", 1)[0]
    server = Server(tmp_path, base_env(), free_port())
    try:
        username, password = admin_credentials(server)
        assert username == "admin"  # as the tour signs in
        assert "B=http://127.0.0.1:8000\n" in script
        script = script.replace("B=http://127.0.0.1:8000\n", f"B={server.url}\n")
        placeholder = "PASSWORD='<the password printed at first start>'\n"
        assert placeholder in script
        script = script.replace(placeholder, f"PASSWORD='{password}'\n")
        reader = tmp_path / "reader"
        reader.mkdir()
        shims, argvs = tmp_path / "shims", tmp_path / "argvs"
        shims.mkdir()
        argvs.mkdir()
        for program in ("curl", "jq"):
            real = shutil.which(program)
            assert real, f"the tour needs {program}"
            shim = shims / program
            shim.write_text(  # a file per run (pipelines run several at once)
                f'#!/bin/sh\nprintf "%s\\0" "$0" "$@" > "$ARGVS/$$"\nexec "{real}" "$@"\n'
            )
            shim.chmod(0o755)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=reader,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "ARGVS": str(argvs)},
        )
        assert done.returncode == 0, done.stderr
        answers, rest, decoder = [], done.stdout.strip(), json.JSONDecoder()
        while rest:  # curl ends no answer with a newline: one JSON document after another
            answer, end = decoder.raw_decode(rest)
            answers.append(answer)
            rest = rest[end:].lstrip()
        me, key, exchanged, by_basic, me_again, refreshed = answers
        assert me["username"] == "admin" and me_again["id"] == me["id"]
        assert key["name"] == "laptop" and key["api_key"].startswith("ksk_")
        for tokens in (exchanged, by_basic, refreshed):
            assert tokens["token_type"] == "Bearer" and tokens["refresh_token"], tokens
        assert refreshed["access_token"] != exchanged["access_token"]
        assert list(reader.iterdir()) == []
        runs = [run.read_text().split("\0")[:-1] for run in argvs.iterdir()]
        assert sum(Path(run[0]).name == "curl" for run in runs) == 7  # every request
        secrets = [password, key["api_key"], key["client_secret"]]
        secrets += [tokens["refresh_token"] for tokens in (exchanged, by_basic)]
        for run in runs:
            for secret in secrets:
                assert not any(secret in word for word in run), (run[0], "holds a secret")
        assert any("-K" in run for run in runs)  # the Basic exchange ran, its secret on stdin
    finally:
        server.stop()


def test_an_idle_keep_alive_connection_outlives_a_load_balancers_idle_timeout(tmp_path):
    # uvicorn closes a keep-alive connection idle for 5 s by default. A load balancer keeps
    # its pooled connections to the service longer (AWS ALB 60 s, nginx upstream keepalive
    # 60 s) and sends the next request on one the service is closing at that moment: the
    # client gets a 502 or a reset for a request the service never read.
    server = Server(tmp_path, base_env(), free_port())
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() and connection.sock is not None
        first = connection.sock
        time.sleep(6)
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.status == 200 and connection.sock is first  # the same connection
        connection.close()
    finally:
        server.stop()
