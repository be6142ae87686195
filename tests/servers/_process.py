"""What every private test server needs: binaries, free ports, bounded waits, certain cleanup.

Linux only (Debian is what CI runs): readiness is read from /proc/net/tcp, so that no probe
connection ever reaches a server that counts sessions or messages, and the processes of a Postfix
instance are found by the MAIL_CONFIG in their environment, never by their name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

__all__ = [
    "LOOPBACK",
    "PrivateServer",
    "MissingBinary",
    "ServerStartError",
    "find_binary",
    "free_port",
    "is_listening",
    "kill_and_reap",
    "live_servers",
    "open_files",
    "process_exists",
    "register",
    "tail",
    "wait_until",
]

LOOPBACK = "127.0.0.1"

# Binaries of Debian packages live in sbin, which a non-login root shell may not have in PATH.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"]
)


class MissingBinary(RuntimeError):
    """A program a test server needs is not installed; `package` is the Debian package."""

    def __init__(self, program: str, package: str) -> None:
        self.program = program
        self.package = package
        super().__init__(f"{program} not found (Debian package {package}; .ci/run installs it)")


class ServerStartError(RuntimeError):
    """A test server did not become ready in time; the message carries its log tail."""


class LogSource(Protocol):
    name: str

    def log_tail(self, lines: int = ...) -> str: ...


# Every server that is running, so that a failing test can show their logs (see fixtures.py).
_live: weakref.WeakSet[LogSource] = weakref.WeakSet()


def register(server: LogSource, running: bool) -> None:
    if running:
        _live.add(server)
    else:
        _live.discard(server)


def live_servers() -> list[LogSource]:
    return list(_live)


def find_binary(program: str, package: str) -> str:
    path = shutil.which(program, path=_SEARCH_PATH)
    if path is None:
        raise MissingBinary(program, package)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Another process may take it before the server binds it; each server retries start-up on a
    fresh port when its bind fails, a bounded number of times.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def is_listening(port: int, host: str = LOOPBACK, *, pid: int | None = None) -> bool:
    """Whether a socket listens on host:port, read from /proc/net/tcp without connecting.

    With `pid`, the listening socket must also be one of that process's file descriptors, so that
    another program that took the port is never mistaken for the server.
    """
    # /proc/net/tcp writes the IPv4 address as the hex of its bytes in host order.
    wanted_address = socket.inet_aton(host)[::-1].hex().upper()
    wanted_port = f"{port:04X}"
    listen_state = "0A"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return _accepts_connections(port, host)
    for line in lines:
        fields = line.split()
        address, _, local_port = fields[1].partition(":")
        if (
            local_port == wanted_port
            and fields[3] == listen_state
            and address in (wanted_address, "00000000")
        ):
            return pid is None or f"socket:[{fields[9]}]" in _descriptors(pid)
    return False


def _descriptors(pid: int) -> set[str]:
    names = set()
    with contextlib.suppress(OSError):
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                names.add(os.readlink(descriptor))
    return names


def _accepts_connections(port: int, host: str) -> bool:
    # Only where /proc is missing: a probe connection, which the server will see.
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    diagnose: Callable[[], str],
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Poll `ready` until it holds; raise ServerStartError with `diagnose()` at the deadline.

    `alive` lets a caller stop waiting at once when the process it waits for has died.
    """
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        if ready():
            return
        if not alive():
            raise ServerStartError(f"{what}: the process exited\n{diagnose()}")
        if time.monotonic() >= deadline:
            raise ServerStartError(f"{what}: not ready after {timeout:.0f} s\n{diagnose()}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def open_files(pid: int) -> set[str]:
    """What the file descriptors of `pid` point to (paths, "socket:[inode]", ...)."""
    return _descriptors(pid)


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def process_exists(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may contain spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_and_reap(pids: Iterable[int], *, timeout: float = 5.0) -> None:
    """SIGKILL each of `pids` (processes this module started) and wait, bounded, until gone."""
    remaining = [pid for pid in pids if pid != os.getpid()]
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        for pid in list(remaining):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not process_exists(pid):
                remaining.remove(pid)
        time.sleep(0.01)


_Server = TypeVar("_Server", bound="PrivateServer")


class PrivateServer:
    """The life cycle every private server shares: `with Server(...) as server:` starts it and
    closes it whatever happens; `directory` is its temporary directory once started.
    Subclasses set `_directory` in `start()` and free everything in `close()`."""

    _directory: Path | None = None

    port: int

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def log_tail(self, lines: int = 60) -> str:
        raise NotImplementedError

    def _spawn(self) -> None:
        raise NotImplementedError

    def _spawn_on_a_free_port(self, attempts: int, in_use: str) -> None:
        """`_spawn()`; with several `attempts`, on a new free port each time, as long as the
        failure was the port being taken meanwhile (`in_use` in the server's log)."""
        for attempt in range(1, attempts + 1):
            if attempts > 1:
                self.port = free_port()
            try:
                self._spawn()
                return
            except ServerStartError:
                bind_failed = in_use in self.log_tail(10)
                self.stop()
                if attempt == attempts or not bind_failed:
                    raise

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._directory

    def __enter__(self: _Server) -> _Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
