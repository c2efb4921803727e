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


def wait_until_up(url: str, process: subprocess.Popen, log: Path,
                  timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not up after {timeout_s}s:\n{log_tail(log)}")


def wait_for_port(port: int, process: subprocess.Popen, log: Path,
                  timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """For servers that speak no HTTP (PostgreSQL, Redis): wait until the port accepts connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"port {port} not open after {timeout_s}s:\n{log_tail(log)}")
