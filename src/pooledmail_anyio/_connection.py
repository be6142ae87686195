"""One SMTP session over a byte stream: opening it and running the core's exchanges on it.

The core decides every byte; this module only moves bytes and enforces time. An exchange is run
by one loop (`Connection.run`): write what the core says, read when it needs data, hand TLS over
when it asks. Each read and write is bounded by the step timeout and by the caller's absolute
deadline, whichever comes first.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from dataclasses import dataclass
from typing import Protocol

import anyio.abc
from anyio.streams.tls import TLSStream

import anyio
from pooledmail_core._classify import Classification, FailureKind, Stage, classify
from pooledmail_core._config import Host, TLSMode
from pooledmail_core._errors import LocalProtocolError, RemoteProtocolError
from pooledmail_core._exchanges import NEED_DATA, Done, Exchange, StartTLS, Write
from pooledmail_core._limits import Limits
from pooledmail_core._reply import Reply
from pooledmail_core._session import ClientSession

from ._stream import AsyncioSocketStream, DeadlineExceeded, backend_clock, connect_tcp

__all__ = ["TRANSPORT_ERRORS", "Connection", "ConnectFailure", "open_connection"]

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

# Reads take whatever the kernel has, up to this much: the core drains every reply it holds.
_READ_SIZE = 65536
# Under a cancel scope (any stream but `AsyncioSocketStream`), a step's time limit is moved
# forward only when less than one step is left; it then gets this multiple of the step timeout.
_STEP_SLACK = 1.1


class ExchangeTimeout(TimeoutError):
    """A read or write took longer than its step timeout or the operation's deadline."""


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    """Why opening a usable connection failed; handed to the pool machine and back."""

    host: str
    classification: Classification
    reply: Reply | None
    error: BaseException | None
    reason: str = ""

    @property
    def kind(self) -> FailureKind:
        return self.classification.kind


class _Limit(Protocol):
    """What bounds an exchange's waits: a stream's or a cancel scope's `deadline`."""

    deadline: float


class Connection:
    """An established SMTP session. Not shared: the pool lends it to one sender at a time."""

    __slots__ = ("_clock", "_deadline_stream", "host", "session", "stream")

    def __init__(self, stream: anyio.abc.ByteStream, session: ClientSession, host: Host) -> None:
        self.stream = stream
        self.session = session
        self.host = host
        # Cancel scope deadlines are in the event loop's time; a connection never changes loops.
        self._clock = backend_clock()
        # The plain TCP stream that bounds its own waits, when there is one (asyncio): then no
        # cancel scope is needed per exchange. It stays beneath a TLS layer added later.
        raw: object = stream
        if isinstance(stream, TLSStream):
            raw = stream.transport_stream
        self._deadline_stream = raw if isinstance(raw, AsyncioSocketStream) else None

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
            # The stream bounds its own waits (asyncio): no cancel scope per exchange.
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
        receive_data = self.session.receive_data
        stream = self.stream
        current_time = self._clock
        allowance = step_timeout * _STEP_SLACK
        limit.deadline = min(deadline, current_time() + allowance)
        while True:
            step = next_step()
            if step is NEED_DATA:
                try:
                    data = await stream.receive(_READ_SIZE)
                except anyio.EndOfStream:
                    data = b""
                receive_data(data)
                continue
            if type(step) is Done:
                return
            now = current_time()
            if limit.deadline - now < step_timeout:
                # As a cancel scope would: a step that starts past its limit does not start.
                if deadline <= now:
                    raise DeadlineExceeded
                limit.deadline = min(deadline, now + allowance)
            if type(step) is Write:
                await stream.send(step.data)
            else:
                assert type(step) is StartTLS
                stream = await self._start_tls(exchange, ssl_context)
            # The replies to what was just sent get a full step of their own.
            now = current_time()
            if limit.deadline - now < step_timeout:
                limit.deadline = min(deadline, now + allowance)

    async def _start_tls(
        self, exchange: Exchange, ssl_context: ssl.SSLContext | None
    ) -> anyio.abc.ByteStream:
        stream = self.stream = await TLSStream.wrap(
            self.stream,
            hostname=self.host.hostname,
            ssl_context=ssl_context,
            standard_compatible=False,
        )
        exchange.tls_established()
        return stream

    async def quit(self, grace: float) -> None:
        """Say QUIT and close, within `grace` seconds, shielded from the caller's cancellation."""
        with anyio.move_on_after(grace, shield=True):
            # The connection is going away whatever happens (the session may even be in ERROR,
            # where the core refuses QUIT); a 221 is courtesy and not waited for.
            with contextlib.suppress(Exception):
                await self.stream.send(self.session.quit())
            await self.abort(grace)

    async def abort(self, grace: float) -> None:
        """Close the transport now, bounded and shielded."""
        with anyio.move_on_after(grace, shield=True):
            with contextlib.suppress(Exception):
                await self.stream.aclose()


async def open_connection(
    host: Host,
    *,
    local_hostname: str,
    connect_timeout: float,
    command_timeout: float,
    ssl_context: ssl.SSLContext,
    limits: Limits,
    quit_grace: float,
) -> Connection | ConnectFailure:
    """Connect, read the greeting, EHLO, STARTTLS and AUTH as the host asks.

    Returns a ready `Connection`, or a `ConnectFailure` saying at which stage it went wrong.
    Nothing is left open on failure.
    """
    implicit = host.tls is TLSMode.IMPLICIT
    stage = Stage.CONNECT
    try:
        with anyio.fail_after(connect_timeout):
            stream = await connect_tcp(host.hostname, host.port)
            if implicit:
                stage = Stage.TLS
                stream = await TLSStream.wrap(
                    stream,
                    hostname=host.hostname,
                    ssl_context=ssl_context,
                    standard_compatible=False,
                )
    except TRANSPORT_ERRORS as exc:
        return ConnectFailure(host.key, classify(stage), None, exc, "could not connect")
    session = ClientSession(local_hostname=local_hostname, limits=limits)
    connection = Connection(stream, session, host)
    setup = session.setup(
        tls=host.tls,
        tls_active=implicit,
        username=host.username,
        password=host.password,
        oauth2_token=host.oauth2_token,
        allow_plaintext_auth=host.allow_plaintext_auth,
    )
    try:
        await connection.run(setup, step_timeout=command_timeout, ssl_context=ssl_context)
    except TRANSPORT_ERRORS as exc:
        await connection.abort(quit_grace)
        stage = setup.stage
        return ConnectFailure(host.key, classify(stage), None, exc)
    except BaseException:
        await connection.abort(quit_grace)
        raise
    result = setup.result
    if not result.ok:
        await connection.quit(quit_grace)
        return ConnectFailure(
            host.key,
            # No reply means the core refused locally (no STARTTLS offered, AUTH not possible).
            classify(result.stage, reply=result.reply, local_refusal=result.reply is None),
            result.reply,
            # Refused locally: the reason becomes the cause a caller sees on SendFailed.
            LocalProtocolError(result.reason) if result.reply is None else None,
            result.reason,
        )
    return connection
