"""The in-process senders of `bench/harness.py`; each run happens alone in a fresh child process.

The harness forks a child per run (from a parent that imported the libraries but never sends),
and the child runs one sender once and returns a `Measurement`. A fresh process per run means no
sender inherits another's heap, caches, threads or event-loop state, and its memory can be
measured on its own.

Every sender works the same way: open its connections (eight, say) and send `warmup` messages
through each of them, untimed, so that the timed part is the steady state (for the senders that
connect per message, the warm-up is one message per worker, which only takes first-call costs out);
then `messages` messages split evenly over `concurrency` workers, timed. Messages are raw bytes of
`MESSAGE_SIZE` with one recipient, except for `send(EmailMessage)` and its stdlib reference, which
serialize an `EmailMessage` of about the same size for every message.

What a `Measurement` holds, and how it is measured:

- `wall`: seconds of the timed part (`time.perf_counter`).
- `cpu`: this process's CPU seconds in the timed part (`time.process_time`: user + system, all
  threads).
- `peak_rss_growth_kib`: the peak resident set size during the timed part minus the resident set
  size at its start. The peak is Linux's VmHWM, reset to the current size just before the timed
  part by writing 5 to /proc/self/clear_refs; where that is refused, ru_maxrss is used instead
  and `memory_method` says so (a lifetime peak, which may include the warm-up).
- `client_connections`: the connections the sender says it opened (the pool's own
  `created_total` for pooledmail); the harness also counts them at the server.
"""

from __future__ import annotations

import asyncio
import base64
import re
import resource
import smtplib
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import Any, TypeVar

__all__ = [
    "MESSAGE_SIZE",
    "RAW_MESSAGE",
    "RECIPIENTS",
    "SENDER",
    "SENDERS",
    "Measurement",
    "SenderSpec",
    "email_message",
    "run_sender",
]

SENDER = "sender@bench.test"
RECIPIENTS = ("rcpt@bench.test",)
LOCAL_HOSTNAME = "client.bench.test"
MESSAGE_SIZE = 1024


def _raw_message(size: int) -> bytes:
    head = (
        b"From: sender@bench.test\r\nTo: rcpt@bench.test\r\nSubject: bench\r\n"
        b"Message-ID: <raw@bench.test>\r\n\r\n"
    )
    lines = []
    remaining = size - len(head)
    while remaining > 0:
        # Lines of 72 bytes with their CRLF; the last one takes what is left (at least "x\r\n").
        length = 72 if remaining >= 72 + 3 or remaining == 72 else remaining
        lines.append(b"x" * (length - 2) + b"\r\n")
        remaining -= length
    data = head + b"".join(lines)
    assert len(data) == size
    return data


RAW_MESSAGE = _raw_message(MESSAGE_SIZE)


def email_message() -> EmailMessage:
    """An EmailMessage of about MESSAGE_SIZE bytes once serialized, with Date and Message-ID, so
    that `send()` adds nothing and does exactly what `as_bytes(policy=SMTP)` does."""
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = RECIPIENTS[0]
    message["Subject"] = "bench"
    message["Date"] = "Mon, 23 Nov 2026 13:46:38 +0000"
    message["Message-ID"] = "<email@bench.test>"
    line = "x" * 70 + "\n"  # 72 bytes once serialized with CRLF
    message.set_content(line)
    lines, rest = divmod(MESSAGE_SIZE - len(message.as_bytes(policy=SMTP_POLICY)), 72)
    message.set_content(line * (1 + lines) + ("x" * (rest - 2) + "\n" if rest > 2 else ""))
    return message


@dataclass(frozen=True)
class SenderSpec:
    """What one child run does."""

    sender: str
    host: str
    port: int
    messages: int
    concurrency: int
    warmup: int
    tls: str = "none"  # "none" or "starttls"
    cafile: str | None = None
    username: str | None = None
    password: str | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls == "none":
            return None
        return ssl.create_default_context(cafile=self.cafile)


@dataclass(frozen=True)
class Measurement:
    wall: float
    cpu: float
    messages: int
    warmup_messages: int
    client_connections: int
    peak_rss_growth_kib: int
    memory_method: str
    message_bytes: int
    # Timed messages a reply refused (any reply of the transaction other than 250): the server
    # did not store them. Only the bare CHUNKING loop counts them; the others raise instead.
    failed_messages: int = 0


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


class Meter:
    """Wall clock, process CPU and peak RSS growth of the timed part."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.rss_start = 0
        self.peak_growth = 0
        self.method = ""

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # reset VmHWM to the current RSS (Linux 4.0+)
            self.method = "VmHWM growth (reset via clear_refs)"
        except OSError:
            self.method = "ru_maxrss growth (lifetime peak)"
        self.rss_start = _status_kib("VmRSS")
        self.cpu = time.process_time()
        self.wall = time.perf_counter()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        if self.method.startswith("VmHWM"):
            peak = _status_kib("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_growth = max(0, peak - self.rss_start)

    def measurement(
        self,
        spec: SenderSpec,
        warmup_messages: int,
        connections: int,
        message_bytes: int,
        failed_messages: int = 0,
    ) -> Measurement:
        return Measurement(
            wall=self.wall,
            cpu=self.cpu,
            messages=spec.messages,
            warmup_messages=warmup_messages,
            client_connections=connections,
            peak_rss_growth_kib=self.peak_growth,
            memory_method=self.method,
            message_bytes=message_bytes,
            failed_messages=failed_messages,
        )


# -- pooledmail --------------------------------------------------------------------------------


async def _pooledmail(spec: SenderSpec, how: str) -> Measurement:
    import anyio
    from pooledmail_anyio import Host, PoolConfig, SMTPPool

    host = Host(
        spec.host,
        spec.port,
        tls=spec.tls,
        username=spec.username,
        password=spec.password,
    )
    # Connection for connection against the reused clients: no planned retirements.
    config = PoolConfig(
        [host],
        max_size=spec.concurrency,
        max_messages_per_connection=None,
        max_connection_age=None,
    )
    message = email_message()
    meter = Meter()
    async with SMTPPool(config, ssl_context=spec.ssl_context()) as pool:
        send_one: Callable[[], Awaitable[object]]
        if how == "send_raw":
            message_bytes = len(RAW_MESSAGE)

            def send_one() -> Awaitable[object]:
                return pool.send_raw(RAW_MESSAGE, sender=SENDER, recipients=RECIPIENTS)

        elif how == "send":
            message_bytes = len(message.as_bytes(policy=SMTP_POLICY))

            def send_one() -> Awaitable[object]:
                return pool.send(message)

        else:  # the stdlib reference for send(): serialize, then the raw path
            message_bytes = len(message.as_bytes(policy=SMTP_POLICY))

            def send_one() -> Awaitable[object]:
                data = message.as_bytes(policy=SMTP_POLICY)
                return pool.send_raw(data, sender=SENDER, recipients=RECIPIENTS)

        async def worker(count: int) -> None:
            for _ in range(count):
                await send_one()

        async def run_workers(counts: list[int]) -> None:
            async with anyio.create_task_group() as task_group:
                for count in counts:
                    task_group.start_soon(worker, count)

        await run_workers([spec.warmup] * spec.concurrency)
        meter.start()
        await run_workers(split(spec.messages, spec.concurrency))
        meter.stop()
        created = pool.statistics().created_total
    return meter.measurement(spec, spec.warmup * spec.concurrency, created, message_bytes)


def _run_pooledmail(backend: str, how: str) -> Callable[[SenderSpec], Measurement]:
    def run(spec: SenderSpec) -> Measurement:
        import anyio

        return anyio.run(_pooledmail, spec, how, backend=backend)

    return run


# -- aiosmtplib (asyncio only) -----------------------------------------------------------------


def _aiosmtplib_options(spec: SenderSpec) -> dict[str, Any]:
    return {
        "hostname": spec.host,
        "port": spec.port,
        "local_hostname": LOCAL_HOSTNAME,
        "start_tls": spec.tls == "starttls",
        "tls_context": spec.ssl_context(),
        "username": spec.username,
        "password": spec.password,
    }


async def _aiosmtplib_reused(spec: SenderSpec) -> Measurement:
    import aiosmtplib

    # One client per worker, connected (and, with credentials, logged in) before the clock runs.
    clients = [aiosmtplib.SMTP(**_aiosmtplib_options(spec)) for _ in range(spec.concurrency)]
    await asyncio.gather(*(client.connect() for client in clients))

    async def worker(client: aiosmtplib.SMTP, count: int) -> None:
        for _ in range(count):
            await client.sendmail(SENDER, RECIPIENTS, RAW_MESSAGE)

    await asyncio.gather(*(worker(client, spec.warmup) for client in clients))
    meter = Meter()
    meter.start()
    counts = split(spec.messages, spec.concurrency)
    await asyncio.gather(*(worker(c, n) for c, n in zip(clients, counts, strict=True)))
    meter.stop()
    await asyncio.gather(*(client.quit() for client in clients))
    return meter.measurement(
        spec, spec.warmup * spec.concurrency, spec.concurrency, len(RAW_MESSAGE)
    )


async def _aiosmtplib_per_message(spec: SenderSpec) -> Measurement:
    import aiosmtplib

    options = _aiosmtplib_options(spec)
    connections = 0

    async def worker(count: int) -> None:
        nonlocal connections
        for _ in range(count):
            connections += 1
            await aiosmtplib.send(
                RAW_MESSAGE, sender=SENDER, recipients=list(RECIPIENTS), **options
            )

    # One message per worker first: first-call costs (imports, TLS context) are not timed.
    await asyncio.gather(*(worker(1) for _ in range(spec.concurrency)))
    meter = Meter()
    meter.start()
    await asyncio.gather(*(worker(n) for n in split(spec.messages, spec.concurrency)))
    meter.stop()
    return meter.measurement(spec, spec.concurrency, connections, len(RAW_MESSAGE))


# -- smtplib in threads ------------------------------------------------------------------------


def _smtplib_connect(spec: SenderSpec) -> smtplib.SMTP:
    client = smtplib.SMTP(spec.host, spec.port, local_hostname=LOCAL_HOSTNAME, timeout=60)
    if spec.tls == "starttls":
        client.starttls(context=spec.ssl_context())
    if spec.username is not None and spec.password is not None:
        client.login(spec.username, spec.password)
    return client


def _smtplib_threads(spec: SenderSpec, per_message: bool) -> Measurement:
    meter = Meter()
    # Every worker is connected and warmed up before the first barrier, whose action starts the
    # clock; the second one stops it once the last worker is done, before anyone says QUIT.
    started = threading.Barrier(spec.concurrency, action=meter.start)
    finished = threading.Barrier(spec.concurrency, action=meter.stop)
    errors: list[BaseException] = []
    connections = [0] * spec.concurrency

    def send_alone(index: int) -> None:
        connections[index] += 1
        with _smtplib_connect(spec) as client:
            client.sendmail(SENDER, list(RECIPIENTS), RAW_MESSAGE)

    def worker(index: int, count: int) -> None:
        try:
            if per_message:
                send_alone(index)
                started.wait()
                for _ in range(count):
                    send_alone(index)
                finished.wait()
            else:
                connections[index] += 1
                with _smtplib_connect(spec) as client:
                    for _ in range(spec.warmup):
                        client.sendmail(SENDER, list(RECIPIENTS), RAW_MESSAGE)
                    started.wait()
                    for _ in range(count):
                        client.sendmail(SENDER, list(RECIPIENTS), RAW_MESSAGE)
                    finished.wait()
        except BaseException as error:
            errors.append(error)
            started.abort()
            finished.abort()

    threads = [
        threading.Thread(target=worker, args=(index, count))
        for index, count in enumerate(split(spec.messages, spec.concurrency))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    warmup = spec.concurrency if per_message else spec.warmup * spec.concurrency
    return meter.measurement(spec, warmup, sum(connections), len(RAW_MESSAGE))


# -- the bare pipelined loops: the floor for a driver's own overhead ---------------------------

ENVELOPE_FLIGHT = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENTS[0]}>\r\nDATA\r\n".encode("ascii")
DATA_FLIGHT = RAW_MESSAGE + b".\r\n"  # RAW_MESSAGE has no line starting with a dot


class BareSession:
    """One connection that knows only the happy path: MAIL, RCPT and DATA in one write, then the
    body and its terminator in one write (RFC 2920 pipelining). Replies are counted, not parsed:
    what is left is the cost of the backend's streams and of the task switches."""

    def __init__(
        self, write: Callable[[bytes], Awaitable[None]], read: Callable[[], Awaitable[bytes]]
    ) -> None:
        self._write = write
        self._read = read

    async def _await_final_replies(self, count: int) -> list[bytes]:
        """The final lines of the next `count` replies (the other lines are dropped)."""
        received = b""
        while True:
            data = await self._read()
            if not data:
                raise ConnectionError("the server closed the connection")
            received += data
            # A final reply line is the code alone or the code and a space (RFC 5321 §4.2); the
            # last part of the split is an incomplete line or empty.
            lines = received.split(b"\r\n")[:-1]
            finals = [line for line in lines if len(line) == 3 or line[3:4] == b" "]
            if len(finals) >= count:
                return finals

    async def greet(self) -> None:
        await self._await_final_replies(1)
        await self._write(f"EHLO {LOCAL_HOSTNAME}\r\n".encode("ascii"))
        await self._await_final_replies(1)

    async def transact(self, count: int) -> None:
        for _ in range(count):
            await self._write(ENVELOPE_FLIGHT)
            await self._await_final_replies(3)
            await self._write(DATA_FLIGHT)
            await self._await_final_replies(1)

    async def quit(self) -> None:
        await self._write(b"QUIT\r\n")
        await self._await_final_replies(1)


_Session = TypeVar("_Session", bound=BareSession)
_Write = Callable[[bytes], Awaitable[None]]
_Read = Callable[[], Awaitable[bytes]]


async def _asyncio_stream(
    spec: SenderSpec, writers: list[asyncio.StreamWriter]
) -> tuple[_Write, _Read, asyncio.StreamWriter]:
    """A connection over plain asyncio streams, as a bare session's write and read."""
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    writers.append(writer)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    return write, lambda: reader.read(65536), writer


async def _timed_asyncio_sessions(
    spec: SenderSpec,
    open_session: Callable[[list[asyncio.StreamWriter]], Awaitable[_Session]],
    transact: Callable[[_Session, int], Awaitable[None]],
) -> tuple[Meter, list[_Session]]:
    """Open and warm `spec.concurrency` sessions, time `spec.messages` split over them, then QUIT
    and close each."""
    writers: list[asyncio.StreamWriter] = []
    sessions = await asyncio.gather(*(open_session(writers) for _ in range(spec.concurrency)))
    meter = Meter()
    meter.start()
    counts = split(spec.messages, spec.concurrency)
    await asyncio.gather(*(transact(s, n) for s, n in zip(sessions, counts, strict=True)))
    meter.stop()
    await asyncio.gather(*(session.quit() for session in sessions))
    for writer in writers:
        writer.close()
    return meter, sessions


async def _bare_asyncio(spec: SenderSpec) -> Measurement:
    async def open_session(writers: list[asyncio.StreamWriter]) -> BareSession:
        write, read, _ = await _asyncio_stream(spec, writers)
        session = BareSession(write, read)
        await session.greet()
        await session.transact(spec.warmup)
        return session

    meter, _ = await _timed_asyncio_sessions(spec, open_session, BareSession.transact)
    return meter.measurement(
        spec, spec.warmup * spec.concurrency, spec.concurrency, len(RAW_MESSAGE)
    )


# -- the bare CHUNKING loop: the floor for any client through a delay --------------------------

# MAIL, RCPT and `BDAT <size> LAST` with the body, in one write: three replies, one round trip
# (RFC 2920 §3.1, RFC 3030 §4.2: the chunk follows its command line, and BDAT may be pipelined).
_CHUNKED_COMMANDS = (
    f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENTS[0]}>\r\nBDAT {len(RAW_MESSAGE)} LAST\r\n"
)
CHUNKED_TRANSACTION = _CHUNKED_COMMANDS.encode("ascii") + RAW_MESSAGE
REPLIES_PER_TRANSACTION = 3
_LAST_LINE_FINAL = re.compile(rb"(^|\r\n)\d{3}( [^\r\n]*)?\r\n$")


class SetupRefused(Exception):
    """A reply before the first transaction was not the one the bare loop needs."""


class BareChunkingSession(BareSession):
    """One connection to a server that offers CHUNKING (and here STARTTLS and AUTH PLAIN), with
    nothing but the happy path: a transaction is one write, and its three replies are read and
    checked, so that a message costs its connection one round trip and next to no client work.
    With `in_flight` above 1, that many transactions go out in one write and their replies are
    read together (RFC 2920 §3.1 lets a client send the next MAIL before the last reply of the
    transaction before it)."""

    def __init__(
        self,
        write: Callable[[bytes], Awaitable[None]],
        read: Callable[[], Awaitable[bytes]],
        in_flight: int,
    ) -> None:
        super().__init__(write, read)
        if in_flight < 1:
            raise ValueError("in_flight: must be at least 1")
        self._in_flight = in_flight
        self.failed = 0

    async def _expect(self, command: bytes, code: bytes) -> None:
        await self._write(command)
        (final,) = await self._await_final_replies(1)
        if not final.startswith(code):
            # The verb and the code only: an AUTH line carries the password.
            verb = command.split(maxsplit=1)[0].decode("ascii")
            raise SetupRefused(f"{verb} answered {final[:3]!r}")

    async def _ehlo(self) -> bytes:
        """EHLO; the whole reply, whose lines name what the server offers."""
        await self._write(f"EHLO {LOCAL_HOSTNAME}\r\n".encode("ascii"))
        received = b""
        while not _LAST_LINE_FINAL.search(received):
            data = await self._read()
            if not data:
                raise ConnectionError("the server closed the connection")
            received += data
        if not received.startswith(b"250"):
            raise SetupRefused(f"EHLO answered {received[:3]!r}")
        return received

    async def open(
        self,
        start_tls: Callable[[], Awaitable[None]] | None,
        username: str | None,
        password: str | None,
    ) -> None:
        """From the greeting to a session ready for mail: EHLO, STARTTLS and EHLO again (RFC 3207
        §4.2: what was learnt before TLS is forgotten), AUTH PLAIN (RFC 4616)."""
        (greeting,) = await self._await_final_replies(1)
        if not greeting.startswith(b"220"):
            raise SetupRefused(f"the greeting was {greeting[:3]!r}")
        offered = await self._ehlo()
        if start_tls is not None:
            await self._expect(b"STARTTLS\r\n", b"220")
            await start_tls()
            offered = await self._ehlo()
        # Every write carries MAIL, RCPT and BDAT together: PIPELINING (RFC 2920) as well.
        for extension in (b"CHUNKING", b"PIPELINING"):
            if b"\r\n250-" + extension not in offered.upper().replace(b"250 ", b"250-"):
                raise SetupRefused(f"the server does not offer {extension.decode()}")
        if username is not None and password is not None:
            secret = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
            await self._expect(f"AUTH PLAIN {secret}\r\n".encode("ascii"), b"235")

    async def transact_chunked(self, count: int) -> None:
        """`count` messages, `in_flight` transactions a write (the last write may carry fewer);
        a message whose MAIL, RCPT or BDAT was answered with anything but 250 counts as failed."""
        while count > 0:
            batch = min(count, self._in_flight)
            count -= batch
            await self._write(CHUNKED_TRANSACTION * batch)
            finals = await self._await_final_replies(REPLIES_PER_TRANSACTION * batch)
            for first in range(0, REPLIES_PER_TRANSACTION * batch, REPLIES_PER_TRANSACTION):
                replies = finals[first : first + REPLIES_PER_TRANSACTION]
                if not all(reply.startswith(b"250") for reply in replies):
                    self.failed += 1


async def _bare_asyncio_chunking(spec: SenderSpec, in_flight: int) -> Measurement:
    context = spec.ssl_context()

    async def open_session(writers: list[asyncio.StreamWriter]) -> BareChunkingSession:
        write, read, writer = await _asyncio_stream(spec, writers)

        async def start_tls() -> None:
            assert context is not None
            await writer.start_tls(context, server_hostname=spec.host)

        session = BareChunkingSession(write, read, in_flight)
        tls = start_tls if context is not None else None
        await session.open(tls, spec.username, spec.password)
        await session.transact_chunked(spec.warmup)
        if session.failed:
            raise RuntimeError(f"{session.failed} warm-up messages refused")
        return session

    meter, sessions = await _timed_asyncio_sessions(
        spec, open_session, BareChunkingSession.transact_chunked
    )
    return meter.measurement(
        spec,
        spec.warmup * spec.concurrency,
        spec.concurrency,
        len(RAW_MESSAGE),
        failed_messages=sum(session.failed for session in sessions),
    )


async def _bare_anyio(spec: SenderSpec) -> Measurement:
    import anyio

    streams: list[anyio.abc.SocketStream] = []
    sessions: list[BareSession] = []

    async def open_session() -> None:
        stream = await anyio.connect_tcp(spec.host, spec.port)
        streams.append(stream)
        session = BareSession(stream.send, lambda: stream.receive(65536))
        await session.greet()
        await session.transact(spec.warmup)
        sessions.append(session)

    async with anyio.create_task_group() as task_group:
        for _ in range(spec.concurrency):
            task_group.start_soon(open_session)
    meter = Meter()
    meter.start()
    async with anyio.create_task_group() as task_group:
        for session, count in zip(sessions, split(spec.messages, spec.concurrency), strict=True):
            task_group.start_soon(session.transact, count)
    meter.stop()
    async with anyio.create_task_group() as task_group:
        for session in sessions:
            task_group.start_soon(session.quit)
    for stream in streams:
        await stream.aclose()
    return meter.measurement(
        spec, spec.warmup * spec.concurrency, spec.concurrency, len(RAW_MESSAGE)
    )


def _run_bare_anyio(backend: str) -> Callable[[SenderSpec], Measurement]:
    def run(spec: SenderSpec) -> Measurement:
        import anyio

        return anyio.run(_bare_anyio, spec, backend=backend)

    return run


def _run_bare_asyncio_chunking(in_flight: int) -> Callable[[SenderSpec], Measurement]:
    """The bare CHUNKING loop with `in_flight` transactions a write: the count belongs to the
    sender's id, and nothing else says it."""

    def run(spec: SenderSpec) -> Measurement:
        return asyncio.run(_bare_asyncio_chunking(spec, in_flight))

    return run


# The in-process senders by name; bench/harness.py names the rest (smtp-source) itself.
SENDERS: dict[str, Callable[[SenderSpec], Measurement]] = {
    "pooledmail-asyncio-send_raw": _run_pooledmail("asyncio", "send_raw"),
    "pooledmail-trio-send_raw": _run_pooledmail("trio", "send_raw"),
    "pooledmail-asyncio-send": _run_pooledmail("asyncio", "send"),
    "pooledmail-trio-send": _run_pooledmail("trio", "send"),
    "pooledmail-asyncio-as_bytes": _run_pooledmail("asyncio", "as_bytes"),
    "pooledmail-trio-as_bytes": _run_pooledmail("trio", "as_bytes"),
    "aiosmtplib-reused": lambda spec: asyncio.run(_aiosmtplib_reused(spec)),
    "aiosmtplib-per-message": lambda spec: asyncio.run(_aiosmtplib_per_message(spec)),
    "smtplib-reused": lambda spec: _smtplib_threads(spec, per_message=False),
    "smtplib-per-message": lambda spec: _smtplib_threads(spec, per_message=True),
    "bare-asyncio": lambda spec: asyncio.run(_bare_asyncio(spec)),
    "bare-anyio-trio": _run_bare_anyio("trio"),
    "bare-asyncio-chunking-1": _run_bare_asyncio_chunking(1),
    "bare-asyncio-chunking-2": _run_bare_asyncio_chunking(2),
}


def run_sender(spec: SenderSpec) -> Measurement:
    """Run the sender the spec names, once."""
    return SENDERS[spec.sender](spec)
