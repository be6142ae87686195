"""A large message broken at every write: each verdict true, no suspect connection pooled.

A message larger than the driver's write slice, sent over STARTTLS and over implicit TLS, on the
DATA path (the dot-stuffed body, then the "." line) and on the BDAT path (several chunks, one
larger than the coalescing limit so that its data goes in writes of its own). The write slice is
made small (`_WRITE_SLICE`) so that the message takes a dozen writes; the driver's TCP stream is
tapped so that a fault strikes exactly before (or, for "cancel-pending", right after) the k-th
write the transaction hands to it, for every k:

* cancel: the caller's cancellation, taken before write k reaches the stream below TLS;
* cancel-pending: write k goes out and the cancellation is requested after it, to be met at the
  driver's next wait (the rest may still leave first);
* reset: the server resets the connection (no FIN, nothing more read) and the client's stream has
  seen it: write k fails;
* stall: the server stops reading (small socket buffers on both sides, so the client soon stops
  too) until the send has failed on `command_timeout`; it then reads on and stores what it got
  whole, as a server that was only slow does.

Each verdict is judged against the server's record (verdicts.judge): what the server stored and
whether the terminator reached it. On top of that, a fault before the last write (the one that
carries the terminator's last byte) must be "definitely not accepted" (a cancellation: not counted
as cancelled after the terminator), and a cancellation the pool counts as after the terminator
must have left the terminator in the server's record. After every fault the connection is closed,
never lent again: the pool holds nothing idle, the server saw the client close it, and the next
send opens a new one.
"""

from __future__ import annotations

import socket
import ssl
from functools import partial
from typing import Any

import anyio.abc
import anyio.lowlevel
import pytest

import anyio
import pooledmail_anyio._connection as connection_module
from pooledmail_anyio import FailureKind, Host, Limits, PoolConfig, SendFailed, SendResult, SMTPPool

from .fakesmtp import FakeSMTPServer, Script
from .verdicts import Sent, got_terminator, judge, message, settled, stored, terminator_wire

pytestmark = pytest.mark.anyio

SLICE = 16 << 10
SIZE = 120 << 10
# Two chunks: 72 KiB (above the 64 KiB coalescing limit: its data is a write of its own) and the
# rest with its `BDAT n LAST` command in one write.
CHUNK = 72 << 10
# Small buffers on both sides, so that a server that stops reading stops the client within a
# slice or two.
SEND_BUFFER = 8 << 10
RECEIVE_BUFFER = 8 << 10
FAULTS = ("cancel", "cancel-pending", "reset", "stall")
# tcpi_state of a connection that was reset (include/net/tcp_states.h).
_TCP_CLOSE = 7
PATHS = {"data": ("PIPELINING", "8BITMIME"), "bdat": ("PIPELINING", "CHUNKING", "8BITMIME")}


class Tap:
    """Counts the writes the armed transaction hands to the TCP stream; strikes at write k."""

    def __init__(self) -> None:
        self.armed = False
        self.calls = 0
        self.strike_at = -1
        self.fault = ""
        self.struck = False
        self.scope: anyio.CancelScope | None = None
        self.server: FakeSMTPServer | None = None
        self.stream: Any = None

    def arm(self, strike_at: int, fault: str, server: FakeSMTPServer) -> None:
        self.armed, self.calls, self.strike_at, self.fault = True, 0, strike_at, fault
        self.struck, self.server = False, server

    async def send(self, real_send: Any, item: bytes) -> None:
        index = -1
        if self.armed:
            index = self.calls
            self.calls += 1
            if index == self.strike_at:
                self.struck = True
                await self._before()
        await real_send(item)
        if index == self.strike_at and self.fault == "cancel-pending":
            assert self.scope is not None
            self.scope.cancel()

    async def _before(self) -> None:
        assert self.server is not None
        if self.fault == "cancel":
            assert self.scope is not None
            self.scope.cancel()
            await anyio.lowlevel.checkpoint()
        elif self.fault == "reset":
            self.server.reset(0)
            # Until the client's kernel has taken the reset (a reply the server gave to a chunk
            # may wait unread before it, so the stream's own look would say "out_of_sync").
            raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            for _ in range(10000):
                if raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE:
                    break
                await anyio.sleep(0.001)
            else:
                raise AssertionError("the client never saw the reset")
        elif self.fault == "stall":
            self.server.pause(0)


@pytest.fixture
def tap(monkeypatch: pytest.MonkeyPatch) -> Tap:
    tap = Tap()
    real_connect = connection_module.connect_tcp

    async def tapped_connect(host: str, port: int, *, read_limit: int) -> Any:
        stream = await real_connect(host, port, read_limit=read_limit)
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        tap.stream = stream
        stream.send = partial(tap.send, stream.send)  # type: ignore[method-assign]
        return stream

    monkeypatch.setattr(connection_module, "connect_tcp", tapped_connect)
    monkeypatch.setattr(connection_module, "_WRITE_SLICE", SLICE)
    return tap


async def send(pool: SMTPPool, tag: str, size: int = 0) -> Sent:
    data = message(tag, size)
    try:
        outcome: SendResult | SendFailed = await pool.send_raw(
            data, sender=f"{tag}@example.com", recipients=["b@example.com"]
        )
    except SendFailed as failure:
        outcome = failure
    return Sent(tag, data, outcome)


async def run(
    tap: Tap,
    tls: str,
    path: str,
    fault: str,
    strike_at: int,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> int:
    """One send of the large message with `fault` at write `strike_at` (-1: none), judged;
    returns how many writes the transaction handed to the stream."""
    script = Script(
        extensions=(*PATHS[path], *(("STARTTLS",) if tls == "starttls" else ())),
        tls_context=server_tls,
        implicit_tls=tls == "implicit",
    )
    server = FakeSMTPServer(script, receive_buffer=RECEIVE_BUFFER)
    name = f"{tls}-{path}-{fault}-{strike_at}"
    async with server.running():
        config = PoolConfig(
            [Host("127.0.0.1", server.port, tls=tls)],
            max_size=1,
            max_retries=0,
            connect_timeout=10.0,
            command_timeout=0.2,
            keepalive_interval=None,
            idle_timeout=None,
            max_connection_age=None,
        )
        limits = Limits(bdat_chunk_size=CHUNK)
        async with SMTPPool(config, ssl_context=client_tls, limits=limits) as pool:
            warm = await send(pool, f"{name}-warm")
            tap.arm(strike_at, fault, server)
            with anyio.CancelScope() as scope:
                tap.scope = scope
                big = Sent(f"{name}-big", message(f"{name}-big", SIZE), None)
                big = await send(pool, big.tag, SIZE)
            if scope.cancelled_caught:
                big = Sent(big.tag, big.data, None)
            tap.armed = False
            writes = tap.calls
            after = pool.statistics()
            counted = pool.send_statistics().cancelled_after_terminator
            server.resume(0)
            follow = await send(pool, f"{name}-follow")
            last = pool.statistics()
        assert await settled(server)
    sends = [warm, big, follow]
    bdat = path == "bdat"
    where = f"{name} (of {writes} writes)"
    assert isinstance(warm.outcome, SendResult), where
    assert isinstance(follow.outcome, SendResult), (where, follow.outcome)
    wrong = judge(server, sends, bdat=bdat, chunk_size=CHUNK)
    assert not wrong, (where, wrong)
    if strike_at < 0:
        assert isinstance(big.outcome, SendResult), (where, big.outcome)
        assert last.created_total == 1, where
        return writes
    assert tap.struck, where
    wire = terminator_wire(big.data, bdat=bdat, chunk_size=CHUNK)
    reached = got_terminator(server, wire)
    if big.outcome is None:
        # Cancelled: counted as after the terminator only if it reached the server; a message the
        # server stored must have been counted.
        assert not (counted and not reached), where
        assert counted or not stored(server)[big.tag], where
        if fault == "cancel":
            assert counted == 0, where  # struck before a write: the terminator cannot have left
    else:
        assert isinstance(big.outcome, SendFailed), (where, big.outcome)
        if fault == "reset":
            assert big.outcome.definitely_not_accepted, (where, big.outcome)
        if big.outcome.kind is FailureKind.UNKNOWN_AFTER_DATA:
            assert reached, where
    # The connection that failed under the send is gone, never lent again.
    assert after.idle == 0, (where, after)
    assert after.leased == 0, (where, after)
    assert last.created_total == 2, (where, last)
    assert server.connections[0].ended, where
    assert all(big.tag.encode() not in c.received_bytes for c in server.connections[1:]), where
    return writes


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_a_fault_at_every_write_of_a_large_message_over_tls(
    tap: Tap,
    tls: str,
    path: str,
    fault: str,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    writes = await run(tap, tls, path, fault, -1, server_tls, client_tls)
    # The flight, the slices of the data and the terminator's own write: well more than a few.
    assert writes >= SIZE // SLICE, writes
    for strike_at in range(writes):
        await run(tap, tls, path, fault, strike_at, server_tls, client_tls)
