"""The driver's plain TCP stream (`_stream.connect_tcp`) behaves the same on both backends.

On asyncio `connect_tcp` returns the driver's own `AsyncioSocketStream`, on trio its
`TrioSocketStream`. Every test here runs on both, so both are held to anyio's stream semantics
(what anyio's own streams do): buffered bytes before EOF, EOF, reset, cancellation that loses
nothing, idempotent close, and TLS on top of it with `TLSStream.wrap`; and to the driver's own
additions, the same on both: a `deadline` that ends a wait, and `unusable()`.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator

import anyio.abc
import anyio.lowlevel
import pytest
from anyio.streams.tls import TLSStream

import anyio
from pooledmail_anyio._connection import Connection, ExchangeTimeout
from pooledmail_anyio._stream import (
    AsyncioSocketStream,
    DeadlineExceeded,
    DeadlineSocketStream,
    connect_tcp,
)
from pooledmail_core._config import Host, TLSMode
from pooledmail_core._session import ClientSession

from .streampair import stream_pair

pytestmark = pytest.mark.anyio

Pair = tuple[DeadlineSocketStream, anyio.abc.SocketStream]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """(client stream from `connect_tcp`, the server's accepted anyio stream)."""
    async with stream_pair() as streams:
        yield streams


async def receive_exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = bytearray()
    with anyio.fail_after(30):  # a broken stream fails the test instead of hanging it
        while len(data) < size:
            data += await stream.receive(1 << 20)
    return bytes(data)


async def test_each_backend_gets_its_lean_stream(pair: Pair, anyio_backend: str) -> None:
    client, _ = pair
    if anyio_backend == "asyncio":
        assert isinstance(client, AsyncioSocketStream)
    else:
        from pooledmail_anyio._trio_stream import TrioSocketStream

        assert isinstance(client, TrioSocketStream)
    nodelay = client.extra(anyio.abc.SocketAttribute.raw_socket).getsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY
    )
    assert nodelay


async def test_bytes_sent_arrive_whole_and_in_order(pair: Pair) -> None:
    client, server = pair
    await client.send(b"EHLO client.test\r\n")
    assert await receive_exactly(server, 18) == b"EHLO client.test\r\n"
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one kernel read
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.send, payload)
        assert await receive_exactly(client, len(payload)) == payload


async def test_a_large_send_completes_once_the_peer_reads_it(pair: Pair) -> None:
    client, server = pair
    payload = b"z" * (16 << 20)  # more than the socket buffers hold: send() must wait
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.send, payload)
        assert await receive_exactly(server, len(payload)) == payload


async def test_a_reader_that_falls_behind_loses_nothing(pair: Pair) -> None:
    client, server = pair
    payload = bytes(range(251)) * 40_000  # ~10 MiB: enough to stop reading for a while
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.send, payload)
        await anyio.wait_all_tasks_blocked()  # the client reads nothing meanwhile
        assert await receive_exactly(client, len(payload)) == payload


async def test_receive_refuses_a_size_below_one(pair: Pair) -> None:
    client, _ = pair
    with pytest.raises(ValueError, match="max_bytes"):
        await client.receive(0)


async def test_receive_never_returns_more_than_asked(pair: Pair) -> None:
    client, server = pair
    await server.send(b"250 first\r\n250 second\r\n")
    first = await client.receive(4)
    assert first == b"250 "
    assert await receive_exactly(client, 19) == b"first\r\n250 second\r\n"


async def test_buffered_bytes_come_before_end_of_stream(pair: Pair) -> None:
    client, server = pair
    await server.send(b"221 bye\r\n")
    await server.send_eof()
    assert await receive_exactly(client, 9) == b"221 bye\r\n"
    with pytest.raises(anyio.EndOfStream):
        await client.receive()
    with pytest.raises(anyio.EndOfStream):
        await client.receive()


async def test_send_eof_half_closes_towards_the_peer(pair: Pair) -> None:
    client, server = pair
    await client.send(b"QUIT\r\n")
    await client.send_eof()
    assert await receive_exactly(server, 6) == b"QUIT\r\n"
    with pytest.raises(anyio.EndOfStream):
        await server.receive()
    await server.send(b"221 bye\r\n")
    assert await receive_exactly(client, 9) == b"221 bye\r\n"


async def test_a_half_closed_peer_still_reads_what_is_sent(pair: Pair) -> None:
    client, server = pair
    await server.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await client.receive()
    await client.send(b"QUIT\r\n")
    assert await receive_exactly(server, 6) == b"QUIT\r\n"


async def test_peer_reset_breaks_receive_and_send(pair: Pair) -> None:
    client, server = pair
    raw = server.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await server.aclose()  # SO_LINGER 0: the kernel sends RST
    with pytest.raises(anyio.BrokenResourceError):
        await client.receive()

    async def keep_sending() -> None:
        for _ in range(8):  # the first write may still be accepted by the kernel
            await client.send(b"NOOP\r\n")

    with pytest.raises(anyio.BrokenResourceError):
        await keep_sending()


async def test_peer_reset_breaks_a_blocked_send(pair: Pair) -> None:
    client, server = pair
    errors: list[BaseException] = []

    async def flood() -> None:
        try:
            await client.send(b"x" * (64 << 20))  # far more than the socket buffers hold
        except anyio.BrokenResourceError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(flood)
        await anyio.wait_all_tasks_blocked()
        raw = server.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await server.aclose()
    assert len(errors) == 1


async def test_cancelled_receive_loses_nothing(pair: Pair) -> None:
    client, server = pair
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def receive() -> None:
            with scope:
                await client.receive()

        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
    assert scope.cancelled_caught
    await server.send(b"250 ok\r\n")
    assert await receive_exactly(client, 8) == b"250 ok\r\n"


async def test_send_blocked_on_a_peer_that_does_not_read_can_be_cancelled(pair: Pair) -> None:
    client, _ = pair
    scope = anyio.CancelScope()

    async def flood() -> None:
        with scope:
            await client.send(b"x" * (64 << 20))  # far more than the socket buffers hold

    async with anyio.create_task_group() as tg:
        tg.start_soon(flood)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
    assert scope.cancelled_caught
    await client.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await client.send(b"x")


async def test_two_concurrent_receives_are_refused(pair: Pair) -> None:
    client, server = pair
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.receive)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(anyio.BusyResourceError):
            await client.receive()
        await server.send(b"x")


async def test_two_concurrent_sends_are_refused(pair: Pair) -> None:
    client, server = pair
    payload = b"x" * (64 << 20)  # far more than the socket buffers hold: the send waits
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.send, payload)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(anyio.BusyResourceError):
            await client.send(b"x")
        assert await receive_exactly(server, len(payload)) == payload


async def test_aclose_is_idempotent_and_later_use_is_refused(pair: Pair) -> None:
    client, server = pair
    await client.aclose()
    await client.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await client.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await client.send(b"x")
    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
        await server.receive()


async def test_aclose_wakes_a_waiting_receive(pair: Pair) -> None:
    client, _ = pair
    errors: list[BaseException] = []

    async def receive() -> None:
        try:
            await client.receive()
        except anyio.ClosedResourceError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        await client.aclose()
    assert len(errors) == 1


async def test_tls_wraps_the_stream_both_ways(
    pair: Pair, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    client, server = pair
    async with anyio.create_task_group() as tg:
        wrapped_server: list[TLSStream] = []

        async def accept() -> None:
            wrapped_server.append(
                await TLSStream.wrap(
                    server, server_side=True, ssl_context=server_tls, standard_compatible=False
                )
            )

        tg.start_soon(accept)
        tls = await TLSStream.wrap(
            client, hostname="127.0.0.1", ssl_context=client_tls, standard_compatible=False
        )
    tls_server = wrapped_server[0]
    payload = b"y" * 300_000
    async with anyio.create_task_group() as tg:
        tg.start_soon(tls.send, payload)
        assert await receive_exactly(tls_server, len(payload)) == payload
    await tls_server.send(b"250 ok\r\n")
    assert await receive_exactly(tls, 8) == b"250 ok\r\n"
    await tls_server.aclose()
    with pytest.raises(anyio.EndOfStream):
        await tls.receive()
    await tls.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_reading_pauses_while_a_megabyte_waits_unread_and_resumes(pair: Pair) -> None:
    client, server = pair
    assert isinstance(client, AsyncioSocketStream)
    payload = bytes(range(253)) * 20_000  # ~5 MiB
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.send, payload)
        with anyio.fail_after(30):
            while not client._protocol.reading_paused:
                await anyio.lowlevel.checkpoint()
        assert await receive_exactly(client, len(payload)) == payload
    assert not client._protocol.reading_paused


async def test_a_past_deadline_ends_a_wait(pair: Pair) -> None:
    client, server = pair
    client.deadline = anyio.current_time()
    with anyio.fail_after(30), pytest.raises(DeadlineExceeded):
        await client.receive()
    # Bytes already buffered are returned whatever the deadline: nothing waits. (One small send
    # on loopback arrives as one segment, so the first receive leaves the rest buffered.)
    await server.send(b"250 ok\r\n")
    client.deadline = float("inf")
    assert await client.receive(4) == b"250 "
    client.deadline = anyio.current_time()
    assert await client.receive() == b"ok\r\n"


async def test_a_past_deadline_passes_through_tls(
    pair: Pair, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    client, server = pair
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: TLSStream.wrap(
                server, server_side=True, ssl_context=server_tls, standard_compatible=False
            )
        )
        tls = await TLSStream.wrap(
            client, hostname="127.0.0.1", ssl_context=client_tls, standard_compatible=False
        )
    client.deadline = anyio.current_time()
    # Not BrokenResourceError: TLS lets it through.
    with anyio.fail_after(30), pytest.raises(DeadlineExceeded):
        await tls.receive()


async def serve_starttls(server: anyio.abc.ByteStream, server_tls: ssl.SSLContext) -> TLSStream:
    """The server's side of a setup with STARTTLS, up to the EHLO answered inside TLS."""
    await server.send(b"220 fake ESMTP\r\n")
    await server.receive()  # EHLO
    await server.send(b"250-fake\r\n250 STARTTLS\r\n")
    await server.receive()  # STARTTLS
    await server.send(b"220 go ahead\r\n")
    tls = await TLSStream.wrap(
        server, server_side=True, ssl_context=server_tls, standard_compatible=False
    )
    await tls.receive()  # EHLO again
    await tls.send(b"250 fake\r\n")
    return tls


async def test_a_timeout_beneath_tls_still_reads_as_a_timeout(
    pair: Pair, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    """After STARTTLS a stalled server makes the step time out (`ExchangeTimeout`), not look like a
    broken connection, although TLS sits between the driver and the plain stream."""
    client, server = pair
    session = ClientSession("client.test")
    connection = Connection(client, session, Host("127.0.0.1", 25, tls=TLSMode.STARTTLS))

    async def serve() -> None:
        tls = await serve_starttls(server, server_tls)
        await tls.receive()  # NOOP, never answered
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        setup = session.setup(tls=TLSMode.STARTTLS)
        await connection.run(setup, step_timeout=30.0, ssl_context=client_tls)
        assert setup.result.ok
        assert session.tls_active
        # A step timeout of zero: the NOOP goes out, and the wait for its reply ends at once.
        with pytest.raises(ExchangeTimeout):
            await connection.run(session.noop(), step_timeout=0.0)
        tg.cancel_scope.cancel()


async def test_a_deadline_ends_a_send_to_a_peer_that_does_not_read(pair: Pair) -> None:
    client, _ = pair
    client.deadline = anyio.current_time() + 0.1
    with anyio.fail_after(30), pytest.raises(DeadlineExceeded):
        await client.send(b"x" * (64 << 20))  # far more than the socket buffers hold


async def test_a_deadline_moved_later_during_a_wait_is_the_one_that_counts(pair: Pair) -> None:
    client, server = pair

    async def move_the_deadline_then_answer() -> None:
        client.deadline = anyio.current_time() + 30
        await anyio.sleep(0.6)  # the first deadline passes meanwhile
        await server.send(b"250 ok\r\n")

    # Far enough for the task above to move it first even after a stall of the test process (a
    # loaded machine): the trio watchdog woken by a passed deadline may run before that task.
    client.deadline = anyio.current_time() + 0.5
    async with anyio.create_task_group() as tg:
        tg.start_soon(move_the_deadline_then_answer)
        assert await client.receive() == b"250 ok\r\n"


async def test_the_deadline_timer_left_behind_by_a_finished_wait_expires_nothing(
    pair: Pair,
) -> None:
    client, server = pair
    # Far enough for the reply to come first even after a stall of the test process (a loaded
    # machine): a deadline already passed when the loop next looks would end the wait.
    client.deadline = anyio.current_time() + 0.5
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.send, b"250 ok\r\n")
        assert await client.receive() == b"250 ok\r\n"
    await anyio.sleep(0.6)  # the timer fires with nothing waiting
    client.deadline = anyio.current_time() + 30
    await server.send(b"250 again\r\n")
    assert await client.receive() == b"250 again\r\n"


async def test_a_deadline_earlier_than_any_armed_one_still_counts(pair: Pair) -> None:
    """One stream waits under a far deadline; another then waits under a near one: the near one
    ends its wait, and the far one keeps waiting (on trio both share one watchdog)."""
    client, server = pair
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        other = await connect_tcp("127.0.0.1", port)
        client.deadline = anyio.current_time() + 60
        received: list[bytes] = []

        async def far() -> None:
            received.append(await client.receive())

        tg.start_soon(far)
        await anyio.wait_all_tasks_blocked()
        other.deadline = anyio.current_time() + 0.05
        with anyio.fail_after(30), pytest.raises(DeadlineExceeded):
            await other.receive()
        assert received == []
        await server.send(b"250 ok\r\n")
    assert received == [b"250 ok\r\n"]
    await other.aclose()


async def test_aclose_during_a_bounded_wait_is_a_close_not_a_timeout(pair: Pair) -> None:
    client, _ = pair
    client.deadline = anyio.current_time() + 60
    errors: list[BaseException] = []

    async def receive() -> None:
        try:
            await client.receive()
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        await client.aclose()
    assert [type(error) for error in errors] == [anyio.ClosedResourceError]


async def wait_until_unusable(stream: DeadlineSocketStream) -> str:
    # On asyncio the protocol learns of the bytes once the event loop has run.
    for _ in range(3000):
        why = stream.unusable()
        if why is not None:
            return why
        await anyio.sleep(0.01)
    raise AssertionError("the stream still looks usable after 30 s")


async def test_unusable_is_none_while_nothing_arrived(pair: Pair) -> None:
    client, server = pair
    assert client.unusable() is None
    await client.send(b"NOOP\r\n")
    assert await receive_exactly(server, 6) == b"NOOP\r\n"
    await server.send(b"250 ok\r\n")
    assert await receive_exactly(client, 8) == b"250 ok\r\n"
    assert client.unusable() is None


async def test_unusable_says_out_of_sync_for_unread_bytes_and_reads_nothing(pair: Pair) -> None:
    client, server = pair
    await server.send(b"250 unsolicited\r\n")
    assert await wait_until_unusable(client) == "out_of_sync"
    assert await receive_exactly(client, 17) == b"250 unsolicited\r\n"


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_unusable_says_stale_once_the_peer_closed(pair: Pair, reset: bool) -> None:
    client, server = pair
    if reset:
        raw = server.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await server.aclose()
    else:
        await server.send_eof()
    assert await wait_until_unusable(client) == "stale"


async def test_unusable_says_stale_after_aclose(pair: Pair) -> None:
    client, _ = pair
    await client.aclose()
    assert client.unusable() == "stale"


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_receive_that_finds_bytes_waiting_still_lets_other_tasks_run(pair: Pair) -> None:
    # On trio the kernel hands over bytes that arrived while no task looked, so a fast server
    # could let one sender run for ever without waiting: every receive yields once. (On asyncio
    # bytes reach the stream only while the event loop runs, so each round trip waits anyway.)
    client, server = pair
    await server.send(b"x" * 100)
    await anyio.sleep(0.05)  # every byte is in the client's kernel buffer
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(count_turns)
        await anyio.lowlevel.checkpoint()
        before = turns
        for _ in range(100):
            assert await client.receive(1) == b"x"
        assert turns >= before + 50
        tg.cancel_scope.cancel()


async def test_a_receive_right_after_a_send_gets_a_reply_that_is_already_there(
    pair: Pair,
) -> None:
    # The trio stream yields once after a send before it reads (the reply usually arrives
    # meanwhile); a reply that is already there, or an end of stream, must not be missed or
    # delayed for it.
    client, server = pair
    await client.send(b"NOOP\r\n")
    assert await receive_exactly(server, 6) == b"NOOP\r\n"
    await server.send(b"250 ok\r\n")
    await anyio.sleep(0.05)  # the reply sits in the client's kernel buffer
    with anyio.fail_after(5):
        assert await client.receive() == b"250 ok\r\n"
    await client.send(b"QUIT\r\n")
    await server.send(b"221 bye\r\n")
    await server.send_eof()
    await anyio.sleep(0.05)
    with anyio.fail_after(5):
        assert await client.receive() == b"221 bye\r\n"
        with pytest.raises(anyio.EndOfStream):
            await client.receive()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_reply_there_after_one_turn_is_read_without_a_wait(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wait costs trio an epoll_ctl (and the failed recv before it): after a send the stream
    # yields once and reads, and waits only when the reply is still not there.
    from pooledmail_anyio import _trio_stream

    waits = 0
    wait_readable = _trio_stream._wait_readable

    async def counting(sock: socket.socket) -> None:
        nonlocal waits
        waits += 1
        await wait_readable(sock)

    monkeypatch.setattr(_trio_stream, "_wait_readable", counting)
    client, server = pair

    async def answer(delay: float) -> None:
        assert await receive_exactly(server, 6) == b"NOOP\r\n"
        await anyio.sleep(delay)
        await server.send(b"250 ok\r\n")

    with anyio.fail_after(5):
        # The reply arrives before the client's receive begins.
        await client.send(b"NOOP\r\n")
        await answer(0)
        await anyio.sleep(0.05)
        assert await client.receive() == b"250 ok\r\n"
        assert waits == 0
        # It is not there after the client's turn: the stream waits for it.
        async with anyio.create_task_group() as tg:
            await client.send(b"NOOP\r\n")
            tg.start_soon(answer, 0.2)
            assert await client.receive() == b"250 ok\r\n"
        assert waits == 1


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_a_receive_right_after_a_send_is_a_cancellation_point(pair: Pair) -> None:
    # Found by review: the yield before that read ignored cancellation, so a send on a warm
    # pool (no wait for a connection, a send the kernel took at once, a reply there after one
    # turn) had no cancellation point: an already-cancelled send could deliver its message.
    # (On asyncio the reply reaches the stream only while the loop runs, so the receive after a
    # send always waits.)
    client, server = pair
    await client.send(b"NOOP\r\n")
    assert await receive_exactly(server, 6) == b"NOOP\r\n"
    await server.send(b"250 ok\r\n")
    await anyio.sleep(0.05)  # the reply is in the client's kernel buffer
    with anyio.CancelScope() as scope:
        scope.cancel()
        await client.receive()
    assert scope.cancelled_caught
    # Nothing was lost: the reply is still there for the next read.
    with anyio.fail_after(5):
        assert await client.receive() == b"250 ok\r\n"


async def test_a_cancelled_receive_right_after_a_send_loses_nothing(pair: Pair) -> None:
    client, server = pair
    await client.send(b"NOOP\r\n")
    with anyio.move_on_after(0.05) as scope:
        await client.receive()
    assert scope.cancelled_caught
    await server.send(b"250 ok\r\n")
    assert await receive_exactly(client, 8) == b"250 ok\r\n"


# Found by review: full duplex on one stream, a read after close, and part of a TLS record
# nobody asked for.


async def test_a_deadline_still_bounds_a_receive_while_a_send_waits_alongside(pair: Pair) -> None:
    """Full duplex: a send that had to wait for room must not take the receive's deadline away."""
    client, server = pair
    payload = b"x" * (4 << 20)  # more than the kernel buffers: the send must wait
    outcome: list[str] = []
    sent_at: list[float] = []

    async def receive() -> None:
        try:
            await client.receive()
        except DeadlineExceeded:
            outcome.append("deadline")

    client.deadline = anyio.current_time() + 2.0
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(client.send, payload)
            await anyio.wait_all_tasks_blocked()
            await receive_exactly(server, len(payload))  # the send completes, the peer stays silent
            sent_at.append(anyio.current_time())
    print("send done", sent_at[0] - client.deadline)
    assert outcome == ["deadline"]


async def test_receive_after_aclose_is_refused_even_with_bytes_buffered(pair: Pair) -> None:
    client, server = pair
    await server.send(b"250 ok\r\n")
    await anyio.sleep(0.05)
    await client.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await client.receive()


@pytest.mark.parametrize("stray_bytes", [20, None], ids=["part of a record", "a whole record"])
async def test_an_unasked_tls_record_makes_the_connection_out_of_sync(
    pair: Pair, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext, stray_bytes: int | None
) -> None:
    """The plaintext twin ("250 ok\\r\\n25") is caught by the session's has_unread; under TLS
    a record nobody asked for, whole or the first bytes of it, arrives in the same segment as the
    reply and waits in the TLS layer's read BIO, undecrypted: unusable() must look there."""
    client, server = pair
    session = ClientSession("client.test")
    connection = Connection(client, session, Host("127.0.0.1", 25, tls=TLSMode.STARTTLS))
    ready = anyio.Event()

    async def serve() -> None:
        tls = await serve_starttls(server, server_tls)
        await tls.receive()  # NOOP
        # The reply, and in the same segment a record nobody asked for (or its first 20 bytes).
        tls._ssl_object.write(b"250 ok\r\n")
        reply = tls._write_bio.read()
        tls._ssl_object.write(b"250 2.0.0 nobody asked\r\n")
        stray = tls._write_bio.read()
        await server.send(reply + stray[:stray_bytes])
        ready.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        setup = session.setup(tls=TLSMode.STARTTLS)
        await connection.run(setup, step_timeout=30.0, ssl_context=client_tls)
        noop = session.noop()
        await connection.run(noop, step_timeout=30.0)
        assert noop.result.is_positive
        await ready.wait()
        await anyio.sleep(0.05)
        assert connection.unusable() == "out_of_sync"
        tg.cancel_scope.cancel()
