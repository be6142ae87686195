"""Many streams at once, random sizes and chunking, both directions, with and without TLS."""

from __future__ import annotations

import random
import ssl
import struct

import anyio.abc
import anyio.lowlevel
import pytest
from anyio.streams.tls import TLSStream

import anyio
from pooledmail_anyio._stream import connect_tcp

pytestmark = pytest.mark.anyio

CONNECTIONS = 32
MAX_SIZE = 2 << 20


# Every run draws the same sizes and read sizes (tests are deterministic); change it to explore.
SEED = 20261202


def sizes(rng: random.Random) -> int:
    # Mostly small, a few large (0 B .. 2 MiB)
    r = rng.random()
    if r < 0.3:
        return rng.randrange(0, 100)
    if r < 0.8:
        return rng.randrange(0, 70_000)
    return rng.randrange(0, MAX_SIZE)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_many_streams_carry_every_byte_each_way(
    tls: bool, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    seed = SEED  # fixed: the same sizes and chunking on every run
    rng = random.Random(seed)
    up = [rng.randbytes(sizes(rng)) for _ in range(CONNECTIONS)]
    down = [rng.randbytes(sizes(rng)) for _ in range(CONNECTIONS)]
    got_up: dict[int, bytes] = {}
    got_down: dict[int, bytes] = {}
    problems: list[str] = []

    async def serve(stream: anyio.abc.ByteStream) -> None:
        srng = random.Random(rng.random())
        if tls:
            stream = await TLSStream.wrap(
                stream, server_side=True, ssl_context=server_tls, standard_compatible=False
            )
        header = b""
        while len(header) < 4:
            header += await stream.receive(4 - len(header))
        index = struct.unpack("!I", header)[0]
        expected = len(up[index])

        async def read() -> None:
            data = bytearray()
            while len(data) < expected:
                data += await stream.receive(srng.choice([1, 7, 1000, 65536, 1 << 20]))
                if srng.random() < 0.05:
                    await anyio.sleep(0.001)
            got_up[index] = bytes(data)

        async def write() -> None:
            payload = down[index]
            position = 0
            while position < len(payload):
                size = srng.choice([1, 13, 4096, 16385, 100_000, 1 << 20])
                await stream.send(payload[position : position + size])
                position += size
                if srng.random() < 0.1:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            tg.start_soon(write)
        await stream.send(b"!")  # everything arrived: the client may close
        # wait for the client's goodbye
        try:
            while True:
                extra = await stream.receive()
                problems.append(f"server {index} got extra {len(extra)} bytes")
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        await stream.aclose()

    async def client(index: int, port: int) -> None:
        crng = random.Random(index * 7919 + seed)
        raw = await connect_tcp("127.0.0.1", port)
        raw.deadline = anyio.current_time() + 60
        stream: anyio.abc.ByteStream = raw
        if tls:
            stream = await TLSStream.wrap(
                raw, hostname="127.0.0.1", ssl_context=client_tls, standard_compatible=False
            )

        async def write() -> None:
            payload = struct.pack("!I", index) + up[index]
            view = memoryview(payload)
            position = 0
            while position < len(payload):
                size = crng.choice([1, 3, 512, 65536, 1 << 18, 1 << 21])
                raw.deadline = anyio.current_time() + 60
                chunk = (
                    view[position : position + size]
                    if crng.random() < 0.5
                    else payload[position : position + size]
                )
                await stream.send(chunk)
                position += size

        async def read() -> None:
            data = bytearray()
            while len(data) < len(down[index]) + 1:
                max_bytes = crng.choice([1, 5, 4096, 65536, 1 << 20])
                raw.deadline = anyio.current_time() + 60
                chunk = await stream.receive(max_bytes)
                if not chunk or len(chunk) > max_bytes:
                    problems.append(f"client {index}: {len(chunk)} bytes for max {max_bytes}")
                data += chunk
                if crng.random() < 0.02:
                    await anyio.sleep(0.005)  # fall behind: reading pauses at the high-water mark
            if data[-1:] != b"!":
                problems.append(f"client {index}: no ack")
            got_down[index] = bytes(data[:-1])

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            tg.start_soon(write)
        if raw.unusable() is not None:
            problems.append(f"client {index} unusable: {raw.unusable()}")
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", backlog=CONNECTIONS)
    with anyio.fail_after(60):
        async with listener, anyio.create_task_group() as servers:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            servers.start_soon(listener.serve, serve)
            async with anyio.create_task_group() as clients:
                for index in range(CONNECTIONS):
                    clients.start_soon(client, index, port)
            servers.cancel_scope.cancel()
    assert problems == []
    for index in range(CONNECTIONS):
        assert got_up[index] == up[index], index
        assert got_down[index] == down[index], index
