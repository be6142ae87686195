"""`Limits.max_buffered_bytes` bounds what a flooding server can make the process hold.

On asyncio the driver's stream reads ahead of the application (into one buffer shared by the
thread), so it is held to the connection's limit: it never queues more than `read_limit` bytes
not yet returned by `receive()`, a read is never handed more room than is left under it, and at
the limit it pauses until `receive()` takes some. On trio the stream reads only when asked, so a
flood stays in the kernel. Either way a server that floods an idle pooled connection gets it
closed as out of sync, never lent, and the next send goes through a fresh connection.

The accounting is the stream's own: `_Protocol.get_buffer` and `buffer_updated` are watched, so
the peak seen is what the process really queued, not what a test happened to sample.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import anyio.abc
import pytest

import anyio
from pooledmail_anyio import Host, Limits, PoolConfig, SMTPPool
from pooledmail_anyio._stream import (
    AsyncioSocketStream,
    DeadlineSocketStream,
    _Protocol,
)

from ..polling import until
from .fakesmtp import FakeSMTPServer, Script
from .streampair import stream_pair

pytestmark = pytest.mark.anyio

# Well under the shared read buffer (256 KiB): reads are cut to half of it, then to the room left,
# so both cuts and the pause are exercised.
LIMIT = 64 * 1024
# What a flooding server tries to push: far more than LIMIT, and more than the old fixed 1 MiB
# threshold plus one read.
FLOOD = 8 << 20
FLOOD_CHUNK = 64 * 1024


@dataclass
class ReadWatch:
    """What every asyncio protocol of the test queued, seen from inside the protocol."""

    limit: int
    # The most bytes any protocol held received and not yet returned by `receive()`.
    peak: int = 0
    # Reads offered more room than was left under `limit`: (buffered, view length).
    overreach: list[tuple[int, int]] = field(default_factory=list)


@pytest.fixture
def watch_reads(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Returns `start(limit) -> ReadWatch`: from then on, every `_Protocol` read is checked."""

    def start(limit: int) -> ReadWatch:
        watch = ReadWatch(limit)
        get_buffer = _Protocol.get_buffer
        buffer_updated = _Protocol.buffer_updated

        def watched_get_buffer(self: _Protocol, sizehint: int) -> memoryview:
            view = get_buffer(self, sizehint)
            if self.buffered + len(view) > watch.limit:
                watch.overreach.append((self.buffered, len(view)))
            return view

        def watched_buffer_updated(self: _Protocol, nbytes: int) -> None:
            buffer_updated(self, nbytes)
            watch.peak = max(watch.peak, self.buffered)

        monkeypatch.setattr(_Protocol, "get_buffer", watched_get_buffer)
        monkeypatch.setattr(_Protocol, "buffer_updated", watched_buffer_updated)
        return watch

    return start


def pattern(size: int) -> bytes:
    """Bytes whose order shows: any loss, duplication or reordering changes them."""
    block = bytes(range(256)) * 16 + b"\x00"  # 4097 bytes: not aligned with any buffer size
    return (block * (size // len(block) + 1))[:size]


async def until_paused(stream: object) -> _Protocol:
    """The asyncio stream's protocol, once a flood has made it pause reading (bounded wait)."""
    assert isinstance(stream, AsyncioSocketStream)
    protocol = stream._protocol
    await until(lambda: protocol.reading_paused, what="reading paused")
    return protocol


async def receive_into(stream: DeadlineSocketStream, received: bytearray) -> None:
    """Receive until the stream raises (the end of stream, or an error)."""
    while True:
        received += await stream.receive(65536)


# -- the stream ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("read_limit", "flood"),
    [
        (100, 64 * 1024),  # far under one read (the smallest a Limits allows is 8)
        (LIMIT, 2 << 20),
        ((300 << 10) + 7, 4 << 20),  # over the shared buffer, under twice it, and odd
        (None, 4 << 20),  # no limit given: the default Limits().max_buffered_bytes
    ],
    ids=["100B", "64KiB", "300KiB+7", "default"],
)
async def test_a_flood_is_held_to_the_read_limit_and_delivered_whole_after_it(
    anyio_backend: str, watch_reads: Any, read_limit: int | None, flood: int
) -> None:
    # The server writes `flood` bytes and closes; the client reads nothing until its stream is
    # full. On asyncio the stream must then hold exactly the limit, paused, and no read may ever
    # have been offered more room than was left under it. Drained, every byte arrives in order,
    # then the end of stream (the FIN arrived while reading was paused).
    limit = Limits().max_buffered_bytes if read_limit is None else read_limit
    watch = watch_reads(limit)
    payload = pattern(flood)
    received = bytearray()
    async with stream_pair(read_limit) as (client, server), anyio.create_task_group() as tg:

        async def flood_then_close() -> None:
            await server.send(payload)
            await server.send_eof()

        tg.start_soon(flood_then_close)
        if anyio_backend == "asyncio":
            protocol = await until_paused(client)
            assert protocol.buffered == limit
            assert watch.peak == limit
        with anyio.fail_after(30):
            while True:
                try:
                    received += await client.receive(65536)
                except anyio.EndOfStream:
                    break
                if anyio_backend == "asyncio":
                    assert protocol.buffered <= limit
    assert bytes(received) == payload
    assert watch.peak <= limit
    assert watch.overreach == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_closing_a_stream_paused_at_its_limit_ends_it(watch_reads: Any) -> None:
    watch = watch_reads(LIMIT)
    async with stream_pair(LIMIT) as (client, server), anyio.create_task_group() as tg:

        async def flood() -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await server.send(pattern(FLOOD))

        tg.start_soon(flood)
        protocol = await until_paused(client)
        assert client.unusable() == "out_of_sync"
        await client.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await client.receive()
        await until(lambda: protocol.lost, what="the connection lost")
        tg.cancel_scope.cancel()
    assert watch.peak == LIMIT
    assert watch.overreach == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_reset_while_paused_keeps_what_was_held_then_reports_it(watch_reads: Any) -> None:
    # Paused, the transport does not read, so the reset is seen by the next write. The bytes
    # held before it are still returned, then BrokenResourceError; no resume is tried on the
    # lost transport.
    watch = watch_reads(LIMIT)
    payload = pattern(FLOOD)
    async with stream_pair(LIMIT) as (client, server):

        async def flood() -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await server.send(payload)

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            protocol = await until_paused(client)
            tg.cancel_scope.cancel()
        # Closed with SO_LINGER 0, the server's socket sends a reset; a write finds it.
        raw = server.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await server.aclose()
        with anyio.fail_after(10):
            while True:
                try:
                    await client.send(b"NOOP\r\n")
                except anyio.BrokenResourceError:
                    break
                await anyio.sleep(0.005)
            received = bytearray()
            with pytest.raises(anyio.BrokenResourceError):
                await receive_into(client, received)
    assert bytes(received) == payload[:LIMIT]
    assert protocol.lost
    assert not protocol.reading_paused
    assert watch.peak == LIMIT
    assert watch.overreach == []


# -- the pool --------------------------------------------------------------------------------


@dataclass
class Flood:
    """Pushes FLOOD bytes down one server session while the client sits idle."""

    stream: anyio.abc.ByteStream
    sent: int = 0

    async def run(self) -> None:
        chunk = b"x" * FLOOD_CHUNK
        # Ends when the client drops the connection (or when the test cancels it).
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            while self.sent < FLOOD:
                try:
                    await self.stream.send(chunk)
                except anyio.BusyResourceError:
                    # The session's own last reply is still leaving: on trio its send returns
                    # only after a turn of the scheduler, and the client may have read the
                    # reply and gone idle before that.
                    await anyio.sleep(0.001)
                    continue
                self.sent += len(chunk)


def subjects(messages: list[bytes]) -> list[int]:
    return [int(m.split(b"\r\n", 1)[0].split()[-1]) for m in messages]


async def test_a_server_flooding_an_idle_connection_gets_it_closed_not_lent(
    anyio_backend: str, watch_reads: Any
) -> None:
    watch = watch_reads(LIMIT)
    server = FakeSMTPServer(Script())
    with anyio.fail_after(30):
        async with server.running():
            config = PoolConfig([Host("127.0.0.1", server.port, tls="none")], max_retries=0)
            limits = Limits(max_buffered_bytes=LIMIT)
            async with SMTPPool(config, limits=limits) as pool, anyio.create_task_group() as tg:
                await send(pool, 0)
                (flooded,) = pool._connections.values()
                flood = Flood(server.sessions[0].stream)
                tg.start_soon(flood.run)
                # The server has pushed several times the limit, and the client has seen it.
                await until(
                    lambda: flood.sent >= 4 * LIMIT and flooded.unusable() is not None,
                    what="the flood sent and seen",
                )
                if anyio_backend == "asyncio":
                    protocol = await until_paused(flooded._deadline_stream)
                    assert protocol.buffered == LIMIT
                assert flooded.unusable() == "out_of_sync"
                result = await send(pool, 1)
                await until(
                    lambda: pool.statistics().closed_total.get("out_of_sync", 0) >= 1,
                    what="the flooded connection closed",
                )
                statistics = pool.statistics()
                discarded = pool.send_statistics().stale_discarded
                assert flooded not in pool._connections.values()
                tg.cancel_scope.cancel()
    assert result.reply.code == 250
    # The flooded connection carried message 0 only; message 1 went through a fresh one.
    assert [subjects(c.messages) for c in server.connections] == [[0], [1]]
    assert dict(statistics.closed_total) == {"out_of_sync": 1}
    assert discarded == 1
    if anyio_backend == "asyncio":
        assert watch.peak == LIMIT
    assert watch.peak <= LIMIT
    assert watch.overreach == []


async def send(pool: SMTPPool, n: int) -> Any:
    data = b"Subject: message %d\r\n\r\nhello\r\n" % n
    return await pool.send_raw(data, sender="a@example.com", recipients=["b@example.com"])
