"""The driver's TLS stream, `LeanTLSStream`: anyio's `TLSStream` whose `receive()` reads the
stream below first when the TLS layer holds nothing, instead of a read of the TLS object that
fails first. It must give the same bytes and end the same way as anyio's own, in every case."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.abc
import pytest
from anyio.streams.tls import TLSStream

import anyio
from pooledmail_anyio._stream import DeadlineSocketStream
from pooledmail_anyio._tls import LeanTLSStream

from .streampair import stream_pair

pytestmark = pytest.mark.anyio

Serve = Callable[[TLSStream, anyio.abc.SocketStream], Awaitable[None]]


class CountingSSLObject:
    """The client's TLS object, with its `read()` calls counted."""

    def __init__(self, inner: ssl.SSLObject) -> None:
        self.inner = inner
        self.reads = 0

    def read(self, *args: Any) -> Any:
        self.reads += 1
        return self.inner.read(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@asynccontextmanager
async def tls_pair(
    kind: type[TLSStream],
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    *,
    standard_compatible: bool = False,
) -> AsyncIterator[tuple[TLSStream, TLSStream, anyio.abc.SocketStream]]:
    """(client TLS stream of `kind`, server TLS stream, the server's plain stream below it)."""
    async with stream_pair() as (client, server):
        wrapped: list[TLSStream] = []

        async def serve() -> None:
            wrapped.append(
                await TLSStream.wrap(
                    server, server_side=True, ssl_context=server_tls, standard_compatible=False
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            tls = await kind.wrap(
                client,
                hostname="127.0.0.1",
                ssl_context=client_tls,
                standard_compatible=standard_compatible,
            )
        assert type(tls) is kind
        yield tls, wrapped[0], server


def records(tls: TLSStream, *plaintexts: bytes) -> list[bytes]:
    """Each plaintext as the bytes of its own TLS record(s), from the server's TLS object."""
    out = []
    for plaintext in plaintexts:
        tls._ssl_object.write(plaintext)
        out.append(tls._write_bio.read())
    return out


def close_notify(tls: TLSStream) -> bytes:
    """The server's close_notify alert (RFC 8446 §6.1), as bytes to send when the test chooses."""
    with contextlib.suppress(ssl.SSLWantReadError):  # it would wait for the client's own
        tls._ssl_object.unwrap()
    return tls._write_bio.read()


def fatal_alert(tls: TLSStream) -> bytes:
    """The encrypted fatal alert (bad_record_mac) the server's TLS object sends on a record it
    cannot decrypt (RFC 8446 §6.2)."""
    tls._read_bio.write(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    with contextlib.suppress(ssl.SSLError):
        tls._ssl_object.read(1)
    alert = tls._write_bio.read()
    assert alert
    return alert


async def whole_records_then_fin(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    await tls.send(b"250 one\r\n")
    await tls.send(b"250 two\r\n")
    await tls.aclose()  # the server's stream is not standard_compatible: no close_notify


async def close_notify_on_an_open_connection(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    await plain.send(b"".join(records(tls, b"250 then close_notify\r\n")) + close_notify(tls))


async def close_notify_then_fin(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    await plain.send(b"".join(records(tls, b"250 then close_notify\r\n")) + close_notify(tls))
    await plain.send_eof()


async def fatal_alert_on_an_open_connection(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    await plain.send(b"".join(records(tls, b"250 then an alert\r\n")) + fatal_alert(tls))


async def fin_in_the_middle_of_a_record(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    whole, cut = records(tls, b"250 whole\r\n", b"250 cut short\r\n")
    await plain.send(whole + cut[:-5])
    await plain.send_eof()


async def a_record_split_across_segments(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    (reply,) = records(tls, b"250 split in two\r\n")
    await plain.send(reply[:7])
    await anyio.sleep(0.05)
    await plain.send(reply[7:])
    await plain.send_eof()


async def two_records_in_one_segment(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    first, second = records(tls, b"250 first\r\n", b"250 second\r\n")
    await plain.send(first + second)
    await plain.send_eof()


async def fin_without_close_notify(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    await tls.send(b"250 then a bare FIN\r\n")
    await plain.send_eof()


async def reset(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    await tls.send(b"250 then a reset\r\n")
    raw = plain.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await plain.aclose()


async def garbage_record(tls: TLSStream, plain: anyio.abc.SocketStream) -> None:
    await tls.send(b"250 then garbage\r\n")
    await plain.send(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # application data nobody can decrypt


SCENARIOS = [
    whole_records_then_fin,
    close_notify_on_an_open_connection,
    close_notify_then_fin,
    fatal_alert_on_an_open_connection,
    fin_in_the_middle_of_a_record,
    a_record_split_across_segments,
    two_records_in_one_segment,
    fin_without_close_notify,
    reset,
    garbage_record,
]


async def outcome(
    kind: type[TLSStream],
    serve: Serve,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    standard_compatible: bool,
) -> list[object]:
    """What the client's receive() returns, call after call, up to the exception that ends it,
    then what two more calls give or raise. Once the stream has ended, the stream below has a
    deadline in the past: a receive that would wait there (a peer that keeps the connection open)
    raises `DeadlineExceeded` instead of hanging."""
    seen: list[object] = []
    pair = tls_pair(kind, server_tls, client_tls, standard_compatible=standard_compatible)
    async with pair as (client, server, plain):
        await serve(server, plain)
        below = client.transport_stream
        assert isinstance(below, DeadlineSocketStream)
        with anyio.fail_after(10):
            while True:
                try:
                    seen.append(await client.receive())
                except Exception as exc:  # the ending is part of what is compared
                    seen.append(type(exc))
                    break
            below.deadline = anyio.current_time()
            for _ in range(2):
                try:
                    seen.append(await client.receive())
                except Exception as exc:
                    seen.append(type(exc))
    return seen


@pytest.mark.parametrize("standard_compatible", [False, True])
@pytest.mark.parametrize("serve", SCENARIOS, ids=[scenario.__name__ for scenario in SCENARIOS])
async def test_the_lean_tls_stream_receives_and_ends_as_anyios_does(
    serve: Serve,
    standard_compatible: bool,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    expected = await outcome(TLSStream, serve, server_tls, client_tls, standard_compatible)
    assert (
        await outcome(LeanTLSStream, serve, server_tls, client_tls, standard_compatible) == expected
    )
    assert isinstance(expected[-1], type)
    assert issubclass(expected[-1], Exception)
    assert isinstance(expected[0], bytes)  # at least one reply arrived before the end


async def test_a_reply_costs_one_read_of_the_tls_object(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    """anyio's receive reads the TLS object twice a reply: once to fail (SSLWantReadError), once
    after reading the stream below. Between exchanges the TLS layer holds nothing, so the driver's
    stream reads below first and the TLS object once."""
    async with tls_pair(LeanTLSStream, server_tls, client_tls) as (client, server, _):
        counting = CountingSSLObject(client._ssl_object)
        client._ssl_object = counting  # type: ignore[assignment]
        for number in range(4):
            if number == 1:
                # The first reply may come after TLS 1.3's session tickets, which wait in the TLS
                # layer's input: that one is read as anyio reads. Count from the second.
                counting.reads = 0
            await client.send(b"NOOP\r\n")
            assert await server.receive() == b"NOOP\r\n"
            await server.send(b"250 %d\r\n" % number)
            with anyio.fail_after(10):
                assert await client.receive() == b"250 %d\r\n" % number
        assert counting.reads == 3


async def after_unwrap(
    kind: type[TLSStream], server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> tuple[object, bytes]:
    """What a receive() after `unwrap()` gives or raises, and what the stream below then gives."""
    async with tls_pair(kind, server_tls, client_tls) as (client, server, plain):
        await plain.send(b"".join(records(server, b"250 before\r\n")))
        with anyio.fail_after(10):
            assert await client.receive() == b"250 before\r\n"
            await plain.send(close_notify(server))
            below, left = await client.unwrap()
            assert left == b""
            await plain.send(b"plaintext after the TLS session\r\n")
            ending: object
            try:
                ending = await client.receive()
            except Exception as exc:
                ending = type(exc)
            return ending, await below.receive()


async def test_after_unwrap_the_lean_tls_stream_leaves_the_stream_below_alone(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    expected = await after_unwrap(TLSStream, server_tls, client_tls)
    assert expected[0] is ssl.SSLZeroReturnError  # anyio's: the TLS session is over
    assert expected[1] == b"plaintext after the TLS session\r\n"
    assert await after_unwrap(LeanTLSStream, server_tls, client_tls) == expected


async def cancelled_waits_then_small_reads(
    kind: type[TLSStream], server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> list[bytes]:
    """Receives cancelled while they wait (with nothing held, then with part of a record held
    inside the TLS object), then reads smaller than a record: what comes out, read by read."""
    async with tls_pair(kind, server_tls, client_tls) as (client, server, plain):
        await plain.send(b"".join(records(server, b"220 first\r\n")))
        got = [await client.receive()]  # the session tickets come before it, on TLS 1.3
        wire = b"".join(records(server, b"250 one\r\n", b"250 two\r\n"))
        for piece in (b"", wire[:3], wire[3:20]):
            if piece:
                await plain.send(piece)
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.receive)
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
        await plain.send(wire[20:])
        with anyio.fail_after(10):
            got += [await client.receive(4), await client.receive(4), await client.receive()]
            got.append(await client.receive(100))
            # A record alone, read in parts: the rest waits decrypted inside the TLS object.
            await plain.send(b"".join(records(server, b"250 three\r\n")))
            got += [await client.receive(4), await client.receive(4), await client.receive(4)]
    return got


async def test_cancelled_receives_lose_nothing_as_with_anyios(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    expected = await cancelled_waits_then_small_reads(TLSStream, server_tls, client_tls)
    assert b"".join(expected) == b"220 first\r\n250 one\r\n250 two\r\n250 three\r\n"
    assert await cancelled_waits_then_small_reads(LeanTLSStream, server_tls, client_tls) == expected
