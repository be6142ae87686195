"""A small scriptable SMTP server on anyio, for fault tests on loopback.

Each connection is served by a `Script`: a set of replies and faults keyed by the point of the
session they apply to. The server records every read it made (so a test can check that a pipelined
flight arrived in one read) and every message it accepted.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio.abc
from anyio.streams.tls import TLSStream

import anyio

# Fault markers a script may give instead of a reply.
DISCONNECT = "<disconnect>"
STALL = "<stall>"


@dataclass
class Script:
    """What the server answers at each point. A value is a reply line (or several, separated by
    newlines, sent as one multi-line reply), DISCONNECT, or STALL (read on, never answer)."""

    greeting: str = "220 fake.test ESMTP"
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10000000")
    ehlo: str | None = None
    mail: str = "250 2.1.0 ok"
    rcpt: Callable[[str], str] | str = "250 2.1.5 ok"
    data: str = "354 go ahead"
    # The final reply; a callable gets the message's number on the whole server (0-based).
    data_end: str | Callable[[int], str] = "250 2.0.0 queued"
    bdat: str = "250 2.0.0 chunk ok"
    rset: str = "250 2.0.0 reset"
    noop: str = "250 2.0.0 ok"
    auth: str = "235 2.7.0 accepted"
    starttls: str = "220 2.0.0 ready"
    # Bytes sent right after the STARTTLS reply, in the same write (the injection attack).
    starttls_injection: bytes = b""
    # Seconds between the bytes of the greeting (a server that drips to hold the client).
    drip_greeting: float = 0.0
    # Bytes sent instead of the greeting, as they are (a hostile or broken server).
    raw_greeting: bytes | None = None
    tls_context: ssl.SSLContext | None = None
    # Raw bytes written right after the final reply to message n (0-based, whole server), in the
    # same write: a reply nobody asked for, as a desynchronised or hostile server sends.
    extra_after: Callable[[int], bytes] | None = None
    # Close the connection (FIN, or RST with `close_with_reset`) once it has carried this many
    # messages, without waiting for the client: as servers that limit messages per session do.
    close_after_messages: int | None = None
    close_with_reset: bool = False
    # Stop reading once the message data starts (after DATA's 354, or the BDAT command line):
    # a server that applies flow control, or hangs, during the body.
    stop_reading_in_body: bool = False


@dataclass
class Connection:
    reads: list[bytes] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    # Messages the server stored: the final reply was 2xx, or the server stored it and then
    # disconnected or stalled instead of replying (the case that makes a resend a duplicate).
    messages: list[bytes] = field(default_factory=list)
    closed_by_client: bool = False


class FakeSMTPServer:
    """Serves `script_for(n)` to the n-th connection (0-based)."""

    def __init__(self, script_for: Callable[[int], Script] | Script) -> None:
        self._script_for = script_for if callable(script_for) else (lambda _n: script_for)
        self.connections: list[Connection] = []
        self.port = 0
        self.accepting = True
        # Messages whose terminator arrived, stored or not, numbered across connections.
        self.received = 0
        self.sessions: list[_Session] = []

    @property
    def messages(self) -> list[bytes]:
        return [m for c in self.connections for m in c.messages]

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[FakeSMTPServer]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, self._serve)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def _serve(self, stream: anyio.abc.ByteStream) -> None:
        if not self.accepting:
            await stream.aclose()
            return
        record = Connection()
        self.connections.append(record)
        script = self._script_for(len(self.connections) - 1)
        session = _Session(stream, script, record, self)
        self.sessions.append(session)
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            await session.run()
        with anyio.move_on_after(1, shield=True), contextlib.suppress(Exception):
            await session.stream.aclose()


class _Stop(Exception):
    pass


class _Session:
    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        script: Script,
        record: Connection,
        server: FakeSMTPServer,
    ) -> None:
        self.stream = stream
        self.script = script
        self.record = record
        self.server = server
        self.buffer = b""

    async def _final(self, message: bytes) -> None:
        """Answer a message's terminator as the script says, storing the message if it does."""
        number = self.server.received
        self.server.received += 1
        data_end = self.script.data_end
        reply = data_end(number) if callable(data_end) else data_end
        if not reply.startswith(("4", "5")):
            self.record.messages.append(message)
        extra = self.script.extra_after(number) if self.script.extra_after else b""
        await self._answer(reply, extra)
        limit = self.script.close_after_messages
        if limit is not None and len(self.record.messages) >= limit:
            if self.script.close_with_reset:
                raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise _Stop

    async def _read(self) -> None:
        try:
            chunk = await self.stream.receive(65536)
        except anyio.EndOfStream:
            self.record.closed_by_client = True
            raise _Stop from None
        self.record.reads.append(chunk)
        self.buffer += chunk

    async def _line(self) -> str:
        while b"\r\n" not in self.buffer:
            await self._read()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    async def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._read()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    async def _answer(self, reply: str, extra: bytes = b"") -> None:
        if reply == DISCONNECT:
            raise _Stop
        if reply == STALL:
            await anyio.sleep_forever()
        lines = reply.split("\n")
        code = lines[0][:3]
        wire = "".join(
            f"{code}{'-' if i < len(lines) - 1 else ' '}{line[4:]}\r\n"
            for i, line in enumerate(lines)
        )
        await self.stream.send(wire.encode() + extra)

    async def run(self) -> None:
        try:
            await self._run()
        except _Stop:
            return

    async def _run(self) -> None:
        script = self.script
        if script.raw_greeting is not None:
            await self.stream.send(script.raw_greeting)
            await anyio.sleep_forever()
        if script.drip_greeting:
            for byte in f"{script.greeting}\r\n".encode():
                await self.stream.send(bytes([byte]))
                await anyio.sleep(script.drip_greeting)
        else:
            await self._answer(script.greeting)
        if not script.greeting.startswith("220"):
            return
        tls_on = False
        # Like a real server: RCPT needs an accepted MAIL, DATA/BDAT an accepted RCPT.
        mail_ok = False
        rcpts_ok = 0
        chunks = b""  # BDAT chunks of the message in progress
        while True:
            line = await self._line()
            verb = line.split(" ", 1)[0].upper()
            self.record.commands.append("AUTH" if verb == "AUTH" else line)
            if verb == "EHLO":
                if script.ehlo is not None:
                    await self._answer(script.ehlo)
                    continue
                exts = [e for e in script.extensions if not (tls_on and e == "STARTTLS")]
                await self._answer("\n".join(["250 fake.test", *(f"250 {e}" for e in exts)]))
            elif verb == "HELO":
                await self._answer("250 fake.test")
            elif verb == "STARTTLS":
                await self._answer(script.starttls, script.starttls_injection)
                if not script.starttls.startswith("220") or script.tls_context is None:
                    continue
                self.stream = await TLSStream.wrap(
                    self.stream, server_side=True, ssl_context=script.tls_context
                )
                tls_on = True
            elif verb == "AUTH":
                await self._answer(script.auth)
            elif verb == "MAIL":
                mail_ok = script.mail.startswith("250")
                await self._answer(script.mail)
            elif verb == "RCPT":
                rcpt = script.rcpt
                reply = rcpt(line) if callable(rcpt) else rcpt
                if not mail_ok:
                    reply = "503 5.5.1 need MAIL first"
                rcpts_ok += reply.startswith("250")
                await self._answer(reply)
            elif verb == "DATA":
                if not rcpts_ok:
                    await self._answer("554 5.5.1 no valid recipients")
                    continue
                mail_ok, rcpts_ok = False, 0
                await self._answer(script.data)
                if not script.data.startswith("354"):
                    continue
                if script.stop_reading_in_body:
                    await anyio.sleep_forever()
                while b"\r\n.\r\n" not in self.buffer:
                    await self._read()
                body, _, self.buffer = self.buffer.partition(b"\r\n.\r\n")
                await self._final(body + b"\r\n")
            elif verb == "BDAT":
                if script.stop_reading_in_body:
                    await anyio.sleep_forever()
                parts = line.split()
                chunk = await self._exactly(int(parts[1]))
                last = len(parts) > 2 and parts[2].upper() == "LAST"
                if not rcpts_ok:
                    await self._answer("554 5.5.1 no valid recipients")
                elif last:
                    mail_ok, rcpts_ok = False, 0
                    await self._final(chunks + chunk)
                    chunks = b""
                else:
                    chunks += chunk
                    await self._answer(script.bdat)
            elif verb == "RSET":
                mail_ok, rcpts_ok = False, 0
                await self._answer(script.rset)
            elif verb == "NOOP":
                await self._answer(script.noop)
            elif verb == "QUIT":
                await self._answer("221 2.0.0 bye")
                return
            else:
                await self._answer("500 5.5.1 unknown command")
