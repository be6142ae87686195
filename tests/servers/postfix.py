"""A private Postfix instance on 127.0.0.1 for tests and benchmarks: its own smtpd, its own queue.

    with PostfixServer(certificate_chain_pem=..., private_key_pem=...) as postfix:
        ... send to 127.0.0.1:postfix.port, AUTH as postfix.username / postfix.password ...
        records = postfix.stored()

Everything lives in one temporary directory: config_directory (main.cf, master.cf), queue_directory
(with the pid files), data_directory, the Cyrus SASL configuration and sasldb, the TLS chain, and
the log file written by postlogd. The system instance (/etc/postfix, port 25) is never touched;
`meta_directory` stays at the packaged /etc/postfix, which Postfix only reads. Must run as root:
the master starts smtpd and the other daemons as the `postfix` user.

Where the mail goes, and why: every recipient triggers the access-map action HOLD
(`smtpd_recipient_restrictions = check_recipient_access static:HOLD`), so cleanup moves each
accepted message into the hold queue before it reports success to smtpd, which only then sends the
final 250. Nothing is ever delivered, and the queue file is the server's own record of exactly
what it accepted: present from the moment the client reads the 250, never changed afterwards (no
delivery agent touches it), kept across `postfix stop`. `stored()` reads those files with
Postfix's own `postcat`: envelope sender, recipients, the named attributes cleanup recorded (SASL
user, client), the SMTPUTF8 flag, headers and body. A pipe or file transport would write its
record later, asynchronously, after qmgr scheduled a delivery, so a test would have to guess how
long to wait; a discard transport keeps nothing. As a second safety net every transport is in
`defer_transports` (and master.cf runs no delivery agent): a message that ever escaped the hold
would wait in the deferred queue, never leave the machine.

The master runs as `postfix start-fg`, a child of this process, so that it is reaped and never
left as a zombie under a container's init. `postfix_stop()` and `postfix_start()` are Postfix's
own `postfix stop` and a new start of the same instance on the same port: smtpd processes are
killed, and idle client connections see a plain FIN.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from pathlib import Path

from ._process import (
    LOOPBACK,
    MissingBinary,
    PrivateServer,
    ServerStartError,
    find_binary,
    free_port,
    is_listening,
    kill_and_reap,
    process_exists,
    register,
    tail,
    wait_until,
)

__all__ = ["PostfixServer", "SessionSummary", "StoredMessage", "postfix_binaries"]

_START_ATTEMPTS = 3  # a free port can be taken by someone else before the master binds it


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message in the hold queue, as Postfix recorded it.

    `attributes` are the named attributes cleanup stored in the envelope (`sasl_username`,
    `sasl_method`, `client_address`, ...); `smtputf8_requested` is true when the client's MAIL FROM
    carried SMTPUTF8 (bit 0 of the SMTPUTF8 flags in the queue file's size record); `content` is
    the header and body as stored, lines ending in LF (Postfix stores lines, not CRLF).
    """

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    message_id: str | None
    attributes: Mapping[str, str]
    smtputf8_requested: bool
    content: bytes


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """smtpd's own count of the commands in one finished session, from its "disconnect" log line.

    Postfix writes `name=ok` when every such command succeeded, `name=ok/total` otherwise.
    """

    line: str
    succeeded: Mapping[str, int] = field(default_factory=dict)
    attempted: Mapping[str, int] = field(default_factory=dict)


def postfix_binaries() -> dict[str, str]:
    """Paths of the programs a private instance needs; MissingBinary names the package."""
    binaries = {name: find_binary(name, "postfix") for name in ("postfix", "postcat")}
    binaries["saslpasswd2"] = find_binary("saslpasswd2", "sasl2-bin")
    # libsasl2-modules ships the PLAIN and LOGIN mechanisms; without it AUTH silently vanishes.
    plugins = [*Path("/usr/lib").glob("*/sasl2/libplain.so*"), *Path("/usr/lib/sasl2").glob("*")]
    if not plugins:
        raise MissingBinary("the Cyrus SASL PLAIN plugin (libplain.so)", "libsasl2-modules")
    return binaries


# One line per service; chroot off everywhere (the instance has no chroot tree).
_MASTER_CF = """\
{listen} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

_REALM = "pooledmail.test"
_DISCONNECT = re.compile(r"smtpd\[\d+\]: disconnect from \S+ (?P<counts>.*)$")


class PostfixServer(PrivateServer):
    """A private Postfix whose smtpd listens on 127.0.0.1:`port`; see the module docstring.

    `require_tls`: STARTTLS is mandatory (`smtpd_tls_security_level = encrypt`), and AUTH is only
    offered after it. Otherwise STARTTLS is offered and AUTH is offered in plaintext too.
    `require_auth`: only authenticated clients may send (`permit_sasl_authenticated, reject`);
    otherwise anyone on loopback may, and AUTH still works. `users` are the SASL accounts
    (username -> password) in the instance's sasldb.
    """

    name = "postfix"

    def __init__(
        self,
        *,
        certificate_chain_pem: bytes,
        private_key_pem: bytes,
        require_tls: bool = True,
        require_auth: bool = True,
        users: Mapping[str, str] | None = None,
        message_size_limit: int = 10_240_000,
        main_cf: Mapping[str, str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self._binaries = postfix_binaries()
        self.users = dict(users) if users is not None else {"alice": "s3cret-pw"}
        self.require_tls = require_tls
        self.require_auth = require_auth
        self.host = LOOPBACK
        self.port = 0
        self.start_timeout = start_timeout
        self._certificate_chain_pem = certificate_chain_pem
        self._private_key_pem = private_key_pem
        self._message_size_limit = message_size_limit
        self._extra_main_cf = dict(main_cf or {})
        self._directory: Path | None = None
        self._master: subprocess.Popen[bytes] | None = None
        self._master_output: Path | None = None
        self.start_seconds: list[float] = []

    # -- paths -----------------------------------------------------------------------------

    @property
    def config_directory(self) -> Path:
        return self.directory / "etc"

    @property
    def queue_directory(self) -> Path:
        return self.directory / "spool"

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / "maillog"

    @property
    def username(self) -> str:
        return next(iter(self.users))

    @property
    def password(self) -> str:
        return self.users[self.username]

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Create the instance on a free port and start it; ServerStartError after the deadline."""
        if self._directory is not None:
            raise RuntimeError("start() once; use postfix_start() to start it again")
        self._directory = Path(tempfile.mkdtemp(prefix="pooledmail-postfix-"))
        atexit.register(self.close)
        try:
            # The postfix user must reach the queue, data and SASL directories below this one.
            self._directory.chmod(0o755)
            self._write_files()
            _recreate_layout(self.directory)
            for attempt in range(1, _START_ATTEMPTS + 1):
                self.port = free_port()
                self._write_master_cf()
                try:
                    self.postfix_start()
                    break
                except ServerStartError:
                    bind_failed = "Address already in use" in self.log_tail(20)
                    self._stop_processes()
                    if attempt == _START_ATTEMPTS or not bind_failed:
                        raise
            _learn_layout(self.directory)
        except BaseException:
            self.close()
            raise

    def postfix_start(self) -> None:
        """`postfix start-fg` of this instance, on the same port; returns once smtpd listens."""
        if self._master is not None and self._master.poll() is None:
            raise RuntimeError("the instance is already running")
        began = time.monotonic()
        log_position = self.log_position()
        self._master_output = self.directory / "log" / "postfix-command.out"
        with self._master_output.open("ab") as output:
            self._master = subprocess.Popen(
                [self._binaries["postfix"], "-c", str(self.config_directory), "start-fg"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                # A Ctrl-C meant for the test run must not kill the shell that waits for the
                # master (the master has a session of its own already); close() stops both.
                start_new_session=True,
            )
        register(self, running=True)
        master = self._master

        def started() -> bool:
            return is_listening(self.port) and "daemon started" in self.log_text(log_position)

        wait_until(
            started,
            timeout=self.start_timeout,
            what=f"postfix on {self.host}:{self.port}",
            diagnose=self._diagnose,
            alive=lambda: master.poll() is None,
        )
        self.start_seconds.append(time.monotonic() - began)

    def restart(self) -> None:
        """`postfix stop`, then a start of the same instance on the same port."""
        self.postfix_stop()
        self.postfix_start()

    def postfix_stop(self) -> None:
        """`postfix stop`: the master and every smtpd exit; returns once the port is free."""
        if self._master is None or self._master.poll() is not None:
            raise RuntimeError("the instance is not running")
        # `postfix stop` signals the master, then polls once a second, up to 5 s, for it to exit.
        stopped = subprocess.run(
            [self._binaries["postfix"], "-c", str(self.config_directory), "stop"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            timeout=15,
            check=False,
        )
        if stopped.returncode != 0:
            output = stopped.stdout.decode(errors="replace")
            raise ServerStartError(f"postfix stop failed: {output}\n{self._diagnose()}")
        self._master.wait(timeout=15)
        self._master = None
        # The master is gone; its children may take a moment to exit and release the socket.
        wait_until(
            lambda: not self._instance_pids() and not is_listening(self.port),
            timeout=10,
            what="postfix processes to exit",
            diagnose=self._diagnose,
        )
        register(self, running=False)

    def close(self) -> None:
        """Stop the instance if it runs, kill anything left of it, delete its directory."""
        if self._directory is None:
            return
        atexit.unregister(self.close)
        with contextlib.suppress(Exception):
            if self._master is not None and self._master.poll() is None:
                self.postfix_stop()
        self._stop_processes()
        register(self, running=False)
        shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None

    # -- what the server recorded ----------------------------------------------------------

    def stored(self) -> list[StoredMessage]:
        """Every message in the hold queue, read from its queue file with `postcat`."""
        hold = self.queue_directory / "hold"
        files = sorted(path for path in hold.iterdir() if path.is_file())
        if not files:
            return []
        completed = subprocess.run(
            [self._binaries["postcat"], "-c", str(self.config_directory), "-e", "-h", "-b"]
            + [str(path) for path in files],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._environment(),
            timeout=30,
            check=True,
        )
        return _parse_postcat(completed.stdout)

    def sessions(self, since: int = 0) -> list[SessionSummary]:
        """smtpd's command counts for each session that ended after log offset `since`."""
        summaries = []
        text = self.log_text(since)
        # postlogd may be writing the last line right now: read complete lines only.
        complete = text[: text.rfind("\n") + 1]
        for line in complete.splitlines():
            match = _DISCONNECT.search(line)
            if match is None:
                continue
            succeeded: dict[str, int] = {}
            attempted: dict[str, int] = {}
            for item in match["counts"].split():
                name, _, counts = item.partition("=")
                ok, _, total = counts.partition("/")
                succeeded[name] = int(ok)
                attempted[name] = int(total or ok)
            summaries.append(SessionSummary(line, succeeded, attempted))
        return summaries

    def wait_for_sessions(
        self,
        until: int | Callable[[list[SessionSummary]], bool],
        *,
        since: int = 0,
        timeout: float = 10.0,
    ) -> list[SessionSummary]:
        """The summaries after `since` once `until` holds: a number of sessions, or a predicate.

        postlogd writes the log asynchronously, so a session the client has closed may take a
        moment to appear.
        """
        done: Callable[[list[SessionSummary]], bool]
        if isinstance(until, int):
            count = until
            done, what = (lambda sessions: len(sessions) >= count), f"{count} session summaries"
        else:
            done, what = until, "the session summaries expected"
        wait_until(
            lambda: done(self.sessions(since)),
            timeout=timeout,
            what=what,
            diagnose=self._diagnose,
        )
        return self.sessions(since)

    def log_position(self) -> int:
        """The current size of the log file; pass it as `since` to see only what follows."""
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        if self._directory is None:
            return "(not started)"
        return tail(self.log_file, lines)

    # -- internals -------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "MAIL_CONFIG": str(self.config_directory),
            "LANG": "C",
        }

    def _diagnose(self) -> str:
        output = tail(self._master_output, 20) if self._master_output else ""
        return f"--- {self.log_file} (tail)\n{self.log_tail(40)}\n--- postfix command\n{output}"

    def _instance_pids(self) -> list[int]:
        """Processes of this instance: every Postfix daemon inherits MAIL_CONFIG from the master."""
        marker = f"MAIL_CONFIG={self.config_directory}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0") and process_exists(int(entry.name)):
                pids.append(int(entry.name))
        return pids

    def _stop_processes(self) -> None:
        if self._master is not None:
            with contextlib.suppress(ProcessLookupError):
                self._master.kill()
        kill_and_reap(self._instance_pids())
        if self._master is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._master.wait(timeout=5)
            self._master = None

    def _write_files(self) -> None:
        root = self.directory
        for name in ("etc", "spool", "data", "log", "tls", "sasl"):
            (root / name).mkdir(mode=0o755)
        shutil.chown(root / "data", "postfix", "postfix")
        (root / "data").chmod(0o700)
        tls_chain = root / "tls" / "server.pem"
        # Key first, then the certificate chain: the order smtpd_tls_chain_files expects.
        tls_chain.write_bytes(self._private_key_pem + b"\n" + self._certificate_chain_pem)
        tls_chain.chmod(0o600)

        # Debian's Postfix looks for the Cyrus configuration in $config_directory/sasl.
        sasl_config = root / "etc" / "sasl"
        sasl_config.mkdir(mode=0o755)
        sasldb = root / "sasl" / "sasldb2"
        (sasl_config / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            f"sasldb_path: {sasldb}\n"
            "mech_list: PLAIN LOGIN CRAM-MD5\n"
        )
        for username, password in self.users.items():
            subprocess.run(
                [
                    self._binaries["saslpasswd2"],
                    "-p",
                    "-c",
                    "-f",
                    str(sasldb),
                    "-u",
                    _REALM,
                    username,
                ],
                input=password.encode(),
                capture_output=True,
                timeout=10,
                check=True,
            )
        # smtpd opens the sasldb (and may lock it) as the postfix user, after dropping root.
        for path in (root / "sasl", *(root / "sasl").iterdir()):
            shutil.chown(path, "postfix", "postfix")

        log_file = self.log_file
        main_cf: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(root / "spool"),
            "data_directory": str(root / "data"),
            "myhostname": "mx.pooledmail.test",
            "mydomain": _REALM,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "maillog_file": str(log_file),
            "maillog_file_prefixes": str(root),
            "smtpd_banner": "$myhostname ESMTP",
            "enable_long_queue_ids": "yes",
            "smtputf8_enable": "yes",
            "message_size_limit": str(self._message_size_limit),
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            # A test server answers at once: no tarpit after errors, no reverse DNS.
            "smtpd_error_sleep_time": "0",
            "smtpd_peername_lookup": "no",
            # Nothing ever leaves: everything is held, and a message that escaped would wait.
            "smtpd_recipient_restrictions": "check_recipient_access static:HOLD",
            "smtpd_relay_restrictions": (
                # Postfix refuses to start on a list that could relay for anyone (it wants a
                # reject at the end): without required AUTH, loopback is the network it permits.
                "permit_sasl_authenticated, reject"
                if self.require_auth
                else "permit_mynetworks, permit_sasl_authenticated, reject"
            ),
            "defer_transports": "smtp, relay, local, virtual",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": str(sasl_config),
            "smtpd_sasl_local_domain": _REALM,
            "smtpd_sasl_security_options": "noanonymous",
            "smtpd_tls_chain_files": str(tls_chain),
            "smtpd_tls_security_level": "encrypt" if self.require_tls else "may",
            "smtpd_tls_auth_only": "yes" if self.require_tls else "no",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
        }
        main_cf.update(self._extra_main_cf)
        _write_settled(
            root / "etc" / "main.cf",
            "".join(f"{name} = {value}\n" for name, value in main_cf.items()),
        )

    def _write_master_cf(self) -> None:
        _write_settled(
            self.config_directory / "master.cf",
            _MASTER_CF.format(listen=f"{self.host}:{self.port}"),
        )


def _write_settled(path: Path, text: str) -> None:
    """Write a configuration file dated a minute ago.

    Postfix programs wait, in 300 ms steps, until main.cf is a couple of seconds old, in case an
    editor is still writing it; a file dated in the past is read at once (2 s saved per start).
    """
    path.write_text(text)
    a_minute_ago = time.time() - 60
    os.utime(path, (a_minute_ago, a_minute_ago))


# The queue and data directories that `post-install create-missing` made for the first instance of
# this process: (relative path, mode, uid, gid). Creating them takes it about 2 s of shell and
# postconf runs; later instances get the same tree from here in milliseconds, and post-install
# then finds nothing missing.
_layout: list[tuple[str, int, int, int]] = []
_LAYOUT_ROOTS = ("spool", "data")


def _learn_layout(root: Path) -> None:
    if _layout:
        return
    for top in _LAYOUT_ROOTS:
        for directory in sorted([root / top, *(root / top).rglob("*")]):
            if directory.is_dir() and not directory.is_symlink():
                info = directory.stat()
                relative = str(directory.relative_to(root))
                _layout.append((relative, info.st_mode & 0o7777, info.st_uid, info.st_gid))


def _recreate_layout(root: Path) -> None:
    for relative, mode, uid, gid in _layout:
        directory = root / relative
        directory.mkdir(exist_ok=True)
        os.chown(directory, uid, gid)
        directory.chmod(mode)


_SECTION = re.compile(rb"^\*\*\* (?P<kind>[A-Z ]+?) (?P<name>\S+) \*\*\*$")


def _parse_postcat(output: bytes) -> list[StoredMessage]:
    """Split `postcat -e -h -b` output into one record per queue file.

    postcat prints, per file, "*** ENVELOPE RECORDS <file> ***" then "name: value" lines, then
    "*** MESSAGE CONTENTS <file> ***" then the message, "*** HEADER EXTRACTED <file> ***" with
    more envelope lines, and "*** MESSAGE FILE END <file> ***".
    """
    messages = []
    current: dict[str, object] = {}
    section = b""
    for line in output.split(b"\n"):
        header = _SECTION.match(line)
        if header is not None:
            section = header["kind"]
            if section == b"ENVELOPE RECORDS":
                current = {"file": header["name"].decode(), "rcpt": [], "attr": {}, "body": []}
            elif section == b"MESSAGE FILE END":
                messages.append(_record(current))
            continue
        if section == b"MESSAGE CONTENTS":
            body = current["body"]
            assert isinstance(body, list)
            body.append(line)
            continue
        name, _, value = line.decode("utf-8", "surrogateescape").partition(": ")
        if name == "sender":
            current["sender"] = value
        elif name == "message_size":
            # size, data offset, recipient count, queue manager options, content length, and
            # (Postfix 3.0 and later) the SMTPUTF8 flags.
            fields = value.split()
            current["smtputf8"] = len(fields) >= 6 and int(fields[5]) & 1 == 1
        elif name == "recipient":
            recipients = current["rcpt"]
            assert isinstance(recipients, list)
            recipients.append(value)
        elif name == "named_attribute":
            key, _, attribute = value.partition("=")
            attributes = current["attr"]
            assert isinstance(attributes, dict)
            attributes[key] = attribute
    return messages


def _record(fields: dict[str, object]) -> StoredMessage:
    body = fields["body"]
    assert isinstance(body, list)
    content = b"".join(line + b"\n" for line in body)
    headers = BytesHeaderParser(policy=SMTPUTF8).parsebytes(content)
    message_id = headers["Message-ID"]
    recipients = fields["rcpt"]
    attributes = fields["attr"]
    assert isinstance(recipients, list)
    assert isinstance(attributes, dict)
    return StoredMessage(
        queue_id=Path(str(fields["file"])).name,
        sender=str(fields.get("sender", "")),
        recipients=tuple(recipients),
        message_id=str(message_id).strip() if message_id is not None else None,
        attributes=attributes,
        smtputf8_requested=bool(fields.get("smtputf8", False)),
        content=content,
    )
