"""A private `redis-server` on 127.0.0.1: no persistence, its own directory, stop and restart.

    with RedisServer() as redis:
        ... connect to redis.url ...
        redis.stop(); redis.start()          # an outage, then the same server on the same port
        redis.pause(); redis.resume()        # up but silent (SIGSTOP), then answering again

    with RedisServer(tls=RedisTLS(cert, key, ca)) as redis:
        ... connect to redis.url (rediss://): TLS only, on the same kind of free port ...

Nothing is saved (`--save ""`, no append-only file), so a restart comes back empty, as after a
crash of a cache. The server is a child of this process; `close()` ends it whatever happened.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ._process import (
    LOOPBACK,
    PrivateServer,
    find_binary,
    is_listening,
    register,
    tail,
    wait_until,
)

__all__ = ["RedisServer", "RedisTLS"]

_START_ATTEMPTS = 3


class RedisTLS(NamedTuple):
    """PEM files for a TLS-only server (Debian's redis-server is built with TLS); clients are
    not asked for a certificate."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class RedisServer(PrivateServer):
    """`redis-server` on 127.0.0.1:`port`; `arguments` are extra `--name value` options."""

    name = "redis"

    def __init__(
        self,
        arguments: Sequence[str] = (),
        *,
        start_timeout: float = 10.0,
        tls: RedisTLS | None = None,
    ) -> None:
        self._binary = find_binary("redis-server", "redis-server")
        self.arguments = tuple(arguments)
        self.tls = tls
        self.start_timeout = start_timeout
        self.host = LOOPBACK
        self.port = 0
        self.start_seconds: list[float] = []
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://{self.host}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        """Start on a free port the first time, on the same port after `stop()`."""
        if self._process is not None:
            raise RuntimeError("the server is already running")
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="pooledmail-redis-"))
            atexit.register(self.close)
            attempts = _START_ATTEMPTS
        else:
            attempts = 1  # a restart must keep its port
        self._spawn_on_a_free_port(attempts, "Address already in use")

    def pause(self) -> None:
        """SIGSTOP: the port and every connection stay open, and nothing is answered.

        `stop()` and `close()` resume it first, so a paused server never outlives its owner."""
        if self._process is None:
            raise RuntimeError("the server is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused server answers again, the commands it was sent meanwhile first."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (redis shuts down at once: nothing to save), SIGKILL if it lingers."""
        # A paused server would hold SIGTERM pending until the SIGKILL below.
        self.resume()
        process, self._process = self._process, None
        register(self, running=False)
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        if self._directory is not None:
            atexit.unregister(self.close)
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def log_tail(self, lines: int = 60) -> str:
        if self._directory is None:
            return "(not started)"
        return tail(self.log_file, lines)

    def _spawn(self) -> None:
        began = time.monotonic()
        log_position = self.log_file.stat().st_size if self.log_file.exists() else 0
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port", "0",  # no plain-text port at all
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert_file),
                "--tls-key-file", str(self.tls.key_file),
                "--tls-ca-cert-file", str(self.tls.ca_file),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        command = [
            self._binary,
            "--bind", self.host,
            *listen,
            "--dir", str(self.directory),
            "--logfile", str(self.log_file),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            *self.arguments,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        register(self, running=True)
        process = self._process

        def ready() -> bool:
            if not is_listening(self.port, pid=process.pid):
                return False
            with self.log_file.open("rb") as log:
                log.seek(log_position)
                return b"Ready to accept connections" in log.read()

        wait_until(
            ready,
            timeout=self.start_timeout,
            what=f"redis-server on {self.host}:{self.port}",
            diagnose=lambda: self.log_tail(20),
            alive=lambda: process.poll() is None,
        )
        self.start_seconds.append(time.monotonic() - began)
