"""A lean plain-TCP byte stream for trio: the trio counterpart of `_stream.AsyncioSocketStream`.

Why it exists: anyio's trio stream goes through trio's socket wrapper, which yields to the
scheduler after every successful `send` and `recv` (a checkpoint per call, so four per message),
and the driver then had to bound each exchange with an anyio cancel scope; replacing both took
the instructions per message sent to smtp-sink from 536k to 319k (bench/bench_driver.py under
callgrind). This stream calls the non-blocking socket directly and waits
with `trio.lowlevel.wait_readable` / `wait_writable` only when the kernel has nothing to give or
no room to take. The first `receive()` after a `send()` yields to the scheduler once before it
reads: by then the reply to what was just written is usually there, so neither a failed `recv`
nor a wait (each wait re-arms trio's epoll registration, one `epoll_ctl`) is paid for it. With 8
connections to smtp-sink this took the system calls a message from 8.25 to 6.25 (strace -c) and
the rate from 0.36-0.50 to 0.59-0.71 of the bare anyio-trio loop's (bench/bench_driver.py). Its
time limit is a `deadline` attribute, enforced by one watchdog task per trio run, as the asyncio
stream's is by one timer per stream.

The semantics are those of `AsyncioSocketStream` (see `_stream`), and `tests/anyio/test_stream.py`
holds both to them:

* `receive()` returns what the kernel holds, up to `max_bytes`; then raises `EndOfStream` after
  the peer's FIN, `BrokenResourceError` (chained to the `OSError`) after a reset,
  `ClosedResourceError` after our own `aclose()`. It yields to the scheduler once per call, whether
  it had to wait or not: a server that answers at once cannot let one sender hold the run.
* `send()` returns once the kernel took every byte. When the kernel takes them at once it does not
  yield (the `receive()` that follows every flight does), and so does not notice a pending
  cancellation either: the task meets it at its next wait. A `send()` that raised, timed out or
  was cancelled hands nothing more over: the bytes not yet taken stay in memory.
* A cancelled or timed-out `receive()` loses nothing: the bytes stay in the kernel.
* `aclose()` closes the socket at once, wakes a waiting `receive()` or `send()` with
  `ClosedResourceError`, and is idempotent. Concurrent receives (or sends) raise
  `BusyResourceError`.

The watchdog ends a wait that outlives its stream's `deadline` with `trio.lowlevel.notify_closing`,
which wakes the task blocked on the socket without closing it; the stream turns that into
`DeadlineExceeded` and stays usable. It runs only while a stream of the run is open (the last
one to close ends it). The watchdog is lazy, as the asyncio timer is: it sleeps
until the earliest deadline it was armed for and, when it wakes, ends the waits whose deadline has
really passed and sleeps again until the earliest of the others. The driver moves deadlines
forward on every flight, which costs nothing here: only a deadline earlier than the watchdog's
alarm moves the alarm.
"""

from __future__ import annotations

import math
import select
import socket
from collections.abc import Awaitable, Callable

import anyio.abc
import trio

import anyio

from ._stream import DeadlineExceeded, DeadlineSocketStream

__all__ = ["TrioSocketStream", "connect_tcp_trio"]

# Happy eyeballs (RFC 8305) delay, the same as anyio.connect_tcp's default.
_HAPPY_EYEBALLS_DELAY = 0.25
# What `unusable()` polls for: data or an end of stream (POLLIN; POLLRDHUP for a FIN), or an error
# or reset (POLLERR and POLLHUP are always reported).
_POLL_FLAGS = select.POLLIN | getattr(select, "POLLRDHUP", 0)

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_notify_closing = trio.lowlevel.notify_closing
_yield = trio.lowlevel.cancel_shielded_checkpoint
_checkpoint = trio.lowlevel.checkpoint


class _Watchdog:
    """Ends the waits of `TrioSocketStream`s that go on past their deadline, for one trio run.

    It runs only while some stream of this run is open: the first stream starts it (a trio
    system task) and the last one to close stops it, so that when a pool's `async with` exits,
    after closing every connection, nothing of it is left running.
    """

    def __init__(self) -> None:
        # The streams waiting with a finite deadline right now.
        self.waiting: set[TrioSocketStream] = set()
        # When the watchdog wakes next: no later than the deadline of any stream in `waiting`
        # at the time it started to wait.
        self.alarm = math.inf
        # Streams of this run not yet closed; the task runs while there is one.
        self.open_streams = 0
        self._running = False
        self._scope: trio.CancelScope | None = None

    def opened(self) -> None:
        self.open_streams += 1
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self.run, name="pooledmail stream watchdog")

    def closed(self) -> None:
        self.open_streams -= 1
        if not self.open_streams and self._scope is not None:
            self._scope.cancel()  # wake it: it sees that nothing is left and ends

    def guard(self, deadline: float) -> None:
        """Make sure the watchdog wakes no later than `deadline`."""
        if deadline < self.alarm:
            self.alarm = deadline
            if self._scope is not None:
                self._scope.deadline = deadline

    async def run(self) -> None:
        try:
            while self.open_streams:
                with trio.CancelScope(deadline=self.alarm) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope = None
                now = trio.current_time()
                alarm = math.inf
                for stream in list(self.waiting):
                    if stream.deadline <= now:
                        self.waiting.discard(stream)
                        stream._expire()
                    elif stream.deadline < alarm:
                        alarm = stream.deadline
                self.alarm = alarm
        finally:
            self._scope = None
            self._running = False


_watchdogs: trio.lowlevel.RunVar[_Watchdog] = trio.lowlevel.RunVar("pooledmail_watchdog")


def _watchdog() -> _Watchdog:
    try:
        return _watchdogs.get()
    except LookupError:
        watchdog = _Watchdog()
        _watchdogs.set(watchdog)
        return watchdog


class TrioSocketStream(DeadlineSocketStream):
    """Plain TCP over a trio-managed socket; see the module docstring for its semantics.

    `deadline` (trio's clock, default infinity) bounds every wait of `receive()` and `send()`: a
    wait still going on at the deadline raises `DeadlineExceeded`.
    """

    deadline: float

    def __init__(self, sock: socket.socket, owner: anyio.abc.SocketStream | None = None) -> None:
        # `owner` is the stream `sock` came from (anyio's), kept so that nothing closes the
        # socket behind this one's back when it is collected.
        self._sock = sock
        self._owner = owner
        self._closed = False
        self._expired = False
        self._receiving = False
        self._sending = False
        # Waits in progress (a receive and a send may wait at once): the stream leaves the
        # watchdog's `waiting` only when the last of them ends.
        self._waits = 0
        self.deadline = math.inf
        self._watchdog = _watchdog()
        self._watchdog.opened()
        self._poll: select.poll | None = None
        # A send() completed since the last receive() began.
        self._sent = False

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock

    def _expire(self) -> None:
        # Called by the watchdog for a stream that waits past its deadline.
        self._expired = True
        _notify_closing(self._sock)

    def _broken(self, error: OSError) -> Exception:
        if self._closed:
            return anyio.ClosedResourceError()
        broken = anyio.BrokenResourceError()
        broken.__cause__ = error
        return broken

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        """Wait until the socket is readable (or writable), within `deadline`."""
        deadline = self.deadline
        watchdog = self._watchdog
        if not self._waits:
            self._expired = False
        self._waits += 1
        if deadline != math.inf:
            watchdog.waiting.add(self)
            if deadline < watchdog.alarm:
                watchdog.guard(deadline)
        try:
            await wait(self._sock)
        except trio.ClosedResourceError:
            if self._closed:
                raise anyio.ClosedResourceError from None
            if self._expired:
                raise DeadlineExceeded("the peer did not answer in time") from None
            raise
        finally:
            self._waits -= 1
            if not self._waits:
                watchdog.waiting.discard(self)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._closed:
            raise anyio.ClosedResourceError
        if self._receiving:
            raise anyio.BusyResourceError("reading from")
        self._receiving = True
        try:
            sock = self._sock
            waited = False
            if self._sent:
                # Just after a write the reply is not there yet; after one turn of the
                # scheduler (the other tasks' work, and a look at the kernel's events) it
                # usually is. Yielding first saves the failed recv() before a wait, and the
                # wait itself: trio re-arms its epoll registration (one epoll_ctl) per wait.
                # It is a cancellation point, as the wait was (nothing is read yet, so nothing
                # is lost): without it a send on a warm pool, whose reply is there by then,
                # would never notice a cancellation.
                self._sent = False
                await _checkpoint()
                waited = True
            while True:
                try:
                    data = sock.recv(max_bytes)
                    break
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise self._broken(exc) from None
                await self._wait(_wait_readable)
                waited = True
            if not waited:
                # The bytes were there at once: still let the other tasks run (see above).
                await _yield()
        finally:
            self._receiving = False
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._sending:
            raise anyio.BusyResourceError("writing to")
        self._sending = True
        try:
            sock = self._sock
            view: memoryview | bytes = item
            remaining = len(item)
            while True:
                try:
                    sent = sock.send(view)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise self._broken(exc) from None
                remaining -= sent
                if not remaining:
                    self._sent = True
                    return
                if sent:
                    view = memoryview(view)[sent:]
                await self._wait(_wait_writable)
        finally:
            self._sending = False

    def unusable(self) -> str | None:
        """Whether anything arrived unasked or the connection ended, asked of the kernel without
        blocking: "out_of_sync" for unread bytes, "stale" for an end of stream, a reset or a
        close, None when it looks usable. One `poll` system call when nothing is pending."""
        if self._closed:
            return "stale"
        poll = self._poll
        if poll is None:
            poll = self._poll = select.poll()
            poll.register(self._sock, _POLL_FLAGS)
        if not poll.poll(0):
            return None
        try:
            peeked = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return "stale"
        return "out_of_sync" if peeked else "stale"

    async def send_eof(self) -> None:
        if not self._closed:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise self._broken(exc) from None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._watchdog.waiting.discard(self)
            self._watchdog.closed()
            # Wakes a task waiting on the socket (it raises ClosedResourceError), then closes.
            _notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()


async def connect_tcp_trio(host: str, port: int) -> TrioSocketStream:
    """A plain TCP stream to `host:port` on trio (TCP_NODELAY set), with happy eyeballs."""
    stream = await anyio.connect_tcp(host, port, happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY)
    return TrioSocketStream(stream.extra(anyio.abc.SocketAttribute.raw_socket), stream)
