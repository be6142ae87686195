"""A lean plain-TCP byte stream for asyncio, and the one function that opens a connection.

Why it exists: anyio's asyncio socket stream costs several times a plain asyncio stream per call.
Its `receive()` resumes and pauses reading around every call (two `epoll_ctl` system calls) and
returns one kernel read at a time; its `send()` yields to the event loop even when the kernel took
every byte at once. An SMTP round trip is one write and one read, so those costs are most of what
the driver pays per message. This stream is an `asyncio.BufferedProtocol` that keeps reading (up
to a bound), hands back everything buffered in one `receive()`, and yields in `send()` only while
the kernel has not taken every byte.

The bound is the connection's `Limits.max_buffered_bytes` (`connect_tcp(read_limit=...)`), and it
is exact: the bytes received and not yet returned by `receive()` never exceed it. A read goes
into the shared buffer, or into the first half-limit of it when the limit is under twice its size
(cut once per connection); once less room is left than that, a read is given only the room (the
smaller view is made then, not on every read), and when none is left reading pauses until
`receive()` takes some. What the server sends meanwhile stays in the kernel, as it does on trio.

It reads into one buffer shared by every connection of the thread: asyncio's plain `Protocol`
reads into a fresh 256 KiB `bytes` on every read, which the allocator maps, shrinks and unmaps
(three system calls per read, six per message). A buffer per connection would avoid those too, but
would cost every idle connection its size; the shared one is copied out at once, so only the bytes
that arrived are kept.

It implements `anyio.abc.SocketStream`, so anyio's `TLSStream.wrap` works on top of it (STARTTLS
and implicit TLS), and the connection code above it does not know which stream it has.

Semantics kept from anyio's streams, which the rest of the driver relies on:

* `receive()` returns buffered bytes first; then raises `EndOfStream` after the peer's FIN,
  `BrokenResourceError` (chained to the `OSError`) after a reset, `ClosedResourceError` after
  our own `aclose()`.
* `send()` returns once the kernel took every byte (no user-space write buffer left behind), and
  raises `BrokenResourceError` / `ClosedResourceError` as above.
* A cancelled `receive()` or `send()` loses nothing that was received: the bytes stay buffered.
* `aclose()` aborts the transport at once and is idempotent.
* Concurrent `receive()` calls (or concurrent `send()` calls) raise `BusyResourceError`.

What differs, deliberately: a `receive()` that finds bytes already buffered, and a `send()` that
the kernel takes at once, return without yielding to the event loop (and so without noticing a
cancellation that is pending: the task sees it at its next wait). Neither can starve the loop:
bytes reach the protocol only while the loop runs, so every round trip still waits once. Time
limits are a `deadline` attribute rather than a cancel scope (see `AsyncioSocketStream`).

On trio the driver uses `_trio_stream.TrioSocketStream`, which keeps these semantics too.
"""

from __future__ import annotations

import asyncio
import math
import select
import socket
import threading
from abc import abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio.abc
import anyio.lowlevel

import anyio
from pooledmail_core import Limits

# What `AsyncioSocketStream.unusable()` asks the kernel about: bytes or an end of stream (POLLIN;
# POLLRDHUP for a FIN); an error or a hang-up is always reported.
_POLL_FLAGS = select.POLLIN | getattr(select, "POLLRDHUP", 0)
_POLL_ENDED = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR | select.POLLNVAL

__all__ = [
    "AsyncioSocketStream",
    "DeadlineExceeded",
    "DeadlineSocketStream",
    "backend_cancel_point",
    "backend_clock",
    "connect_tcp",
]

# What a stream may hold received and not yet returned by `receive()` when its opener names no
# bound: the default `Limits.max_buffered_bytes`. The driver passes the connection's own.
_DEFAULT_READ_LIMIT = Limits().max_buffered_bytes
# Happy eyeballs (RFC 8305) delay, the same as anyio.connect_tcp's default.
_HAPPY_EYEBALLS_DELAY = 0.25
# The shared read buffer: as much as asyncio's own transports read at once.
_READ_BUFFER_SIZE = 1 << 18


class _ThreadReadBuffer(threading.local):
    """One read buffer per thread: an event loop runs its callbacks in one thread, and every read
    copies what arrived out of the buffer before the next read can start."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(_READ_BUFFER_SIZE))


_read_buffer = _ThreadReadBuffer()


class DeadlineExceeded(Exception):
    """A `receive()` or `send()` of an `AsyncioSocketStream` waited past the stream's `deadline`.

    Deliberately not an `OSError`: anyio's `TLSStream` turns an `OSError` from the stream below it
    into `BrokenResourceError`, and the driver must tell a timeout from a broken connection.
    """


class DeadlineSocketStream(anyio.abc.SocketStream):
    """A plain TCP stream that bounds its own waits and knows, without a round trip, whether it
    is still fit for another exchange: `AsyncioSocketStream` here, `TrioSocketStream` on trio.

    `deadline` (the event loop's clock, default infinity) bounds every wait of `receive()` and
    `send()`: a wait still going on at the deadline raises `DeadlineExceeded`. It does the job of
    a cancel scope around each step at a fraction of its cost.
    """

    deadline: float
    # True when the last `send()` raised (cancelled, or past its deadline) although every byte
    # of it had been handed to the kernel: the caller must count the bytes as sent. Only the
    # asyncio stream can be interrupted so (see its `send`); the trio stream returns as soon as
    # its last byte is handed over.
    handed_over_when_interrupted: bool = False

    @abstractmethod
    def unusable(self) -> str | None:
        """ "out_of_sync" when bytes arrived that nobody read, "stale" when the stream ended
        (end of stream, reset, closed), None when it looks usable. Never waits."""


class _Protocol(asyncio.BufferedProtocol):
    """Buffers what the transport delivers, never more than `read_limit` bytes not yet taken by
    `receive()`, and wakes the one waiting reader or writer."""

    __slots__ = (
        "buffered",
        "chunks",
        "drained",
        "eof",
        "exception",
        "lost",
        "narrowed",
        "read_buffer",
        "read_limit",
        "read_waiter",
        "reading_paused",
        "transport",
        "whole_reads_up_to",
        "whole_view",
        "write_waiter",
        "writing_paused",
    )

    def __init__(self, read_limit: int = _DEFAULT_READ_LIMIT) -> None:
        # Built by the event loop's thread, the only one that calls get_buffer().
        shared = _read_buffer.view
        # A read takes at most half the limit. Replies are far smaller than that, so a small limit
        # still leaves room for a whole read after each one, and the view is cut once, here,
        # rather than on every read (a limit as small as a reply costs the cut per read).
        whole = max(1, min(len(shared), read_limit // 2))
        self.whole_view = shared if whole == len(shared) else shared[:whole]
        # What get_buffer() hands out: `whole_view`, or a view of the room left under
        # `read_limit` when that is less (see `fit_reads`).
        self.read_buffer = self.whole_view
        self.read_limit = read_limit
        # While no more than this is buffered, a read into `whole_view` cannot pass the limit: the
        # one comparison the hot path pays for the bound.
        self.whole_reads_up_to = read_limit - len(self.whole_view)
        # `read_buffer` is cut short or reading is paused: `receive()` must give the room back.
        self.narrowed = False
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.lost = False
        self.exception: BaseException | None = None
        self.read_waiter: asyncio.Future[None] | None = None
        self.write_waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writing_paused = False
        # Set by resume_writing(): the transport's buffer emptied into the kernel, so every byte
        # of the waiting send() was handed over (the low-water mark is 0). connection_lost()
        # also ends a pause, with the buffer thrown away: it leaves this False.
        self.drained = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # No user-space write buffer: send() completes once the kernel took every byte, as on
        # trio, so a write timeout means the peer stopped reading.
        transport.set_write_buffer_limits(0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:
            self.exception = exc
        self.writing_paused = False
        self._wake_reader()
        self._wake_writer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(self.read_buffer[:nbytes])
        self.chunks.append(data)
        buffered = self.buffered = self.buffered + nbytes
        if buffered > self.whole_reads_up_to:
            self.fit_reads()
        self._wake_reader()

    def fit_reads(self) -> None:
        """Size the next read to the room left under `read_limit`: the whole view while it fits,
        else a view of the room alone; no room, no read (reading pauses, and what the peer sends
        meanwhile waits in the kernel). Called when a read left less room than a whole view, and
        by `receive()` after it took bytes while `narrowed`."""
        transport = self.transport
        assert transport is not None
        room = self.read_limit - self.buffered
        if room >= len(self.whole_view):
            self.read_buffer = self.whole_view
            self.narrowed = False
        else:
            self.narrowed = True
            if room > 0:
                # Never empty: asyncio refuses an empty buffer from get_buffer().
                self.read_buffer = self.whole_view[:room]
        if room <= 0:
            if not self.reading_paused:
                self.reading_paused = True
                transport.pause_reading()
        elif self.reading_paused:
            self.reading_paused = False
            # A transport already lost has nothing left to read (and asyncio ignores a resume
            # of a closing one); what was buffered is still returned before the error.
            if not self.lost:
                transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        # Keep our side open: a half-closed peer may still read what we send (RFC 5321 QUIT).
        return True

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.drained = True
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self.write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class AsyncioSocketStream(DeadlineSocketStream):
    """Plain TCP over an asyncio transport; see the module docstring for its semantics.

    `deadline` (event loop time, default infinity) bounds every wait of `receive()` and `send()`:
    a wait still going on at the deadline raises `DeadlineExceeded`. It does the job of a cancel
    scope around each step at a fraction of the cost: anyio's cancel scope on asyncio costs more
    per message than the whole stream.

    The deadline is enforced by one lazy watchdog timer per stream rather than a timer per wait:
    the driver moves the deadline forward on every step, and rescheduling a timer each time would
    cost as much as the rest of the stream. The watchdog is armed when a wait starts and none is
    armed at or before the deadline; when it fires it expires the waits if the deadline has not
    moved since it was armed, and otherwise re-arms itself at the new deadline.
    """

    deadline: float

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False
        self.deadline = math.inf
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = math.inf
        # Made by the first `unusable()` that gets as far as the kernel.
        self._poll: select.poll | None = None

    def _guard(self) -> None:
        """Make sure the watchdog fires no later than `deadline` (called as a wait starts)."""
        deadline = self.deadline
        if deadline < self._watchdog_at:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watchdog_at = deadline
            self._watchdog = self._loop.call_at(deadline, self._on_watchdog)

    def _on_watchdog(self) -> None:
        armed_at = self._watchdog_at
        self._watchdog = None
        self._watchdog_at = math.inf
        protocol = self._protocol
        waiters = [
            waiter
            for waiter in (protocol.read_waiter, protocol.write_waiter)
            if waiter is not None and not waiter.done()
        ]
        if not waiters:
            return  # nothing waits: the next wait arms the watchdog again
        if self.deadline <= armed_at:
            for waiter in waiters:
                waiter.set_exception(DeadlineExceeded("the peer did not answer in time"))
        else:
            self._guard()  # the deadline moved on while this timer was pending

    @property
    def _raw_socket(self) -> socket.socket:
        raw: socket.socket = self._transport.get_extra_info("socket")
        return raw

    def _broken(self) -> Exception:
        if self._closed:
            return anyio.ClosedResourceError()
        error = anyio.BrokenResourceError()
        error.__cause__ = self._protocol.exception
        return error

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._closed:
            raise anyio.ClosedResourceError
        protocol = self._protocol
        if not protocol.chunks:
            if protocol.read_waiter is not None:
                raise anyio.BusyResourceError("reading from")
            while not (protocol.chunks or protocol.eof or protocol.lost):
                waiter = protocol.read_waiter = self._loop.create_future()
                if self.deadline < self._watchdog_at:
                    self._guard()
                try:
                    await waiter
                finally:
                    protocol.read_waiter = None
            if not protocol.chunks:
                if self._closed:
                    raise anyio.ClosedResourceError
                if protocol.exception is not None:
                    raise self._broken()
                raise anyio.EndOfStream
        chunks = protocol.chunks
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        if len(data) > max_bytes:
            chunks.append(data[max_bytes:])
            data = data[:max_bytes]
        protocol.buffered -= len(data)
        if protocol.narrowed:
            protocol.fit_reads()  # room was freed under the read limit
        return data

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        if self._closed or protocol.lost:
            raise self._broken()
        if protocol.write_waiter is not None:
            raise anyio.BusyResourceError("writing to")
        self.handed_over_when_interrupted = False
        protocol.drained = False
        transport = self._transport
        transport.write(item)
        if transport.is_closing():
            # The write failed inside the transport (a reset, a broken pipe): asyncio reports
            # it only through connection_lost() later. Nothing of `item` can be trusted as sent.
            raise self._broken()
        if protocol.writing_paused:
            # Woken by resume_writing() or connection_lost(), which both end the pause.
            waiter = protocol.write_waiter = self._loop.create_future()
            if self.deadline < self._watchdog_at:
                self._guard()
            # Between resume_writing() (or connection_lost()) completing the waiter and this
            # task resuming, other callbacks and tasks run: a close, the read that meets a
            # reset, a cancellation. Only `drained` says what the kernel took: the transport's
            # buffer is empty both when it drained and when a reset or a close threw it away.
            try:
                await waiter
            except BaseException:
                if protocol.drained:
                    # The kernel took the last byte, but a cancellation or the deadline reached
                    # this task first: the bytes are sent, whatever happens to the stream now.
                    self.handed_over_when_interrupted = True
                elif self._transport.get_write_buffer_size():
                    # Timed out or cancelled with bytes still in the transport's buffer. Left
                    # there, they would keep leaving while the loop runs, after the caller was
                    # told the write failed: the terminator of a message could reach the server
                    # after the driver decided it never left. Abort, so that "send() did not
                    # return" always means "not every byte was handed over, and no more will
                    # be". (An empty buffer that did not drain was thrown away: nothing left.)
                    self._transport.abort()
                raise
            finally:
                protocol.write_waiter = None
            if not protocol.drained:
                # Aborted (by us or by a reset) before the kernel took every byte. Once it took
                # them, a close that came after does not unsend them: send() returns.
                raise self._broken()

    def unusable(self) -> str | None:
        """Whether anything arrived unasked or the connection ended: "out_of_sync" for unread
        bytes, "stale" for an end of stream, a reset or a close, None when it looks usable.

        First from what the transport already delivered (the protocol keeps reading while idle;
        when a flood paused it at its read limit, the bytes it holds already say "out_of_sync"),
        then, when that shows nothing, from the kernel without blocking (one `poll` system call,
        as on trio): the event loop delivers what arrived only on its next pass, and a session
        its server closed a moment ago (its FIN in the kernel, not yet in the protocol) would
        otherwise be lent, and a pipelined BDAT flight written into it whole, the message then
        UNKNOWN_AFTER_DATA although the server never had it. Found against a real Exim whose
        session process was killed while the connection was idle
        (tests/anyio/test_exim_faults.py)."""
        protocol = self._protocol
        if protocol.chunks:
            return "out_of_sync"
        if protocol.eof or protocol.lost or self._closed:
            return "stale"
        poll = self._poll
        if poll is None:
            sock = self._transport.get_extra_info("socket")
            if sock is None:
                return None
            poll = self._poll = select.poll()
            poll.register(sock.fileno(), _POLL_FLAGS)
        ready = poll.poll(0)
        if not ready:
            return None
        return "stale" if ready[0][1] & _POLL_ENDED else "out_of_sync"

    async def send_eof(self) -> None:
        if not self._closed and not self._protocol.lost:
            self._transport.write_eof()

    async def aclose(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
            self._watchdog_at = math.inf
        self._transport.abort()
        await anyio.lowlevel.checkpoint()


async def connect_tcp(
    host: str, port: int, *, read_limit: int = _DEFAULT_READ_LIMIT
) -> DeadlineSocketStream:
    """A plain TCP stream to `host:port` (TCP_NODELAY set), with happy eyeballs.

    On asyncio this is an `AsyncioSocketStream`, which holds at most `read_limit` bytes received
    and not yet returned by `receive()` (the driver passes `Limits.max_buffered_bytes`); on trio
    (anyio's only other backend) a `TrioSocketStream`, which reads only when asked, so what is
    not yet received stays in the kernel and `read_limit` has nothing to bound. Failures raise
    `OSError`, as `anyio.connect_tcp` does.
    """
    if read_limit < 1:
        raise ValueError("read_limit must be a positive integer")
    if not _on_asyncio():
        from ._trio_stream import connect_tcp_trio

        return await connect_tcp_trio(host, port)
    loop = asyncio.get_running_loop()
    protocol_factory = partial(_Protocol, read_limit)
    try:
        # An address literal needs no resolver, nor the executor thread asyncio's would start.
        addresses = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # asyncio sets TCP_NODELAY on every TCP transport it creates.
    if len(addresses) == 1:
        # One address needs no race. asyncio's happy eyeballs (staggered_race, CPython 3.10 to
        # 3.13) drops an attempt's connected socket unclosed when it is cancelled at that moment,
        # and only the garbage collector would close it: here every exit closes it.
        family, kind, proto, _, address = addresses[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        # From here the transport owns the socket (and closes it if this is cancelled).
        transport, protocol = await loop.create_connection(protocol_factory, sock=sock)
    else:
        transport, protocol = await loop.create_connection(
            protocol_factory, host, port, happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY
        )
    assert isinstance(transport, asyncio.Transport)
    return AsyncioSocketStream(transport, protocol)


def backend_clock() -> Callable[[], float]:
    """The running event loop's clock, as `anyio.current_time` reads it, without the backend
    look-up `anyio.current_time` makes on every call (it is read several times per message)."""
    if _on_asyncio():
        return asyncio.get_running_loop().time
    # anyio's only other backend is trio (an optional dependency). `trio.current_time()` asks the
    # run's clock through two more calls; the clock itself (a SystemClock, or a MockClock in
    # tests) is fixed for the whole run.
    import trio

    return trio.lowlevel.current_clock().current_time


def backend_cancel_point() -> Callable[[], Awaitable[None]]:
    """For the running backend, a coroutine function that raises the calling task's
    cancellation when the backend already knows of it, and returns at once (without yielding)
    otherwise: `checkpoint_if_cancelled` (a cancelled enclosing scope, or one whose deadline the
    loop has acted on), and on asyncio (Python 3.11 and later) also a `Task.cancel()` not
    delivered yet.

    A deadline that passed while the task did not wait is not seen: the loop acts on it at the
    task's next wait. Seeing it would take the effective deadline on every call, which walks
    every enclosing scope (on trio about 7 % more instructions a message; see
    docs/internals/design.md). Resolved once per pool, without the backend look-up anyio's
    module-level function makes on every call."""
    if _on_asyncio():
        return _asyncio_cancel_point()
    import trio

    return trio.lowlevel.checkpoint_if_cancelled


def _asyncio_cancel_point() -> Callable[[], Awaitable[None]]:
    if_cancelled: Callable[[], Awaitable[None]]
    try:
        # anyio's asyncio backend class is not a public name: anyio's own function if it moves.
        from anyio._core._eventloop import get_async_backend

        if_cancelled = get_async_backend().checkpoint_if_cancelled
    except (ImportError, AttributeError):
        if_cancelled = anyio.lowlevel.checkpoint_if_cancelled
    # The loop passed in spares current_task() its running-loop look-up, which costs a getpid()
    # system call: this runs before every attempt. The pool resolves it inside its own loop.
    loop = asyncio.get_running_loop()
    current_task = asyncio.current_task
    # Task.cancelling() is Python 3.11's: how many cancellations were requested and not taken
    # back; one not delivered yet is raised at the next yield (after one already delivered, the
    # yield is only a yield).
    cancelling: Callable[[asyncio.Task[Any]], int] | None = getattr(
        asyncio.Task, "cancelling", None
    )
    if cancelling is None:
        return if_cancelled

    async def asyncio_cancel_point() -> None:
        task = current_task(loop)
        if task is not None and cancelling(task):
            await asyncio.sleep(0)
        await if_cancelled()

    return asyncio_cancel_point


def _on_asyncio() -> bool:
    """Whether the calling task is an asyncio task. (sniffio would say so too, but anyio no
    longer depends on it; trio code never runs inside an asyncio task, even in guest mode.)"""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio event loop running in this thread
        return False
