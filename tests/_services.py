"""Real external services for the tests: a throwaway ``redis-server`` and free ports.

Import the fixture into a test module to use it::

    from tests._services import redis_url_fixture  # noqa: F401 (registers ``redis_url``)

``redis_server`` (from ``redis_server_fixture``) is a server of the test's own that it may stop
and start again on the same port, to play a restart or an outage.

Without a ``redis-server`` binary the tests that need it skip, except under CI (``CI=true``),
where a missing service is a failure: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

__all__ = ["RedisServer", "free_port", "redis_server_fixture", "redis_url_fixture", "wait_for_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``.

    Raises:
        RuntimeError: ``process`` exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"the service exited with code {process.returncode} before listening"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def _missing(what: str) -> None:
    """Fail under CI (the service must be there), skip on a developer's machine."""
    message = f"{what} is not installed (Debian: apt-get install redis-server)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(name="redis_url", scope="module")
def redis_url_fixture() -> Iterator[str]:
    """A fresh ``redis-server`` on a free port (no persistence), stopped after the module."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server")
        raise AssertionError("unreachable: _missing() skips or fails")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=10.0, process=process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) on one port, which a test can stop and restart.

    Args:
        binary: the ``redis-server`` executable.
        password: when given, the server requires it (``requirepass``) and :attr:`url` carries it.
    """

    def __init__(self, binary: str, *, password: str | None = None) -> None:
        self.binary = binary
        self.port = free_port()
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, with the password when there is one."""
        auth = f"default:{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (empty: nothing survives a restart) and wait until it listens."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, timeout=10.0, process=self._process)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); clients see their connections drop."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A started ``RedisServer`` of this test's own, stopped after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server")
        raise AssertionError("unreachable: _missing() skips or fails")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
