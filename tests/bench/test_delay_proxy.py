"""bench/delay_proxy.py, the latency-bound benchmark's stand-in for a distant server, passes every
byte on, in order, both ways, and passes each side's end of stream on after the bytes before it.

No time is asserted: the delay itself shows in the harness's measured round trip, not here.
asyncio only, as the proxy is (it is benchmark tooling, not part of the library).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from delay_proxy import start_delay_proxy  # bench/ is not a package: on sys.path above


async def _relay_through_proxy(chunks: list[bytes], delay: float) -> tuple[bytes, bytes, bytes]:
    """The server echoes what it reads, upper-cased, then ends its side once the client has
    ended its own. Returns (what the server read, what the client read, the server's greeting)."""
    server_read = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        while data := await reader.read(7):  # small reads: many writes towards the client
            server_read.extend(data)
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    proxy = await start_delay_proxy("127.0.0.1", target_port, delay)
    proxy_port = proxy.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        greeting = await reader.readexactly(6)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        client_read = await reader.read()  # up to the server's end of stream, through the proxy
        writer.close()
        return bytes(server_read), client_read, greeting
    finally:
        proxy.close()
        server.close()


def test_bytes_pass_in_order_both_ways_and_each_end_of_stream_follows_them() -> None:
    chunks = [f"{number:05d}-".encode() * (number % 13 + 1) for number in range(300)]
    sent = b"".join(chunks)
    server_read, client_read, greeting = asyncio.run(_relay_through_proxy(chunks, 0.002))
    assert greeting == b"hello\n"
    assert server_read == sent
    assert client_read == sent.upper()


def test_a_zero_delay_passes_bytes_as_well() -> None:
    chunks = [b"x" * 20_000, b"y" * 3]
    server_read, client_read, _ = asyncio.run(_relay_through_proxy(chunks, 0.0))
    assert server_read == b"".join(chunks)
    assert client_read == b"".join(chunks).upper()
