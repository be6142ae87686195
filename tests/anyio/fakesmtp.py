"""A small scriptable SMTP server on anyio, for fault tests on loopback.

Each connection is served by a `Script`: the replies the server gives and the faults it commits,
keyed by the point of the session they strike (`Fault(kind, point)`: the first time the session
reaches that point) or by the order of its replies (`Script.acts`: the n-th reply of the
connection, for generated hostile servers).

The server keeps two records apart, because verdicts are judged against the second:

* what it **received**: every read it made (`Connection.reads`, so a test can check that a
  pipelined flight arrived in one read or that a terminator really reached it), every command
  line, and `FakeSMTPServer.received`, the number of messages whose terminator it read;
* what it **stored** (`Connection.messages`): a message is stored when the server has read its
  terminator and means to accept it, that is when the reply it means to give is not a 4xx or 5xx.
  It is stored *before* the reply goes out, so a server that then disconnects, resets, stalls or
  answers garbage has the message although the client never heard so (the case that makes a
  resend a duplicate).

A fault that drops the connection never leaves the first record short of a byte a verdict depends
on, whatever the timing: the client's `UNKNOWN_AFTER_DATA` is judged true only if its terminator is
in `Connection.reads`, so every byte it handed to its kernel before it could see the drop must be
read, or provably not include the terminator (see FAULTS and `_Session._body_fault`).
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio.abc
from anyio.streams.tls import TLSStream

import anyio

# Fault markers a script may give instead of a reply (the older, per-reply form).
DISCONNECT = "<disconnect>"
STALL = "<stall>"

# The points of a session a `Fault` can strike, in the order a session meets them. "data" is the
# reply to DATA, or on the BDAT path the reply to a chunk that is not the last; "body" is while
# the message data is being read (after `Script.body_fault_after` bytes of it); "data_end" is the
# reply to the terminator (the "." line, or BDAT ... LAST).
POINTS = ("greeting", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "body", "data_end")
# What a fault does instead of the normal reply.
# disconnect: no reply, a FIN, and then receive (and record) until the client leaves. 421: say
# "421", then the same. rst: receive the rest of the client's flight (what it sends before it
# must wait for a reply, `_Session._rest_of_flight`), then close with SO_LINGER 0 (RST), no reply.
# During the body these three drop the connection mid-transfer (`_Session._body_fault`). 4xx /
# 5xx: refuse (see REFUSALS) and carry on as a server that refused. stall: never answer again,
# still receiving; during the body, stop reading too. malformed: a line that is no SMTP reply
# instead of the reply. extra: the reply and then one more nobody asked for, in the same write.
# missing: no reply at all, carrying on as if it had been given.
#
# Why disconnect and 421 keep receiving after their FIN (a lingering close), and rst reads the
# flight first: a client that pipelines may still be handing bytes to its kernel when the fault
# strikes, its terminator among them (MAIL, RCPT and every BDAT chunk go in one flight). Such a
# client honestly reports UNKNOWN_AFTER_DATA, and the record must then show the terminator. An
# earlier version received until 5 ms passed with nothing read and then closed: a client stalled
# longer than that (a busy CI machine, coverage) handed over bytes the kernel then reset, and an
# honest verdict was judged false. A FIN makes no byte of the client's fail and a reset discards
# what is unread, so the record is exact only if the server reads on until the client leaves
# (disconnect, 421), or until the client has nothing more to send before it waits (rst: the
# client then meets the reset while it waits for the reply, as before).
FAULTS = ("disconnect", "rst", "421", "4xx", "5xx", "stall", "malformed", "extra", "missing")
# Only for `Script.acts` (generated hostile servers): drip: the reply one byte at a time,
# `delay` apart. overlong: a reply line of `len(data)` bytes (4096 if no data). endless: a reply
# line that never ends. wrong_code: `data` (a whole line) instead of the reply. late: the reply,
# then `data` `delay` seconds later (while the client is idle, or in its next exchange).
HOSTILE_ONLY = ("normal", "drip", "overlong", "endless", "wrong_code", "late")
# Faults after which the server's replies no longer answer the commands the client thinks they
# answer: from then on a lying server can make any verdict false (see `Connection.desynced`).
DESYNC = frozenset({"extra", "missing", "late"})

# (4xx, 5xx) that "4xx" and "5xx" faults answer with at each point.
REFUSALS: dict[str, tuple[str, str]] = {
    "greeting": ("450 4.3.2 busy, come back later", "554 5.3.2 no service here"),
    "ehlo": ("451 4.3.0 try again later", "550 5.5.1 no EHLO for you"),
    "starttls": ("454 4.7.0 TLS not available now", "554 5.7.0 no TLS"),
    "auth": ("454 4.7.0 temporary authentication failure", "535 5.7.8 bad credentials"),
    "mail": ("451 4.3.0 try again later", "550 5.7.1 sender refused"),
    "rcpt": ("450 4.2.0 mailbox busy", "550 5.1.1 no such user"),
    "data": ("451 4.3.0 try again later", "554 5.5.0 no data now"),
    "body": ("451 4.3.0 aborted while reading", "554 5.6.0 content refused while reading"),
    "data_end": ("452 4.3.1 queue full", "554 5.7.1 refused as spam"),
}
# For replies that are no fault point (RSET, NOOP, QUIT, a second EHLO), in `Script.acts`.
_OTHER_REFUSALS = ("451 4.3.0 not now", "554 5.5.0 no")
CLOSING = "421 4.3.2 closing the transmission channel"
MALFORMED = b"this is not an SMTP reply\r\n"
EXTRA = b"250 2.0.0 a reply nobody asked for\r\n"
# How much of an "endless" line the server writes before it gives up (it is cut off long before
# by a client that keeps its limits).
ENDLESS_CAP = 16 << 20
# Beyond the two socket buffers, bytes a client may have handed over that the server has not read
# (`unread_bound`): a send may overshoot the send buffer by a segment's worth, and the server's TLS
# layer holds up to one read's worth of records it has not decrypted yet.
_BUFFER_SLACK = 1 << 18
_SIZE_PARAMETER = re.compile(r"\sSIZE=(\d+)", re.IGNORECASE)


def unread_bound(receive_buffer: int | None) -> int | None:
    """At most how many bytes a client on this machine can have handed to its kernel that a
    server whose accepted sockets have SO_RCVBUF `receive_buffer` (None: autotuned) has not read
    yet: the client's send buffer, which grows up to net.ipv4.tcp_wmem's maximum when the client
    does not set SO_SNDBUF (pooledmail does not), and the server's receive buffer (twice
    SO_RCVBUF, the kernel's allowance for its overhead; autotuned, up to tcp_rmem's maximum).
    None where /proc does not say (not Linux)."""
    send = _sysctl_max("net/ipv4/tcp_wmem")
    receive = _sysctl_max("net/ipv4/tcp_rmem") if receive_buffer is None else 2 * receive_buffer
    if send is None or receive is None:
        return None
    return send + receive + _BUFFER_SLACK


def _sysctl_max(name: str) -> int | None:
    """The last (the maximum) of the numbers in /proc/sys/`name`, or None."""
    try:
        return int((Path("/proc/sys") / name).read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Fault:
    """One misdeed: `kind` (FAULTS, or HOSTILE_ONLY in `Script.acts`) at `point` (POINTS; unused
    in `Script.acts`). `data` and `delay` parametrise the hostile kinds."""

    kind: str
    point: str = ""
    data: bytes = b""
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULTS and self.kind not in HOSTILE_ONLY:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.point and self.point not in POINTS:
            raise ValueError(f"unknown fault point {self.point!r}")


@dataclass
class Script:
    """What the server answers at each point. A value is a reply line (or several, separated by
    newlines, sent as one multi-line reply), DISCONNECT, or STALL (never answer, read on)."""

    greeting: str = "220 fake.test ESMTP"
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10000000")
    ehlo: str | None = None
    # A callable gets the command line (MAIL's, RCPT's, "DATA") and returns the reply.
    mail: Callable[[str], str] | str = "250 2.1.0 ok"
    rcpt: Callable[[str], str] | str = "250 2.1.5 ok"
    data: Callable[[str], str] | str = "354 go ahead"
    # Not None: DATA is answered with `data` even when no recipient was accepted (RFC 2920 §3.1
    # allows a pipelining server to), and the lone "." line the client then sends to end it gets
    # this reply; nothing is stored. None: such a DATA is refused.
    data_without_recipients: str | None = None
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
    # TLS from the first byte (implicit TLS, RFC 8314 §3.3) with `tls_context`, instead of
    # STARTTLS.
    implicit_tls: bool = False
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
    # One fault, struck the first time the session reaches `fault.point`.
    fault: Fault | None = None
    # A fault for each reply of the connection in order (the greeting is reply 0); replies past
    # the end are normal.
    acts: Sequence[Fault] = ()
    # A "body" fault strikes once this many bytes of message data have been read (a disconnect,
    # rst or 421 only if it can strike before the terminator: see `_Session._body_fault`).
    body_fault_after: int = 1 << 16
    # Seconds (or a function giving them) to wait before each reply: a server with latency.
    reply_delay: float | Callable[[], float] = 0.0


@dataclass
class Connection:
    reads: list[bytes] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    # Messages the server stored (see the module docstring).
    messages: list[bytes] = field(default_factory=list)
    closed_by_client: bool = False
    # The faults this connection committed, in order, as (kind, point or reply number).
    faults: list[tuple[str, str]] = field(default_factory=list)
    # True once a fault in DESYNC was committed: from then on replies and commands no longer pair.
    desynced: bool = False
    # Bytes of "endless" lines written before the client went away.
    endless_bytes: int = 0
    # The session is over (the connection closed), or stopped reading for good (a stall during
    # the body): either way the record of what it received is final.
    ended: bool = False
    frozen: bool = False

    @property
    def received_bytes(self) -> bytes:
        return b"".join(self.reads)


class FakeSMTPServer:
    """Serves `script_for(n)` to the n-th connection (0-based)."""

    def __init__(
        self,
        script_for: Callable[[int], Script] | Script,
        *,
        receive_buffer: int | None = None,
    ) -> None:
        self._script_for = script_for if callable(script_for) else (lambda _n: script_for)
        # SO_RCVBUF for accepted connections (None: the kernel's autotuning). A small one makes a
        # server that stops reading stop the client's writes sooner.
        self.receive_buffer = receive_buffer
        self.connections: list[Connection] = []
        self.port = 0
        self.accepting = True
        # TCP connections accepted, including those closed at once while not `accepting`, and
        # when (anyio.current_time(): virtual under trio's MockClock).
        self.attempts = 0
        self.attempt_times: list[float] = []
        # Messages whose terminator arrived, stored or not, numbered across connections.
        self.received = 0
        self.sessions: list[_Session] = []
        # Set while `running()` stops: a session that starts then is cut at once.
        self._stopping = False

    @property
    def messages(self) -> list[bytes]:
        return [m for c in self.connections for m in c.messages]

    def reset(self, index: int) -> None:
        """Reset connection `index` now (SO_LINGER 0, no FIN, nothing more read): what it had
        not read is lost, and the client's next write fails."""
        session = self.sessions[index]
        session.reset_now = True
        session.scope.cancel()

    def pause(self, index: int) -> None:
        """Connection `index` stops reading (flow control stops the client once the buffers
        are full) until `resume(index)`; it then reads on and answers as before, as a server
        that was only slow does."""
        self.sessions[index].gate = anyio.Event()

    def resume(self, index: int) -> None:
        gate = self.sessions[index].gate
        self.sessions[index].gate = None
        if gate is not None:
            gate.set()

    def cut(self) -> None:
        """Drop every session at once, as a server that goes down does: no more replies, a FIN,
        and the bytes the client still sends are recorded until it leaves (`_Session.hang_up`).
        The listener stays; set `accepting` False to have new connections closed as soon as
        they are accepted."""
        for session in self.sessions:
            session.scope.cancel()

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[FakeSMTPServer]:
        """Listen on 127.0.0.1 until the block ends; then every session is cut off as `cut()`
        does, as a server that stops (a later `running(port=server.port)` is the same server
        restarted)."""
        listener = await anyio.create_tcp_listener(
            local_host="127.0.0.1", local_port=port, reuse_port=False
        )
        if self.receive_buffer is not None:
            for sock_listener in listener.listeners:
                raw = sock_listener.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._stopping = False
        try:
            async with anyio.create_task_group() as tg:
                accepting = anyio.CancelScope()
                stopped_accepting = anyio.Event()

                async def accept(one: anyio.abc.SocketListener) -> None:
                    while True:
                        stream = await one.accept()
                        # Stamped here, as the connection is accepted, rather than when its
                        # session's task first runs, a scheduler turn or more later.
                        tg.start_soon(self._serve, stream, anyio.current_time())

                async def serve() -> None:
                    try:
                        with accepting:
                            async with anyio.create_task_group() as acceptors:
                                for one in listener.listeners:
                                    acceptors.start_soon(accept, one)
                    finally:
                        stopped_accepting.set()

                tg.start_soon(serve)
                try:
                    yield self
                finally:
                    # Stop as a server does: the port first (a connection attempt from now on
                    # is refused), then every session is cut, and each hangs up (`cut()`).
                    accepting.cancel()
                    with anyio.CancelScope(shield=True):
                        await stopped_accepting.wait()
                        await listener.aclose()
                    self._stopping = True
                    self.cut()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def _serve(self, stream: anyio.abc.ByteStream, accepted_at: float) -> None:
        self.attempts += 1
        self.attempt_times.append(accepted_at)
        if not self.accepting:
            await anyio.aclose_forcefully(stream)
            return
        record = Connection()
        self.connections.append(record)
        script = self._script_for(len(self.connections) - 1)
        session = _Session(stream, script, record, self)
        self.sessions.append(session)
        if self._stopping:
            session.scope.cancel()  # accepted just before the server stopped: cut it too
        try:
            with (
                session.scope,
                contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError),
            ):
                await session.run()
        finally:
            if session.reset_now:
                session._arm_reset()
            elif session.scope.cancel_called and not session.graceful:
                with anyio.move_on_after(1, shield=True):
                    await session.hang_up()
            record.ended = True
            with anyio.move_on_after(1, shield=True), contextlib.suppress(Exception):
                if session.graceful:
                    await session.stream.aclose()
                else:
                    # A fault: the transport goes at once, without a TLS close_notify.
                    await anyio.aclose_forcefully(session.stream)


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
        self.buffer = bytearray()
        self.scope = anyio.CancelScope()  # cancelled by FakeSMTPServer.cut()
        # Set by FakeSMTPServer.reset(): the session ends with a reset instead of hanging up.
        self.reset_now = False
        # Set by FakeSMTPServer.pause(): no read until it is set.
        self.gate: anyio.Event | None = None
        # Whether the connection ended the way a server ends it on purpose (QUIT, refusal).
        self.graceful = False
        self._replies = 0  # replies given (or due) so far: the index into `script.acts`
        self._fault_left = script.fault
        # A "body" fault that could not strike before the terminator: it strikes at the reply
        # due next instead, the one that answers the data (`_body_fault`).
        self._deferred: Fault | None = None
        self._message_bytes = 0  # message data read in the transaction under way
        self._declared_size = 0  # SIZE= of the transaction's MAIL (RFC 1870), 0 if none
        extensions = [e.upper() for e in script.extensions] + (script.ehlo or "").upper().split()
        self._pipelining = any(e.split(" ", 1)[0] == "PIPELINING" for e in extensions)
        # Whether the client may send more before it waits for a reply (`_command`).
        self._more_coming = False

    # -- faults --------------------------------------------------------------------------------

    def _take(self, point: str) -> Fault | None:
        """The fault for the reply due now at `point`, if any (each reply due calls this once)."""
        index = self._replies
        self._replies += 1
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            return deferred
        fault = self._fault_left
        if fault is not None and fault.point and fault.point == point:
            self._fault_left = None
            self.record.faults.append((fault.kind, point))
            return fault
        acts = self.script.acts
        if index < len(acts) and acts[index].kind != "normal":
            self.record.faults.append((acts[index].kind, str(index)))
            return acts[index]
        return None

    @staticmethod
    def _meant(fault: Fault | None, point: str, normal: str) -> str:
        """The reply the server means to give: it acts on this, whatever goes on the wire."""
        if fault is None:
            return normal
        if fault.kind == "421":
            return CLOSING
        if fault.kind == "4xx":
            return REFUSALS.get(point, _OTHER_REFUSALS)[0]
        if fault.kind == "5xx":
            return REFUSALS.get(point, _OTHER_REFUSALS)[1]
        return normal

    async def _respond(self, point: str, normal: str) -> str:
        """Answer at `point` as the script says; returns the reply the server means."""
        fault = self._take(point)
        meant = self._meant(fault, point, normal)
        await self._perform(fault, meant)
        return meant

    async def _perform(self, fault: Fault | None, meant: str, extra: bytes = b"") -> None:
        await self._pause()
        if fault is None:
            await self._answer(meant, extra)
            return
        kind = fault.kind
        if kind in DESYNC:
            self.record.desynced = True
        if kind == "disconnect":
            await self.hang_up()
            raise _Stop
        if kind == "rst":
            await self._rest_of_flight()
            if self.record.desynced:
                # The client may have run ahead on a reply meant for something else, past what
                # its flight says: receive what still arrives too (judged leniently, see DESYNC).
                await self._drain()
            self._arm_reset()
            raise _Stop
        if kind == "421":
            await self._answer(meant)
            await self.hang_up()
            raise _Stop
        if kind in ("4xx", "5xx", "normal"):
            await self._answer(meant, extra)
        elif kind == "stall":
            await self._read_on()
        elif kind in ("malformed", "wrong_code"):
            if _misleads(fault.data, meant):
                self.record.desynced = True
            await self.stream.send(fault.data or MALFORMED)
        elif kind == "extra":
            await self._answer(meant, extra + (fault.data or EXTRA))
        elif kind == "missing":
            pass
        elif kind == "drip":
            for byte in _wire(meant) + extra:
                await self.stream.send(bytes([byte]))
                await anyio.sleep(fault.delay)
        elif kind == "overlong":
            # One reply line longer than a client's limit (RFC 5321 §4.5.3.1.5 says 512 octets).
            size = len(fault.data) or 4096
            await self.stream.send(meant[:3].encode() + b" " + b"x" * size + b"\r\n")
        elif kind == "endless":
            await self._endless(meant[:3].encode() + b"-")
        elif kind == "late":
            await self._answer(meant, extra)
            await anyio.sleep(fault.delay)
            await self.stream.send(fault.data or EXTRA)
        else:  # pragma: no cover - Fault validates its kind
            raise AssertionError(kind)

    async def _endless(self, start: bytes) -> None:
        await self.stream.send(start)
        filler = b"x" * 65536
        while self.record.endless_bytes < ENDLESS_CAP:
            await self.stream.send(filler)
            self.record.endless_bytes += len(filler)
        await self._read_on()

    async def _pause(self) -> None:
        delay = self.script.reply_delay
        seconds = delay() if callable(delay) else delay
        if seconds:
            await anyio.sleep(seconds)

    def _arm_reset(self) -> None:
        raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    # -- reading -------------------------------------------------------------------------------

    async def _read_on(self) -> None:
        """Never answer again, but go on receiving (and recording) until the client leaves."""
        while True:
            await self._read()

    async def _drain(self, idle: float = 0.005) -> None:
        """Receive until `idle` seconds pass with nothing read. Best effort only: a client stalled
        longer than that still has bytes on their way (`_rest_of_flight` is what is exact)."""
        while True:
            with anyio.move_on_after(idle):
                await self._read()
                continue
            return

    async def _rest_of_flight(self) -> None:
        """Receive (and record) what the client still sends before it must wait for a reply: the
        rest of a pipelined group of commands, BDAT chunks included. Then nothing the client
        handed over is left unread when the server resets, and the client meets the reset while
        it waits. Bounded by the client: it sends no more than its flight, and leaves when no
        reply comes in its time."""
        while self._more_coming:
            line = await self._line()
            if self._command(line) == "BDAT":
                size = int(line.split()[1])
                while len(self.buffer) < size:
                    await self._read()
                del self.buffer[:size]

    async def hang_up(self) -> None:
        """End a session the server drops (a disconnect or 421 fault, `cut()`, the server
        stopping): no more replies, a FIN, and then go on receiving until the client leaves.
        Whatever the client handed to its transport before it saw the FIN reaches the record, so
        the record says exactly what reached the server (closing at once would have the kernel
        reset bytes already on their way, and a client that wrote its terminator just then could
        not know either way)."""
        transport = (
            self.stream.transport_stream if isinstance(self.stream, TLSStream) else self.stream
        )
        with contextlib.suppress(Exception):
            await transport.send_eof()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await self._read_on()

    async def _freeze(self) -> None:
        """Stop reading for good (flow control: the client's writes stop once buffers fill)."""
        self.record.frozen = True
        await anyio.sleep_forever()

    async def _read(self) -> None:
        while self.gate is not None:
            await self.gate.wait()
        try:
            chunk = await self.stream.receive(65536)
        except anyio.EndOfStream:
            self.record.closed_by_client = True
            raise _Stop from None
        self.record.reads.append(chunk)
        self.buffer += chunk

    async def _line(self) -> str:
        searched = 0
        while (end := self.buffer.find(b"\r\n", searched)) < 0:
            searched = max(0, len(self.buffer) - 1)
            await self._read()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line.decode("utf-8", "replace")

    async def _message_data(
        self, end: Callable[[bytearray, int], int], chunk_size: int = 0
    ) -> tuple[bytes, bool]:
        """Read message data until `end(buffer, searched)` finds where it ends (an index, or -1);
        `chunk_size`: the size of the BDAT chunk being read (0 on DATA).

        A "body" fault strikes once `body_fault_after` bytes of the message were read. Returns
        the data and whether a "body" refusal already answered the message (then it is read to
        its end and discarded, and no other reply is due for it).
        """
        refused = False
        searched = 0
        while (stop := end(self.buffer, searched)) < 0:
            searched = len(self.buffer)
            fault = self._fault_left
            if (
                fault is not None
                and fault.point == "body"
                and self._message_bytes + len(self.buffer) >= self.script.body_fault_after
            ):
                self._fault_left = None
                self.record.faults.append((fault.kind, "body"))
                refused = await self._body_fault(fault, max(0, chunk_size - len(self.buffer)))
            await self._read()
        data = bytes(self.buffer[:stop])
        del self.buffer[:stop]
        self._message_bytes += len(data)
        return data, refused

    async def _body_fault(self, fault: Fault, chunk_rest: int) -> bool:
        """Strike during the body; True if the message stands refused by an early reply.
        `chunk_rest`: bytes of the BDAT chunk being read that have not arrived yet."""
        kind = fault.kind
        if kind in DESYNC:
            self.record.desynced = True
        if kind == "stall":
            await self._freeze()
        if kind in ("disconnect", "rst", "421"):
            # The connection lost mid-transfer: the server stops reading and closes at once,
            # which with bytes unread is a reset on the wire whatever the kind (RFC 1122
            # §4.2.2.13), so the client's next write fails. The reset discards what the client
            # handed to its kernel and the server had not read; the record cannot hold those
            # bytes, so the fault strikes only when none of them can be the terminator: when
            # what is still to come before the terminator's last byte is more than both
            # kernels can hold. Otherwise it strikes at the reply that answers the data, once
            # the server has read it all (the client has then handed its terminator over, and
            # meets the fault while it waits, as after "data_end"); the message is not stored.
            if not self._terminator_unsent(chunk_rest):
                self._deferred = fault
                return False
            if kind == "rst":
                self._arm_reset()
            elif kind == "421":
                await self._answer(CLOSING)
            raise _Stop
        if kind in ("4xx", "5xx"):
            # Refused while the data still comes: the reply answers the message (or the chunk)
            # being read, whose rest is read and thrown away (RFC 5321 §4.2.5 wants the server
            # to read to the end; RFC 3030 §2 the same for a chunk).
            await self._answer(self._meant(fault, "body", ""))
            return True
        if kind == "malformed":
            await self.stream.send(fault.data or MALFORMED)
        elif kind == "extra":
            await self.stream.send(fault.data or EXTRA)
        # "missing": there is no reply due during the body; nothing to leave out.
        return False

    def _terminator_unsent(self, chunk_rest: int) -> bool:
        """Whether the client cannot have handed the last byte of its terminator to its kernel
        yet: more is still to come before it than the kernels can hold unread (`unread_bound`).
        What is to come is at least the rest of the chunk being read, and at least the size the
        client declared (RFC 1870: SIZE=, the message after CRLF normalisation, which dot
        stuffing and the terminator only lengthen on the wire; pooledmail declares it exactly)
        less the data received so far."""
        bound = unread_bound(self.server.receive_buffer)
        if bound is None:
            return False
        received = self._message_bytes + len(self.buffer)
        return max(chunk_rest, self._declared_size - received) > bound

    def _command(self, line: str) -> str:
        """Record a command line and return its verb; note whether the client may send more
        before it waits for a reply (`_rest_of_flight`): with PIPELINING, MAIL and RCPT may be
        followed by more of the same group, and anything else ends it (RFC 2920 §3.1; RSET may
        also start a group, but the client under test always waits after RSET), and BDAT chunks
        follow one another up to the LAST (RFC 3030 §4.2)."""
        verb = line.split(" ", 1)[0].upper()
        self.record.commands.append("AUTH" if verb == "AUTH" else line)
        if verb == "MAIL":
            size = _SIZE_PARAMETER.search(line)
            self._declared_size = int(size.group(1)) if size else 0
        last = verb == "BDAT" and line.upper().split()[2:3] == ["LAST"]
        self._more_coming = self._pipelining and (
            verb in ("MAIL", "RCPT") or (verb == "BDAT" and not last)
        )
        return verb

    # -- replies -------------------------------------------------------------------------------

    async def _answer(self, reply: str, extra: bytes = b"") -> None:
        if reply == DISCONNECT:
            await self.hang_up()
            raise _Stop
        if reply == STALL:
            await self._read_on()
        await self.stream.send(_wire(reply) + extra)

    async def _final(self, message: bytes, refusal: str | None = None) -> None:
        """Answer a message's terminator as the script says, storing the message first if the
        server means to accept it. `refusal`: the reply a "body" fault already gave."""
        number = self.server.received
        self.server.received += 1
        self._message_bytes = 0
        if refusal is not None:
            return
        data_end = self.script.data_end
        normal = data_end(number) if callable(data_end) else data_end
        fault = self._take("data_end")
        meant = self._meant(fault, "data_end", normal)
        # A "body" fault deferred to this reply gave the message up (`_body_fault`).
        given_up = fault is not None and fault.point == "body"
        if not given_up and not meant.startswith(("4", "5")):
            self.record.messages.append(message)
        extra = self.script.extra_after(number) if self.script.extra_after else b""
        await self._perform(fault, meant, extra)
        limit = self.script.close_after_messages
        if limit is not None and len(self.record.messages) >= limit:
            if self.script.close_with_reset:
                self._arm_reset()
            raise _Stop

    async def run(self) -> None:
        try:
            await self._run()
        except _Stop:
            return

    async def _run(self) -> None:
        script = self.script
        if script.implicit_tls:
            assert script.tls_context is not None
            self.stream = await TLSStream.wrap(
                self.stream, server_side=True, ssl_context=script.tls_context
            )
        if script.raw_greeting is not None:
            await self.stream.send(script.raw_greeting)
            await self._read_on()
        if script.drip_greeting:
            for byte in f"{script.greeting}\r\n".encode():
                await self.stream.send(bytes([byte]))
                await anyio.sleep(script.drip_greeting)
            greeting = script.greeting
        else:
            greeting = await self._respond("greeting", script.greeting)
        if not greeting.startswith("220"):
            self.graceful = True
            return
        tls_on = False
        ehlo_done = False
        # Like a real server: RCPT needs an accepted MAIL, DATA/BDAT an accepted RCPT.
        mail_ok = False
        rcpts_ok = 0
        chunks = b""  # BDAT chunks of the message in progress
        # A refusal that answers the rest of the BDAT transaction under way (RFC 3030 §2).
        chunk_refusal: str | None = None
        while True:
            line = await self._line()
            verb = self._command(line)
            if verb == "EHLO":
                if script.ehlo is not None:
                    await self._respond("ehlo", script.ehlo)
                    continue
                exts = [e for e in script.extensions if not (tls_on and e == "STARTTLS")]
                reply = "\n".join(["250 fake.test", *(f"250 {e}" for e in exts)])
                # Only the first EHLO is a fault point (the one before STARTTLS).
                await self._respond("" if ehlo_done else "ehlo", reply)
                ehlo_done = True
            elif verb == "HELO":
                await self._respond("", "250 fake.test")
            elif verb == "STARTTLS":
                fault = self._take("starttls")
                meant = self._meant(fault, "starttls", script.starttls)
                await self._perform(fault, meant, script.starttls_injection)
                if not meant.startswith("220") or script.tls_context is None:
                    continue
                self.buffer.clear()  # RFC 3207 §4.2: nothing from before TLS counts after it
                self.stream = await TLSStream.wrap(
                    self.stream, server_side=True, ssl_context=script.tls_context
                )
                tls_on = True
            elif verb == "AUTH":
                await self._respond("auth", script.auth)
            elif verb == "MAIL":
                meant = await self._respond("mail", _reply_to(script.mail, line))
                mail_ok = meant.startswith("250")
                rcpts_ok, chunks, chunk_refusal, self._message_bytes = 0, b"", None, 0
            elif verb == "RCPT":
                rcpt = script.rcpt
                normal = rcpt(line) if callable(rcpt) else rcpt
                if not mail_ok:
                    normal = "503 5.5.1 need MAIL first"
                meant = await self._respond("rcpt", normal)
                rcpts_ok += meant.startswith("250")
            elif verb == "DATA":
                if not rcpts_ok:
                    if script.data_without_recipients is None:
                        await self._respond("data", "554 5.5.1 no valid recipients")
                        continue
                    meant = await self._respond("data", _reply_to(script.data, line))
                    mail_ok = False
                    if meant.startswith("354"):
                        while await self._line() != ".":
                            pass  # data for nobody: read to its end, store nothing
                        await self._respond("", script.data_without_recipients)
                    continue
                meant = await self._respond("data", _reply_to(script.data, line))
                mail_ok, rcpts_ok = False, 0
                if not meant.startswith("354"):
                    continue
                if script.stop_reading_in_body:
                    await self._freeze()
                body, refused = await self._message_data(_find_dot_line)
                del self.buffer[:5]  # the "\r\n.\r\n" that ended it
                refusal = "early" if refused else None
                await self._final(body + b"\r\n", refusal)
            elif verb == "BDAT":
                if script.stop_reading_in_body:
                    await self._freeze()
                parts = line.split()
                size = int(parts[1])
                last = len(parts) > 2 and parts[2].upper() == "LAST"
                chunk, refused = await self._message_data(
                    lambda buffer, _searched, size=size: size if len(buffer) >= size else -1,
                    size,
                )
                if refused:
                    chunk_refusal = chunk_refusal or "early"
                    if last:
                        await self._final(b"", "early")
                        mail_ok, rcpts_ok = False, 0
                    continue
                if not rcpts_ok:
                    await self._respond("data_end" if last else "data", "554 5.5.1 no recipients")
                elif chunk_refusal is not None:
                    # The transaction failed earlier: every later chunk is refused too.
                    if last:
                        self.server.received += 1
                        mail_ok, rcpts_ok = False, 0
                    await self._respond("", "554 5.5.1 transaction already failed")
                elif last:
                    mail_ok, rcpts_ok = False, 0
                    await self._final(chunks + chunk)
                    chunks = b""
                else:
                    meant = await self._respond("data", script.bdat)
                    if meant.startswith("250"):
                        chunks += chunk
                    else:
                        chunk_refusal = meant
            elif verb == "RSET":
                mail_ok, rcpts_ok, chunks, chunk_refusal = False, 0, b"", None
                await self._respond("", script.rset)
            elif verb == "NOOP":
                await self._respond("", script.noop)
            elif verb == "QUIT":
                await self._respond("", "221 2.0.0 bye")
                self.graceful = True
                return
            else:
                await self._respond("", "500 5.5.1 unknown command")


def _reply_to(reply: Callable[[str], str] | str, line: str) -> str:
    return reply(line) if callable(reply) else reply


def _wire(reply: str) -> bytes:
    """A reply as the server writes it: "code-text" lines and a last "code text" line."""
    lines = reply.split("\n")
    code = lines[0][:3]
    return "".join(
        f"{code}{'-' if i < len(lines) - 1 else ' '}{line[4:]}\r\n" for i, line in enumerate(lines)
    ).encode()


def _misleads(data: bytes, meant: str) -> bool:
    """Whether `data`, sent instead of the reply `meant`, may read as a reply other than it: a
    line with a code of another class, the start of a multi-line reply, or several lines of
    which one has a code (conservatively: a line without a code makes the client give up)."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    coded = [line for line in lines if line[:3].isdigit()]
    if not coded:
        return False
    if len(lines) > 1:
        return True
    line = coded[0]
    return line[3:4] == b"-" or line[:1] != meant[:1].encode()


def _find_dot_line(buffer: bytearray, searched: int) -> int:
    """Where the "\\r\\n.\\r\\n" that ends DATA starts (the CRLF before the dot ends the last
    line, RFC 5321 §4.1.1.4), or -1; `searched` bytes were looked at before."""
    return buffer.find(b"\r\n.\r\n", max(0, searched - 4))
