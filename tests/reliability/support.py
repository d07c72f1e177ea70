"""Throwaway PostgreSQL clusters and real `keyservice serve` processes for fault tests.

Everything here listens on 127.0.0.1 only, and every process started is stopped by id
(its own process group) at the end, whatever the test did.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

PG_BIN_CANDIDATES = [
    os.environ.get("KEYSERVICE_TEST_PG_BIN", ""),
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
]
SECRET = "reliability-secret-" + "r" * 40
ADMIN = "rel-admin"
ADMIN_PASSWORD = "rel-admin-password-" + "a" * 20


def pg_bin() -> Path:
    """The directory of initdb and pg_ctl; missing binaries fail in CI and skip elsewhere."""
    for candidate in PG_BIN_CANDIDATES:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    message = "PostgreSQL server binaries (initdb, pg_ctl) are needed for the fault tests"
    if os.environ.get("CI"):
        pytest.fail(message + "; install postgresql in CI", pytrace=False)
    pytest.skip(message)


def free_port(start: int = 55432) -> int:
    for port in range(start + secrets.randbelow(2000), start + 4000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class Cluster:
    """A PostgreSQL cluster of our own, in a temporary directory, that tests may stop."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="ks-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        """Create an empty database in this cluster; return its SQLAlchemy URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url.rsplit("/", 1)[0] + "/" + name

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


class Server:
    """`keyservice serve` in a subprocess, in its own process group."""

    def __init__(
        self,
        *,
        database_url: str | None,
        data_dir: Path,
        workers: int = 2,
        preamble: str = "",
        **settings: str,
    ) -> None:
        self.preamble = preamble  # Python run before the CLI, e.g. to set up logging
        self.port = free_port(18000)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "KEYSERVICE_SECRET_KEY": SECRET,
            "KEYSERVICE_DATA_DIR": str(data_dir),
            "KEYSERVICE_BOOTSTRAP_ADMIN_USERNAME": ADMIN,
            "KEYSERVICE_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "KEYSERVICE_LOG_LEVEL": "WARNING",
            "KEYSERVICE_REVOCATION_POLL_SECONDS": "0.5",
            "KEYSERVICE_THROTTLE_CLIENT_FAILURES": "100000",
            "KEYSERVICE_THROTTLE_IP_FAILURES": "100000",
            **{f"KEYSERVICE_{k.upper()}": v for k, v in settings.items()},
        }
        if database_url is not None:
            self.env["KEYSERVICE_DATABASE_URL"] = database_url
        else:
            self.env.pop("KEYSERVICE_DATABASE_URL", None)
        self.workers = workers
        self.log_path = data_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:  # as tests/e2e START_SECONDS
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"{self.preamble}\nfrom keyservice.cli import main; main()",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    if len(self.worker_pids()) >= self.workers or self.workers == 1:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            children = [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []
        # multiprocessing's resource tracker is a child too; workers run our serve code.
        workers = []
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline:
                workers.append(pid)
        return workers

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM the supervisor (it drains and stops its workers); return the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


def admin_key(base_url: str, names: list[str]) -> list[dict[str, Any]]:
    """Log in as the bootstrap admin and create API keys for it (at most 5)."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        login = http.post(
            "/token",
            data={"grant_type": "password", "username": ADMIN, "password": ADMIN_PASSWORD},
        )
        login.raise_for_status()
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        keys = []
        for name in names:
            created = http.post("/api-keys", json={"name": name}, headers=headers)
            created.raise_for_status()
            keys.append(created.json())
        return keys


# TCP socket states as /proc/net/tcp writes them.
LISTEN, ESTABLISHED = "0A", "01"


def tcp_sockets(state: str) -> dict[int, int]:
    """The machine's TCP sockets in `state`: inode -> local port (from /proc/net/tcp*)."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state:
                sockets[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return sockets


def sockets_of(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(int(target[len("socket:[") : -1]))
    return held
