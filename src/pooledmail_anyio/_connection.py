"""One SMTP session over a byte stream: opening it and running the core's exchanges on it.

The core decides every byte; this module only moves bytes and enforces time. An exchange is run
by one loop (`Connection.run`): write what the core says, read when it needs data, hand TLS over
when it asks. Each read and write is bounded by the step timeout and by the caller's absolute
deadline, whichever comes first.

The ambiguity boundary (docs/internals/design.md) depends on one property of this loop: after a
`Write`, the exchange's `next_step()` is called again only once the stream's `send()` returned, that
is once every byte of the write was handed to the transport. A `send()` that raised, timed out or
was cancelled hands nothing more over (the asyncio stream aborts a transport it could not drain;
trio and TLS keep unsent bytes in memory), so the exchange never sees a write it cannot trust as
done.
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
import ssl
from dataclasses import dataclass
from typing import Protocol

import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

import anyio
from pooledmail_core import (
    NEED_DATA,
    Classification,
    ClientSession,
    Done,
    Exchange,
    FailureKind,
    Host,
    Limits,
    LocalProtocolError,
    OAuth2TokenProvider,
    RemoteProtocolError,
    Reply,
    SessionState,
    Stage,
    StartTLS,
    TLSMode,
    Write,
    classify,
)

from ._stream import DeadlineExceeded, DeadlineSocketStream, backend_clock, connect_tcp
from ._tls import LeanTLSStream

__all__ = [
    "TRANSPORT_ERRORS",
    "ConnectFailure",
    "Connection",
    "ExchangeTimeout",
    "describe_transport_failure",
    "open_connection",
]

# What a broken or hostile peer can make a read, a write or a handshake raise. Anything else is a
# bug and propagates.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    RemoteProtocolError,
    TimeoutError,
)

_CLOSED = SessionState.CLOSED
# Reads take whatever the kernel has, up to this much: the core drains every reply it holds.
_READ_SIZE = 65536
# A large write is handed to the stream in slices of this size: the TLS layer and asyncio's
# transport copy what they are given, so slicing bounds those copies to one slice, and each slice
# that leaves renews the step's time (a big body over a slow link is not a stalled server).
_WRITE_SLICE = 1 << 18
# Under a cancel scope (any stream but a `DeadlineSocketStream`), a step's time limit is moved
# forward only when less than one step is left; it then gets this multiple of the step timeout.
_STEP_SLACK = 1.1


class ExchangeTimeout(TimeoutError):
    """A read or write took longer than its step timeout or the operation's deadline."""


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    """Why opening a usable connection failed; handed to the pool machine and back.

    `reason` is one line for people (never a secret): what went wrong and, where one is likely, a
    hint at the fix.
    """

    host: str
    classification: Classification
    reply: Reply | None
    error: BaseException | None
    reason: str

    @property
    def kind(self) -> FailureKind:
        return self.classification.kind

    @property
    def stage(self) -> Stage:
        return self.classification.stage


class _Limit(Protocol):
    """What bounds an exchange's waits: a stream's or a cancel scope's `deadline`."""

    deadline: float


class Connection:
    """An established SMTP session. Not shared: the pool lends it to one sender at a time."""

    __slots__ = (
        "_clock",
        "_deadline_stream",
        "_peek_socket",
        "_ssl_object",
        "_tls_read_bio",
        "auth_mechanism",
        "greeting",
        "host",
        "key",
        "server_closed",
        "session",
        "stream",
    )

    def __init__(self, stream: anyio.abc.ByteStream, session: ClientSession, host: Host) -> None:
        self.stream = stream
        self.session = session
        self.host = host
        # `host.key`, worked out once: every send reports it.
        self.key = host.key
        # The TLS object once TLS is up, read by `unusable()` (looking it up costs more).
        self._ssl_object: ssl.SSLObject | None = None
        # What the TLS layer received but could not decrypt yet (part of a record).
        self._tls_read_bio: ssl.MemoryBIO | None = None
        if isinstance(stream, TLSStream):
            self._ssl_object = stream.extra(TLSAttribute.ssl_object)
            self._tls_read_bio = getattr(stream, "_read_bio", None)
        # The server ended the stream (FIN) while this side was reading: what broke an exchange.
        self.server_closed = False
        # What setup learned, for diagnostics (`check()`, `pooledmail probe`); the greeting
        # only when `open_connection` was asked to keep it.
        self.greeting: Reply | None = None
        self.auth_mechanism: str | None = None
        # Cancel scope deadlines are in the event loop's time; a connection never changes loops.
        self._clock = backend_clock()
        # The plain TCP stream that bounds its own waits (both backends' `connect_tcp` make
        # one): then no cancel scope is needed per exchange. It stays beneath a TLS layer added
        # later.
        raw: object = stream
        if isinstance(stream, TLSStream):
            raw = stream.transport_stream
        self._deadline_stream = raw if isinstance(raw, DeadlineSocketStream) else None
        # Any other stream (tests may pass one): the kernel is asked directly whether anything
        # arrived while idle.
        self._peek_socket: socket.socket | None = None
        if self._deadline_stream is None:
            with contextlib.suppress(anyio.TypedAttributeLookupError):
                self._peek_socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)

    def tls_version(self) -> str | None:
        """The TLS version in use ("TLSv1.3"), or None on a plaintext connection."""
        version: str | None = self.stream.extra(TLSAttribute.tls_version, None)
        return version

    def unusable(self, *, transport: bool = True) -> str | None:
        """Why this connection must not carry another exchange, or None; never a round trip.

        Between exchanges a session in step with its server has nothing to read (RFC 5321 §4.2,
        RFC 2920 §3.1). A byte left over after the last exchange, or one that arrived while the
        connection was idle, means the next reply would be matched to the wrong command; the end
        of the stream or a reset means the server is gone. Either way the connection is closed,
        never lent.

        `transport=False` looks only at the parser and the TLS layer, not at the byte stream
        below them (the asyncio stream's queue, then on either backend the socket through a
        `poll` system call): the pool asks so right after an exchange, since the check before
        the connection's next use looks there anyway, and later, so it sees more.
        """
        if self.session.has_unread:
            return "out_of_sync"
        ssl_object = self._ssl_object
        if ssl_object is not None:
            read_bio = self._tls_read_bio
            if read_bio is not None:
                # The TLS layer's input in sight: a record (or part of one) nobody asked for
                # waits there undecrypted, or its decrypted bytes wait unread in the TLS object.
                # The TLS object reads records only when asked, so nothing else can hide there;
                # both are plain counters, where a read attempt costs an exception every time.
                if read_bio.pending or ssl_object.pending():
                    return "out_of_sync"
            else:
                # A TLS stream whose input cannot be seen: reading from the TLS object itself
                # (no I/O: it only looks at what it holds) finds a complete record; post-
                # handshake messages such as session tickets are consumed and are not data.
                try:
                    if ssl_object.read(1):
                        return "out_of_sync"
                    return "stale"  # close_notify
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLError, ValueError):
                    return "stale"
        if not transport:
            return None
        bounded = self._deadline_stream
        if bounded is not None:
            return bounded.unusable()
        sock = self._peek_socket
        if sock is None:
            return None
        try:
            peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return "stale"
        return "out_of_sync" if peeked else "stale"

    async def run(
        self,
        exchange: Exchange,
        *,
        step_timeout: float,
        deadline: float = math.inf,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Drive `exchange` until it is done. Raises what the transport or the core raised, or
        `ExchangeTimeout`.

        Time is given per flight, never past `deadline`: the exchange's first read (a greeting),
        each write together with the wait for its replies, and a TLS handshake each get at least
        `step_timeout` and at most 10 % more. Reads do not extend it, so a server that drips a
        byte at a time cannot hold a connection beyond one step.
        """
        bounded = self._deadline_stream
        if bounded is not None:
            # The stream bounds its own waits: no cancel scope per exchange.
            try:
                await self._drive(exchange, bounded, step_timeout, deadline, ssl_context)
            except DeadlineExceeded:
                raise ExchangeTimeout("the server did not answer in time") from None
            finally:
                bounded.deadline = math.inf
            return
        with anyio.CancelScope() as scope:
            try:
                await self._drive(exchange, scope, step_timeout, deadline, ssl_context)
            except DeadlineExceeded:
                scope.cancel()
        if scope.cancelled_caught or scope.cancel_called:
            raise ExchangeTimeout("the server did not answer in time")

    async def _drive(
        self,
        exchange: Exchange,
        limit: _Limit,
        step_timeout: float,
        deadline: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        # `limit` is the stream or the cancel scope whose `deadline` bounds the waits. Moving a
        # scope's deadline reschedules a timer, so it is moved only when less than a full step is
        # left; a step then gets up to `_STEP_SLACK` times its timeout.
        next_step = exchange.next_step
        data_received = exchange.data_received
        stream = self.stream
        current_time = self._clock
        allowance = step_timeout * _STEP_SLACK
        # `until` mirrors `limit.deadline`, which only this loop moves.
        until = limit.deadline = min(deadline, current_time() + allowance)
        step = next_step()
        while True:
            if step is NEED_DATA:
                try:
                    data = await stream.receive(_READ_SIZE)
                except anyio.EndOfStream:
                    data = b""
                    self.server_closed = True
                step = data_received(data)
                continue
            kind = type(step)
            if kind is Done:
                return
            now = current_time()
            if until - now < step_timeout:
                # As a cancel scope would: a step that starts past its limit does not start.
                if deadline <= now:
                    raise DeadlineExceeded
                until = limit.deadline = min(deadline, now + allowance)
            if kind is Write:
                flight = step.data  # type: ignore[union-attr]
                try:
                    if len(flight) <= _WRITE_SLICE:
                        await stream.send(flight)  # type: ignore[arg-type]
                    else:
                        await self._send_sliced(
                            stream, memoryview(flight), limit, step_timeout, deadline
                        )
                        until = limit.deadline
                except BaseException:
                    bounded = self._deadline_stream
                    if bounded is not None and bounded.handed_over_when_interrupted:
                        # Interrupted although the whole write was handed over: the exchange
                        # must learn it (a terminator it carried was sent), then the
                        # interruption goes on as it is.
                        with contextlib.suppress(Exception):
                            next_step()
                    raise
            else:
                assert kind is StartTLS
                stream = await self._start_tls(exchange, ssl_context)
            # The replies to what was just sent get a full step of their own.
            now = current_time()
            if until - now < step_timeout:
                until = limit.deadline = min(deadline, now + allowance)
            step = next_step()

    async def _send_sliced(
        self,
        stream: anyio.abc.ByteStream,
        view: memoryview,
        limit: _Limit,
        step_timeout: float,
        deadline: float,
    ) -> None:
        # Each slice handed over is progress: the next one gets a full step again.
        allowance = step_timeout * _STEP_SLACK
        last = len(view) - _WRITE_SLICE
        for start in range(0, len(view), _WRITE_SLICE):
            now = self._clock()
            if limit.deadline - now < step_timeout:
                if deadline <= now:
                    raise DeadlineExceeded
                limit.deadline = min(deadline, now + allowance)
            try:
                await stream.send(view[start : start + _WRITE_SLICE])  # type: ignore[arg-type]
            except BaseException:
                bounded = self._deadline_stream
                if start < last and bounded is not None:
                    # A slice before the last one was handed over: the write as a whole was not.
                    bounded.handed_over_when_interrupted = False
                raise

    async def _start_tls(
        self, exchange: Exchange, ssl_context: ssl.SSLContext | None
    ) -> anyio.abc.ByteStream:
        stream = self.stream = await LeanTLSStream.wrap(
            self.stream,
            hostname=self.host.hostname,
            ssl_context=ssl_context,
            standard_compatible=False,
        )
        self._ssl_object = stream.extra(TLSAttribute.ssl_object)
        self._tls_read_bio = getattr(stream, "_read_bio", None)
        exchange.tls_established()
        return stream

    async def quit(self, grace: float, *, deadline: float = math.inf) -> None:
        """Say QUIT, wait for the reply, and close, within `grace` seconds and before
        `deadline` (the event loop's time), shielded from the caller's cancellation.

        RFC 5321 §4.1.1.10: the client SHOULD wait for the reply to QUIT before it closes (a
        server that sees the end of the stream with the QUIT line may drop the session without
        reading it). The wait is bounded by `grace` and by what is left before `deadline`, the
        operation's own (`check()` and `pooledmail probe` promise a host's whole check within
        `connect_timeout`); with nothing left, no QUIT is said. Whatever happens, the connection
        is closed.
        """
        grace = min(grace, deadline - self._clock())
        if grace <= 0:
            await self.abort(0.0)
            return
        try:
            with anyio.move_on_after(grace, shield=True):
                # The session may be in ERROR or already closed, where the core refuses QUIT.
                with contextlib.suppress(Exception):
                    session = self.session
                    await self.stream.send(session.quit())
                    while session.next_event() is NEED_DATA and session.state is not _CLOSED:
                        try:
                            data = await self.stream.receive(_READ_SIZE)
                        except anyio.EndOfStream:
                            data = b""
                        session.receive_data(data)
        finally:
            # Also when the grace ran out with the server silent: its cancellation is no
            # Exception, and would otherwise skip the close.
            await self.abort(grace, deadline=deadline)

    async def abort(self, grace: float, *, deadline: float = math.inf) -> None:
        """Close the transport now, bounded (by `grace` and `deadline`) and shielded."""
        grace = max(0.0, min(grace, deadline - self._clock()))
        with anyio.move_on_after(grace, shield=True):
            await anyio.aclose_forcefully(self.stream)


async def open_connection(
    host: Host,
    *,
    local_hostname: str,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None,
    limits: Limits,
    quit_grace: float,
    keep_greeting: bool = False,
) -> Connection | ConnectFailure:
    """Connect, read the greeting, EHLO, STARTTLS and AUTH as the host asks.

    `connect_timeout` bounds all of it, as one deadline: a session ready for MAIL, or a
    `ConnectFailure` saying at which stage it went wrong and why. Nothing is left open on failure.

    A host with an `oauth2_token_provider` gets its token from it first, within the same deadline.
    If the server then refuses that token (an expired one, typically), the provider is asked once
    more, told which token was refused, and a fresh token gets one more connection; the same token
    again ends it with AUTH_FAILED.

    `keep_greeting` keeps the server's greeting on the connection (`pooledmail probe` shows it);
    a pool's connections do without it: a server's greeting may be up to `max_reply_lines` lines
    of `max_line_length` each, and nothing else needs it once the session is ready.
    """
    deadline = backend_clock()() + connect_timeout

    async def attempt(token: str | None) -> Connection | ConnectFailure:
        return await _open_once(
            host,
            token,
            deadline,
            local_hostname=local_hostname,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
            limits=limits,
            quit_grace=quit_grace,
            keep_greeting=keep_greeting,
        )

    provider = host.oauth2_token_provider
    if provider is None:
        return await attempt(host.oauth2_token)
    token = await _fetch_token(provider, None, host, deadline, connect_timeout)
    if isinstance(token, ConnectFailure):
        return token
    outcome = await attempt(token)
    if not (
        isinstance(outcome, ConnectFailure)
        and outcome.kind is FailureKind.AUTH_FAILED
        and outcome.reply is not None
    ):
        return outcome
    # The server refused the token: perhaps it expired while a cache still held it.
    fresh = await _fetch_token(provider, token, host, deadline, connect_timeout)
    if isinstance(fresh, ConnectFailure):
        return fresh
    if fresh == token:
        return ConnectFailure(
            outcome.host,
            outcome.classification,
            outcome.reply,
            outcome.error,
            outcome.reason + " (the token provider gave the refused token again)",
        )
    return await attempt(fresh)


async def _fetch_token(
    provider: OAuth2TokenProvider,
    refused: str | None,
    host: Host,
    deadline: float,
    connect_timeout: float,
) -> str | ConnectFailure:
    """A token from the application's provider, or the failure to report for the host.

    The provider's own error is kept as the cause, never quoted: its text is the application's
    and might hold a secret."""
    token: object = None
    try:
        with anyio.CancelScope(deadline=deadline) as scope:
            token = await provider(refused)
    except Exception as exc:
        return ConnectFailure(
            host.key,
            classify(Stage.AUTH),
            None,
            exc,
            f"the OAuth2 token provider raised {type(exc).__name__}",
        )
    if scope.cancelled_caught:
        return ConnectFailure(
            host.key,
            classify(Stage.AUTH),
            None,
            ExchangeTimeout("token provider"),
            f"the OAuth2 token provider gave no token within {connect_timeout:g} s "
            "(connect_timeout)",
        )
    if (
        not isinstance(token, str)
        or not token
        or not token.isascii()
        or any(ch.isspace() or ch == "\0" for ch in token)
    ):
        reason = "the OAuth2 token provider returned no usable token (a non-empty ASCII str "
        reason += "without whitespace is needed)"
        refusal = classify(Stage.AUTH, local_refusal=True)
        return ConnectFailure(host.key, refusal, None, LocalProtocolError(reason), reason)
    return token


async def _open_once(
    host: Host,
    oauth2_token: str | None,
    deadline: float,
    *,
    local_hostname: str,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None,
    limits: Limits,
    quit_grace: float,
    keep_greeting: bool,
) -> Connection | ConnectFailure:
    implicit = host.tls is TLSMode.IMPLICIT
    stage = Stage.CONNECT
    stream: anyio.abc.ByteStream | None = None
    try:
        with anyio.CancelScope(deadline=deadline) as scope:
            # On asyncio the stream reads ahead, so it is held to the same bound as the core:
            # whatever a server pushes, this process holds at most `max_buffered_bytes` of it
            # unread (the rest waits in the kernel).
            stream = await connect_tcp(
                host.hostname, host.port, read_limit=limits.max_buffered_bytes
            )
            if implicit:
                stage = Stage.TLS
                stream = await LeanTLSStream.wrap(
                    stream,
                    hostname=host.hostname,
                    ssl_context=ssl_context,
                    standard_compatible=False,
                )
        if scope.cancelled_caught:
            raise ExchangeTimeout
    except TRANSPORT_ERRORS as exc:
        if stream is not None:
            await _abort(stream, quit_grace, deadline)
        reason = describe_transport_failure(exc, stage, host, connect_timeout, connecting=True)
        return ConnectFailure(host.key, classify(stage), None, exc, reason)
    except BaseException:
        if stream is not None:
            await _abort(stream, quit_grace, deadline)
        raise
    assert stream is not None
    session = ClientSession(local_hostname=local_hostname, limits=limits)
    connection = Connection(stream, session, host)
    setup = session.setup(
        tls=host.tls,
        tls_active=implicit,
        username=host.username,
        password=host.password,
        oauth2_token=oauth2_token,
        allow_plaintext_auth=host.allow_plaintext_auth,
    )
    try:
        await connection.run(
            setup, step_timeout=connect_timeout, deadline=deadline, ssl_context=ssl_context
        )
    except TRANSPORT_ERRORS as exc:
        await connection.abort(quit_grace, deadline=deadline)
        stage = setup.stage
        reason = describe_transport_failure(
            exc, stage, host, connect_timeout, connecting=True, closed=connection.server_closed
        )
        return ConnectFailure(host.key, classify(stage), None, exc, reason)
    except BaseException:
        await connection.abort(quit_grace, deadline=deadline)
        raise
    result = setup.result
    if keep_greeting:
        connection.greeting = setup.greeting
    connection.auth_mechanism = setup.auth_mechanism
    if not result.ok:
        # `connect_timeout` bounds the whole setup, the QUIT after a refusal included.
        await connection.quit(quit_grace, deadline=deadline)
        if result.reply is not None:
            reason = f"{result.reason}: server said {result.reply}"
        else:
            reason = result.reason
        return ConnectFailure(
            host.key,
            # No reply means the core refused locally (no STARTTLS offered, AUTH not possible).
            classify(result.stage, reply=result.reply, local_refusal=result.reply is None),
            result.reply,
            # Refused locally: the reason becomes the cause a caller sees on SendFailed.
            LocalProtocolError(result.reason) if result.reply is None else None,
            reason,
        )
    return connection


async def _abort(stream: anyio.abc.ByteStream, grace: float, deadline: float) -> None:
    grace = max(0.0, min(grace, deadline - backend_clock()()))
    with anyio.move_on_after(grace, shield=True):
        await anyio.aclose_forcefully(stream)


def describe_transport_failure(
    error: BaseException,
    stage: Stage,
    host: Host,
    timeout: float,
    *,
    connecting: bool,
    closed: bool = False,
    command: str | None = None,
) -> str:
    """One line saying what a transport failure at `stage` means, for `SendFailed`'s reason.

    `timeout` is the limit that expired if it was a timeout (`connect_timeout` while
    `connecting`, else `command_timeout`). `closed` says the server ended the stream, which the
    core then reports as a protocol error (a reply was awaited). `command` names the command
    under way when it is none of a stage's (the NOOP of `check()` and `pooledmail probe`, once
    setup is done): the line then speaks of it. Never a secret.
    """
    if closed and isinstance(error, RemoteProtocolError):
        error = anyio.EndOfStream()
    option = "connect_timeout" if connecting else "command_timeout"
    during = stage.name if command is None else command
    if isinstance(error, (TimeoutError, DeadlineExceeded)):
        if command is not None:
            return f"no reply to {command} within {timeout:g} s ({option})"
        if stage is Stage.CONNECT:
            return f"no TCP connection within {timeout:g} s ({option})"
        if stage is Stage.GREETING:
            hint = ""
            if host.tls is not TLSMode.IMPLICIT:
                hint = ": is this an implicit-TLS port? try tls='implicit'"
            return f"no greeting within {timeout:g} s{hint}"
        if stage is Stage.TLS and connecting:
            return f"the TLS handshake did not finish within {timeout:g} s ({option})"
        return f"no reply during {stage.name} within {timeout:g} s ({option})"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        what = error.reason or type(error).__name__
        hint = ""
        if what == "WRONG_VERSION_NUMBER" and host.tls is TLSMode.IMPLICIT:
            hint = ": is this a plaintext or STARTTLS port? try tls='starttls'"
        return f"TLS failed: {what}{hint}"
    if isinstance(error, LocalProtocolError):
        return str(error)
    if isinstance(error, RemoteProtocolError):
        return f"protocol error during {during}: {error}"
    # The error that says what happened may be a cause: anyio wraps a reset in
    # BrokenResourceError, and its connect_tcp the last attempt's error in a bare OSError.
    cause: BaseException = error
    while cause.__cause__ is not None and (
        isinstance(cause, anyio.BrokenResourceError)
        or (type(cause) is OSError and cause.errno is None)
    ):
        cause = cause.__cause__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve {host.hostname!r}: {cause.strerror or cause}"
    if isinstance(cause, (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError)):
        if stage is Stage.GREETING and command is None:
            return "the server closed the connection before its greeting"
        return f"the server closed the connection during {during}"
    if isinstance(cause, anyio.ClosedResourceError):
        return f"the connection was closed during {during}"
    if isinstance(cause, OSError):
        if cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"{host.hostname} is unreachable: {cause.strerror}"
        return cause.strerror or str(cause) or type(cause).__name__
    return str(cause) or type(cause).__name__
