"""Postfix's `smtp-sink` on 127.0.0.1 for fault tests and benchmarks.

    with SmtpSink(["-Q", "RCPT"]) as sink:      # 421 and disconnect after RCPT
        ... send to 127.0.0.1:sink.port ...

`flags` are smtp-sink's own options (`man smtp-sink`): capabilities (-p no PIPELINING, -8 no
8BITMIME, -E no ENHANCEDSTATUSCODES, -a no AUTH, -N no DSN, -e no ESMTP), faults (-q disconnect, -Q
421 and disconnect, -r 4xx, -f 5xx after the named commands; -A abort after DATA; -w / -W / -H
delays) and limits (-m connections, -M messages, -n sessions). smtp-sink offers neither CHUNKING
nor SMTPUTF8 nor STARTTLS; use `PostfixServer` for those.

With `record=True` the sink writes every transaction to its own file (`-d`); `received()` returns
them. smtp-sink closes a capture file when it reads the end of the data and only then answers, so
a message the client saw accepted is already on disk (`test_servers.py` holds this); a capture the
sink still holds open is a transaction in progress and is left out, and the sink deletes the
capture of a transaction that was aborted.
The sink is a child of this process; `close()` ends it whatever happened.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from pathlib import Path

from ._process import (
    LOOPBACK,
    PrivateServer,
    find_binary,
    is_listening,
    open_files,
    register,
    tail,
    wait_until,
)

__all__ = ["SinkMessage", "SmtpSink"]

_MANAGED_FLAGS = frozenset({"-u", "-R", "-d", "-D", "-4", "-6"})
_START_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """One transaction as smtp-sink captured it: the MAIL and RCPT arguments and the data."""

    sender: str
    recipients: tuple[str, ...]
    mail_arguments: str
    message_id: str | None
    content: bytes


class SmtpSink(PrivateServer):
    """A `smtp-sink` listening on 127.0.0.1:`port`; see the module docstring."""

    name = "smtp-sink"

    def __init__(
        self,
        flags: Sequence[str] = (),
        *,
        record: bool = False,
        backlog: int = 256,
        start_timeout: float = 10.0,
    ) -> None:
        managed = _MANAGED_FLAGS.intersection(flags)
        if managed:
            raise ValueError(f"flags: {sorted(managed)} are set by SmtpSink itself")
        self._binary = find_binary("smtp-sink", "postfix")
        self.flags = tuple(flags)
        self.record = record
        self.backlog = backlog
        self.start_timeout = start_timeout
        self.host = LOOPBACK
        self.port = 0
        self.start_seconds: list[float] = []
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.directory / "smtp-sink.out"

    def start(self) -> None:
        """Start on a free port the first time, on the same port after `stop()`."""
        if self._process is not None:
            raise RuntimeError("the sink is already running")
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="pooledmail-sink-"))
            atexit.register(self.close)
            self._directory.chmod(0o755)
            (self._directory / "dump").mkdir()
            # Running as root, smtp-sink must switch to another user, who writes the dumps.
            shutil.chown(self._directory / "dump", "postfix", "postfix")
            attempts = _START_ATTEMPTS
        else:
            attempts = 1  # a restart must keep its port
        self._spawn_on_a_free_port(attempts, "in use")

    def stop(self) -> None:
        """Stop the sink (SIGTERM, then SIGKILL); `start()` brings it back on the same port."""
        self._kill()

    def close(self) -> None:
        self._kill()
        if self._directory is not None:
            atexit.unregister(self.close)
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def received(self) -> list[SinkMessage]:
        """The transactions captured so far (with `record=True`).

        Sorted by the capture files' modification times, which are only as fine as the kernel's
        clock tick: messages captured within one tick come in no defined order. Match them by
        Message-ID.
        """
        if not self.record:
            raise RuntimeError("received() needs SmtpSink(record=True)")
        # A transaction in progress has its capture file open; an aborted one's file is deleted.
        in_progress = self._open_files()
        dumps = sorted(
            (
                path
                for path in (self.directory / "dump").rglob("*")
                if path.is_file() and str(path) not in in_progress
            ),
            key=lambda path: path.stat().st_mtime_ns,
        )
        return [_parse_dump(path.read_bytes()) for path in dumps]

    def _open_files(self) -> set[str]:
        return set() if self._process is None else open_files(self._process.pid)

    def log_tail(self, lines: int = 60) -> str:
        if self._directory is None:
            return "(not started)"
        return tail(self.log_file, lines)

    def _spawn(self) -> None:
        began = time.monotonic()
        command = [self._binary, "-4"]
        if _running_as_root():
            command += ["-u", "postfix"]
        if self.record:
            command += ["-d", f"{self.directory}/dump/%Y%m%d%H%M%S."]
        command += [*self.flags, f"{self.host}:{self.port}", str(self.backlog)]
        with self.log_file.open("ab") as output:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        register(self, running=True)
        process = self._process
        wait_until(
            lambda: is_listening(self.port, pid=process.pid),
            timeout=self.start_timeout,
            what=f"smtp-sink on {self.host}:{self.port}",
            diagnose=lambda: self.log_tail(20),
            alive=lambda: process.poll() is None,
        )
        self.start_seconds.append(time.monotonic() - began)

    def _kill(self) -> None:
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


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _parse_dump(data: bytes) -> SinkMessage:
    # smtp-sink's own lines come first: X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args,
    # one X-Rcpt-Args per RCPT, then a three-line Received header, then the data as received.
    mail_arguments = ""
    recipients: list[str] = []
    lines = data.split(b"\n")
    index = 0
    while index < len(lines) and not lines[index].startswith(b"Received: "):
        name, _, value = lines[index].decode("utf-8", "surrogateescape").partition(": ")
        if name == "X-Mail-Args":
            mail_arguments = value
        elif name == "X-Rcpt-Args":
            recipients.append(_path_of(value))
        index += 1
    index += 3  # the Received header smtp-sink adds
    content = b"\n".join(lines[index:])
    content = content.removesuffix(b"\n")  # the empty line that ends each capture
    message_id = BytesHeaderParser(policy=SMTPUTF8).parsebytes(content)["Message-ID"]
    return SinkMessage(
        sender=_path_of(mail_arguments),
        recipients=tuple(recipients),
        mail_arguments=mail_arguments,
        message_id=str(message_id).strip() if message_id is not None else None,
        content=content,
    )


def _path_of(arguments: str) -> str:
    # "FROM:<a@example.com> BODY=8BITMIME" -> "a@example.com"
    start = arguments.find("<")
    end = arguments.find(">", start)
    return arguments[start + 1 : end] if start != -1 and end != -1 else arguments
