"""Real servers for tests: free loopback ports, start in a session of their own, stop, wait.

Every server a test starts (MLflow, dagster-webserver, PostgreSQL, Redis, SeaweedFS, the
serving app, Chromium) is a real subprocess bound to 127.0.0.1. `require_executable` finds
the binary a test needs; where it is missing the test is skipped on a developer's machine but
fails under CI (`CI` set), whose `.ci/run` installs every one, so a missing server can never
turn a CI run green by skipping.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def require_executable(name: str, *, install_hint: str, extra_globs: tuple[str, ...] = ()) -> str:
    """The path of `name` (PATH, the venv's bin, then `extra_globs`), or skip/fail saying how to get it."""
    found = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    for pattern in extra_globs:
        found = found or next(iter(sorted(glob.glob(pattern), reverse=True)), None)
    if found:
        return found
    message = f"{name} not found; install it with: {install_hint}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (.ci/run installs it; under CI a missing server is a failure)")
    pytest.skip(message)


def start(command: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """A server in a session of its own, so stopping it also stops the workers it forks."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd or log.parent, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # the group this test started, by its id
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def wait_until(ready, what: str, process: subprocess.Popen, log: Path,
               timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll ``ready()`` until it is true; fail with the server's log if it exits or never is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_tail(log)}")
        if ready():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} not up after {timeout_s}s:\n{log_tail(log)}")


def wait_until_up(url: str, process: subprocess.Popen, log: Path,
                  timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200."""
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_until(answers, url, process, log, timeout_s)


def wait_for_port(port: int, process: subprocess.Popen, log: Path,
                  timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """For servers that speak no HTTP (PostgreSQL, Redis): wait until the port accepts connections."""
    def accepts() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            return False

    wait_until(accepts, f"port {port}", process, log, timeout_s)


# --- PostgreSQL and Redis: one throwaway server each, as the team modes of deploy/dagster/ use ---

POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin/{name}"
UNPRIVILEGED_UID = 65534  # nobody/nogroup on Debian


def _unprivileged(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root (CI runs the tests as root): drop to nobody there."""
    if os.geteuid() != 0:
        return command
    setpriv = require_executable("setpriv", install_hint="apt-get install util-linux")
    return [setpriv, f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}", "--clear-groups", *command]


class PostgresServer:
    """A real PostgreSQL on 127.0.0.1:`port`, its cluster in a fresh temporary directory.

    The directory lives directly under the system temp dir (pytest's tmp_path is private to
    root, where the server's user could not reach it) and is removed by `stop`. The
    superuser `user` has a random `password` (scram-sha-256, TCP only: no Unix socket).
    """

    def __init__(self, log_dir: Path):
        import secrets
        import tempfile

        initdb = require_executable("initdb", install_hint="apt-get install postgresql",
                                    extra_globs=(POSTGRES_BIN_GLOB.format(name="initdb"),))
        postgres = str(Path(initdb).with_name("postgres"))
        self.user, self.password, self.port = "mmpipe", secrets.token_urlsafe(16), free_port()
        self.base = Path(tempfile.mkdtemp(prefix="mmpipe-pg-"))
        password_file = self.base / "password"
        password_file.write_text(self.password)
        if os.geteuid() == 0:
            for path in (self.base, password_file):
                os.chown(path, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
        data = self.base / "data"
        self.log = log_dir / "postgres.log"
        setup = subprocess.run(
            _unprivileged([initdb, "-D", str(data), "-U", self.user, "--auth=scram-sha-256",
                           f"--pwfile={password_file}", "--encoding=UTF8", "--locale=C", "--no-sync"]),
            capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
        if setup.returncode != 0:
            pytest.fail(f"initdb failed ({setup.returncode}):\n{setup.stdout[-2000:]}\n{setup.stderr[-2000:]}")
        # fsync off: a test cluster is thrown away, and it halves the time of Dagster's many small writes
        self.process = start(_unprivileged([postgres, "-D", str(data), "-h", HOST, "-p", str(self.port), "-k", "",
                                            "-c", "fsync=off", "-c", "max_connections=200"]), self.log)
        wait_for_port(self.port, self.process, self.log)
        self._wait_ready()

    def _wait_ready(self) -> None:
        # the port opens before the cluster accepts sessions ("the database system is starting up")
        import psycopg2

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                psycopg2.connect(**self.connect_args("postgres")).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    pytest.fail(f"PostgreSQL not ready on port {self.port}:\n{log_tail(self.log)}")
                time.sleep(0.3)

    def connect_args(self, database: str) -> dict:
        return {"host": HOST, "port": self.port, "user": self.user, "password": self.password, "dbname": database}

    def url(self, database: str) -> str:
        """A SQLAlchemy URL (MLflow's tracking URI), with psycopg2: SQLAlchemy 2.1 would pick psycopg 3."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(**self.connect_args("postgres"))
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return name

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(**self.connect_args(database))
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def stop(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown: SIGTERM (smart) would wait for every client
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        stop(self.process)
        shutil.rmtree(self.base, ignore_errors=True)


def start_redis(log_dir: Path) -> tuple[subprocess.Popen, int]:
    """A real Redis on 127.0.0.1 (no persistence, its dir `log_dir`); returns (process, port)."""
    redis = require_executable("redis-server", install_hint="apt-get install redis-server")
    port = free_port()
    log = log_dir / "redis.log"
    process = start([redis, "--bind", HOST, "--port", str(port), "--dir", str(log_dir),
                     "--save", "", "--appendonly", "no"], log)
    wait_for_port(port, process, log)
    return process, port
