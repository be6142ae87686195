"""A private Exim 4 on 127.0.0.1 for interoperability tests: its own configuration, spool and logs.

    with EximServer(certificate_chain_pem=..., private_key_pem=...) as exim:
        ... send to 127.0.0.1:exim.port, STARTTLS, AUTH as exim.username / exim.password ...
        records = exim.stored()

Where the binary comes from: Debian's exim4-daemon-light conflicts with postfix (each is the
machine's MTA), so it is not installed but unpacked: `.ci/run` downloads the package and the
libraries it needs that the machine lacks, and `dpkg-deb -x` puts them in
/var/cache/pooledmail/exim4/<package version>/. An `exim4` or `exim` in PATH is used first, where
one is installed. The binary looks up its compiled-in user (Debian's is `Debian-exim`) before it
reads a configuration, so that user must exist (`.ci/run` creates it). Must run as root: the
daemon drops to that user for each SMTP session, and the spool is that user's.

Where the mail goes, and why: `queue_only` keeps every accepted message in the spool (no delivery
process is started on arrival), and no queue runner is ever started (the daemon runs without `-q`,
and its start-up log line, which must say "no queue runs", is checked), so nothing is ever
delivered. Should a delivery be attempted anyway, the only router defers every address, so
the message would stay queued, never leave the machine. Exim writes a message's spool files (the
`-D` body, then the `-H` envelope and headers, renamed into place) before it logs the arrival and
sends the final 250, so `stored()` (which reads the `-H` files of `spool/input/`) sees exactly what
was accepted from the moment the client reads the reply: sender, recipients, the AUTH identity Exim
recorded, and the headers, with the Message-ID among them.

Exim's own `plaintext` authenticators give AUTH PLAIN and LOGIN, offered only after STARTTLS,
for one fixed account: no SASL daemon. CHUNKING and PIPELINING are advertised to every client.
The daemon runs in the foreground (`-bdf`) as a child of this process; its session processes are
found by the configuration path on their command line, never by their name.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8
from pathlib import Path

from ._process import (
    LOOPBACK,
    MissingBinary,
    PrivateServer,
    ServerStartError,
    find_binary,
    is_listening,
    kill_and_reap,
    process_exists,
    register,
    tail,
    wait_until,
)

__all__ = ["EXIM_CACHE", "EximBinary", "EximServer", "SpooledMessage", "exim_binary"]

EXIM_CACHE = Path("/var/cache/pooledmail/exim4")
_PACKAGE = "exim4-daemon-light"
_START_ATTEMPTS = 3
# The ACLs a test may add (`acls=`), by the name of the `acl_smtp_` option that runs them.
_EXTRA_ACLS = ("mail", "predata", "data")
# The configuration writes these in one string; a name or password with a character the
# expansion language gives a meaning to would need escaping, so only plain ones are allowed.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class EximBinary:
    """The exim binary, the LD_LIBRARY_PATH its unpacked libraries need, and its version line."""

    path: str
    library_path: str
    version: str
    user: str


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One message in Exim's spool, as its `-H` file records it.

    `auth_id` is the identity the authenticator set (`-auth_id`), None for an unauthenticated
    session; `received_protocol` is Exim's name for how it came (`esmtpsa`: ESMTP over TLS with
    AUTH); `headers` are the header lines as stored, LF line ends, Exim's own Received first.
    """

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    message_id: str | None
    auth_id: str | None
    received_protocol: str | None
    headers: bytes
    body: bytes


@functools.cache
def exim_binary() -> EximBinary:
    """The exim binary to run and how; MissingBinary names what is missing."""
    library_path = ""
    try:
        path = find_binary("exim4", _PACKAGE)
    except MissingBinary:
        try:
            path = find_binary("exim", _PACKAGE)
        except MissingBinary:
            unpacked = sorted(EXIM_CACHE.glob("*/usr/sbin/exim4"))
            if not unpacked:
                program = f"exim4 (in PATH or unpacked under {EXIM_CACHE})"
                raise MissingBinary(program, _PACKAGE) from None
            path = str(unpacked[-1])
            root = unpacked[-1].parents[2]
            library_path = ":".join(str(lib) for lib in sorted(root.glob("usr/lib/*-linux-gnu*")))
    completed = subprocess.run(
        [path, "-C", "/dev/null", "-bV"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_environment(library_path),
        timeout=15,
        check=False,
    )
    output = completed.stdout.decode(errors="replace")
    errors = completed.stderr.decode(errors="replace").strip()
    if completed.returncode != 0:
        missing_user = re.search(r'failed to find uid for user name "([^"]+)"', errors)
        if missing_user is not None:
            raise MissingBinary(f"the user {missing_user[1]} that exim runs as", _PACKAGE)
        raise MissingBinary(f"a working exim ({path} -bV: {errors[:200]})", _PACKAGE)
    version = output.splitlines()[0] if output else "exim (version unknown)"
    user = _compiled_in_user(path, library_path)
    return EximBinary(path, library_path, version, user)


def _compiled_in_user(path: str, library_path: str) -> str:
    completed = subprocess.run(
        [path, "-C", "/dev/null", "-bP", "exim_user"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_environment(library_path),
        timeout=15,
        check=False,
    )
    _, _, user = completed.stdout.decode(errors="replace").partition("=")
    return user.strip() or "Debian-exim"


def _environment(library_path: str) -> dict[str, str]:
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
    if library_path:
        environment["LD_LIBRARY_PATH"] = library_path
    return environment


class EximServer(PrivateServer):
    """A private Exim daemon on 127.0.0.1:`port`; see the module docstring.

    Every session must STARTTLS before AUTH is offered, and AUTH before a recipient is accepted.
    `message_size_limit` is advertised in SIZE and enforced; `recipients_max` (0: no limit) makes
    Exim answer 452 to each RCPT beyond it; `options` are further main-section settings.

    For fault tests: `chunking=False` stops Exim advertising CHUNKING, so clients send DATA;
    `pipelining=False` stops it advertising PIPELINING, so a client waits for each reply (Exim
    holds the replies to a pipelined flight in its output buffer while an ACL delays).
    `acls` adds ACLs by the `acl_smtp_` name they are run for (`"mail"`, `"predata"`, `"data"`):
    each value is the ACL's statements, one per line (Exim's syntax), for example
    `{"data": "warn logwrite = at-data\\n  delay = 30s\\n  accept"}` to log a marker and hold
    the final reply, or `"deny message = refused"` to refuse the message after its data. The
    `data` ACL runs for DATA and for the last BDAT chunk alike, after the whole message arrived
    and before its `-H` file is written; `predata` only for the DATA command, before its 354.
    The main log carries each line's process id (`[pid]`), so a marker names the session
    process that wrote it; `session_pids()` lists the session processes.
    """

    name = "exim"

    def __init__(
        self,
        *,
        certificate_chain_pem: bytes,
        private_key_pem: bytes,
        username: str = "alice",
        password: str = "s3cret-pw",
        message_size_limit: int = 10_240_000,
        recipients_max: int = 0,
        options: Mapping[str, str] | None = None,
        chunking: bool = True,
        pipelining: bool = True,
        acls: Mapping[str, str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        for what, value in (("username", username), ("password", password)):
            if not _PLAIN_WORD.fullmatch(value):
                raise ValueError(f"{what} must match {_PLAIN_WORD.pattern}")
        unknown = set(acls or {}) - set(_EXTRA_ACLS)
        if unknown:
            raise ValueError(f"acls: unknown ACL {sorted(unknown)}; one of {_EXTRA_ACLS}")
        self.binary = exim_binary()
        self.username = username
        self.password = password
        self.message_size_limit = message_size_limit
        self.recipients_max = recipients_max
        self.host = LOOPBACK
        self.port = 0
        self.start_timeout = start_timeout
        self.start_seconds: list[float] = []
        self._certificate_chain_pem = certificate_chain_pem
        self._private_key_pem = private_key_pem
        self._options = dict(options or {})
        self.chunking = chunking
        self.pipelining = pipelining
        self._acls = dict(acls or {})
        self._directory: Path | None = None
        self._daemon: subprocess.Popen[bytes] | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.directory / "exim.conf"

    @property
    def spool_directory(self) -> Path:
        return self.directory / "spool"

    @property
    def log_file(self) -> Path:
        """Exim's main log: one line per arrival (`<=`), refusal and session event."""
        return self.directory / "log" / "mainlog"

    @property
    def panic_log_file(self) -> Path:
        return self.directory / "log" / "paniclog"

    @property
    def daemon_output(self) -> Path:
        return self.directory / "log" / "daemon.out"

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Create the instance on a free port and start it; ServerStartError after the deadline."""
        if self._directory is not None:
            raise RuntimeError("start() once")
        self._directory = Path(tempfile.mkdtemp(prefix="pooledmail-exim-"))
        atexit.register(self.close)
        try:
            self._write_files()
            self._spawn_on_a_free_port(_START_ATTEMPTS, "Address already in use")
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> None:
        began = time.monotonic()
        self._write_config()
        with self.daemon_output.open("ab") as output:
            self._daemon = subprocess.Popen(
                # -bdf: the daemon, in the foreground, so that it stays this process's child.
                [self.binary.path, "-C", str(self.config_file), "-bdf"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=_environment(self.binary.library_path),
                start_new_session=True,
            )
        register(self, running=True)
        daemon = self._daemon

        def ready() -> bool:
            # Exim logs its start after it has bound every listening socket.
            return is_listening(self.port, pid=daemon.pid) and "daemon started" in tail(
                self.log_file, 5
            )

        wait_until(
            ready,
            timeout=self.start_timeout,
            what=f"exim on {self.host}:{self.port}",
            diagnose=self._diagnose,
            alive=lambda: daemon.poll() is None,
        )
        started = [line for line in tail(self.log_file, 5).splitlines() if "daemon started" in line]
        if not started or "no queue runs" not in started[-1]:
            raise ServerStartError(f"exim would run the queue: {started}\n{self._diagnose()}")
        self.start_seconds.append(time.monotonic() - began)

    def stop(self) -> None:
        """SIGTERM to the daemon, then SIGKILL to whatever is left of the instance."""
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            with contextlib.suppress(ProcessLookupError):
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=5)
        if self._directory is not None:
            # Session processes outlive the daemon until their client leaves.
            kill_and_reap(self.instance_pids())
        register(self, running=False)

    def close(self) -> None:
        """Stop the instance if it runs, kill anything left of it, delete its directory."""
        if self._directory is None:
            return
        atexit.unregister(self.close)
        self.stop()
        shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None

    # -- what the server recorded ----------------------------------------------------------

    def stored(self) -> list[SpooledMessage]:
        """Every message in the spool, read from its `-H` file (with its `-D` body)."""
        input_directory = self.spool_directory / "input"
        if not input_directory.is_dir():
            return []
        messages = []
        for header_file in sorted(input_directory.glob("*-H")):
            queue_id = header_file.name[: -len("-H")]
            body_file = input_directory / f"{queue_id}-D"
            messages.append(_parse_spool(queue_id, header_file.read_bytes(), body_file))
        return messages

    def queue(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Exim's own listing of its queue (`exim -bpr`): message id -> (sender, recipients)."""
        completed = subprocess.run(
            [self.binary.path, "-C", str(self.config_file), "-bpr"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_environment(self.binary.library_path),
            timeout=15,
            check=True,
        )
        return _parse_queue_listing(completed.stdout.decode("utf-8", "surrogateescape"))

    def log_position(self) -> int:
        """The current size of the main log; pass it as `since` to see only what follows."""
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        """The main log from offset `since`, complete lines only (Exim may be writing one)."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return text[: text.rfind("\n") + 1]

    def log_tail(self, lines: int = 60) -> str:
        if self._directory is None:
            return "(not started)"
        panic = tail(self.panic_log_file, 10) if self.panic_log_file.exists() else ""
        return tail(self.log_file, lines) + (f"\n--- paniclog\n{panic}" if panic else "")

    # -- internals -------------------------------------------------------------------------

    def _diagnose(self) -> str:
        return (
            f"--- {self.log_file} (tail)\n{self.log_tail(40)}\n"
            f"--- exim -bdf output\n{tail(self.daemon_output, 20)}"
        )

    def instance_pids(self) -> list[int]:
        """The daemon and its session processes: all carry this instance's -C on their command
        line (they are forks of the daemon; Exim keeps its arguments)."""
        marker = str(self.config_file).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in arguments and process_exists(int(entry.name)):
                pids.append(int(entry.name))
        return pids

    def session_pids(self) -> list[int]:
        """This instance's SMTP session processes: every process of it but the daemon."""
        daemon = self._daemon
        return [pid for pid in self.instance_pids() if daemon is None or pid != daemon.pid]

    def _write_files(self) -> None:
        root = self.directory
        user = pwd.getpwnam(self.binary.user)
        # Session processes run as the Exim user: they must reach the spool and the logs.
        root.chmod(0o755)
        for name in ("spool", "log"):
            (root / name).mkdir(mode=0o750)
            os.chown(root / name, user.pw_uid, user.pw_gid)
        tls = root / "tls"
        tls.mkdir(mode=0o750)
        os.chown(tls, 0, user.pw_gid)
        for name, pem in (
            ("chain.pem", self._certificate_chain_pem),
            ("key.pem", self._private_key_pem),
        ):
            (tls / name).write_bytes(pem)
            (tls / name).chmod(0o640)
            os.chown(tls / name, 0, user.pw_gid)

    def _write_config(self) -> None:
        root = self.directory
        main: dict[str, str] = {
            "primary_hostname": "mx.pooledmail.test",
            "exim_user": self.binary.user,
            "spool_directory": str(root / "spool"),
            "log_file_path": str(root / "log" / "%slog"),
            "pid_file_path": str(root / "exim.pid"),
            "keep_environment": "LD_LIBRARY_PATH" if self.binary.library_path else "",
            "local_interfaces": f"<; {self.host}",
            "daemon_smtp_ports": str(self.port),
            "disable_ipv6": "true",
            # A port taken meanwhile must fail the start at once, not after retries.
            "daemon_startup_retries": "0",
            # Keep every message: no delivery on arrival (and no -q: no queue runner either).
            "queue_only": "true",
            # A test server answers at once: no reverse DNS, no ident callback.
            "host_lookup": "",
            "rfc1413_hosts": "",
            "message_size_limit": str(self.message_size_limit),
            "recipients_max": str(self.recipients_max),
            "pipelining_advertise_hosts": "*" if self.pipelining else "",
            "chunking_advertise_hosts": "*" if self.chunking else "",
            "tls_advertise_hosts": "*",
            "tls_certificate": str(root / "tls" / "chain.pem"),
            "tls_privatekey": str(root / "tls" / "key.pem"),
            "acl_smtp_rcpt": "acl_check_rcpt",
            # <= lines with the session's TLS, AUTH and the SMTP command that ended DATA/BDAT.
            # +pid: each line names the process that wrote it (a session's, for fault tests).
            "log_selector": (
                "+smtp_confirmation +tls_cipher +received_recipients +smtp_connection +pid"
            ),
        }
        for name in self._acls:
            main[f"acl_smtp_{name}"] = f"acl_check_{name}"
        main.update(self._options)
        text = "".join(f"{name} = {value}\n" for name, value in main.items())
        sections = _SECTIONS.replace("@USER@", self.username).replace("@PASSWORD@", self.password)
        extra = "".join(
            f"\nacl_check_{name}:\n"
            + "".join(f"  {line.strip()}\n" for line in statements.splitlines() if line.strip())
            for name, statements in self._acls.items()
        )
        text += sections.replace("\nbegin routers\n", extra + "\nbegin routers\n", 1)
        self.config_file.write_text(text)


# ACLs, a router that defers everything, no transport, and the two AUTH mechanisms. `$auth1`.. are
# the decoded AUTH fields: PLAIN gives authzid, authcid, password (RFC 4616); LOGIN gives the
# answers to the two prompts.
_SECTIONS = """
begin acl

acl_check_rcpt:
  accept authenticated = *
  deny message = authentication required

begin routers

held:
  driver = redirect
  data = :defer: held by the pooledmail test server

begin transports

begin authenticators

plain:
  driver = plaintext
  public_name = PLAIN
  server_advertise_condition = ${if def:tls_in_cipher}
  server_prompts = :
  server_condition = ${if and {{eq{$auth2}{@USER@}}{eq{$auth3}{@PASSWORD@}}}}
  server_set_id = $auth2

login:
  driver = plaintext
  public_name = LOGIN
  server_advertise_condition = ${if def:tls_in_cipher}
  server_prompts = <| Username: | Password:
  server_condition = ${if and {{eq{$auth1}{@USER@}}{eq{$auth2}{@PASSWORD@}}}}
  server_set_id = $auth1
"""


# "<age> <size> <message id> <sender>" (the sender in angle brackets, "<>" for none), then one
# indented line per recipient still to be delivered, then a blank line.
_QUEUE_ENTRY = re.compile(r"^\s*\S+\s+\S+\s+(?P<id>\S+)\s+<(?P<sender>[^>]*)>")


def _parse_queue_listing(listing: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    queue: dict[str, tuple[str, tuple[str, ...]]] = {}
    current: str | None = None
    sender = ""
    recipients: list[str] = []
    for line in [*listing.splitlines(), ""]:
        entry = _QUEUE_ENTRY.match(line)
        if entry is not None:
            current, sender, recipients = entry["id"], entry["sender"], []
        elif line.strip() and current is not None:
            recipients.append(line.strip())
        elif current is not None:
            queue[current] = (sender, tuple(recipients))
            current = None
    return queue


_HEADER_PREFIX = re.compile(rb"(\d{3,})(.) ")


def _parse_spool(queue_id: str, header_file: bytes, body_file: Path) -> SpooledMessage:
    """One `-H` file (Exim's specification, "Format of spool files").

    Line 1 names the file, line 2 the receiving user and ids, line 3 the envelope sender in angle
    brackets, line 4 the arrival time; then `-name value` option lines (`-auth_id`,
    `-received_protocol`, ...), the non-recipients tree (`XX` when empty), the recipient count,
    one recipient per line (with DSN data after a space, ending in `#n`), a blank line, and the
    headers, each prefixed by its length, a flag letter (`I` marks the Message-ID) and a space.
    """
    lines = header_file.split(b"\n")
    sender = lines[2].decode("utf-8", "surrogateescape").strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1]
    options: dict[str, str] = {}
    index = 4
    while lines[index].startswith(b"-"):
        name, _, value = lines[index].decode("utf-8", "surrogateescape").partition(" ")
        # Exim writes "--name" for a value that came from the network (tainted).
        options[name.lstrip("-")] = value
        index += 1
    index += 1  # the non-recipients tree: "XX" for a message received just now
    count = int(lines[index])
    index += 1
    recipients = []
    for line in lines[index : index + count]:
        text = line.decode("utf-8", "surrogateescape")
        recipients.append(text.split(" ", 1)[0] if re.search(r"#\d+$", text) else text)
    index += count
    if lines[index] != b"":
        raise ValueError(f"{queue_id}-H: no blank line after the recipients")
    section = b"\n".join(lines[index + 1 :])
    headers = []
    position = 0
    while position < len(section):
        prefix = _HEADER_PREFIX.match(section, position)
        if prefix is None:
            break
        start = prefix.end()
        length = int(prefix[1])
        # A header flagged "*" was removed (by an ACL or a rewrite); it is not in the message.
        if prefix[2] != b"*":
            headers.append(section[start : start + length])
        position = start + length
    header_bytes = b"".join(headers)
    parsed = BytesHeaderParser(policy=SMTPUTF8).parsebytes(header_bytes + b"\n")
    message_id = parsed["Message-ID"]
    body = body_file.read_bytes() if body_file.exists() else b""
    # The -D file starts with its own name on a line of its own.
    body = body.split(b"\n", 1)[1] if body.startswith(f"{queue_id}-D\n".encode()) else body
    return SpooledMessage(
        queue_id=queue_id,
        sender=sender,
        recipients=tuple(recipients),
        message_id=str(message_id).strip() if message_id is not None else None,
        auth_id=options.get("auth_id"),
        received_protocol=options.get("received_protocol"),
        headers=header_bytes,
        body=body,
    )
