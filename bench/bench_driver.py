"""Driver throughput against Postfix's smtp-sink on loopback, as ratios in one run.

    python bench/bench_driver.py [--messages 4000] [--concurrency 8]

Needs `smtp-sink` (Debian's `postfix` package) and, for the comparison, aiosmtplib
(`pip install ".[bench]"`). Compares, on the same sink and in the same process:

- pooledmail `send_raw` through one pool (max_size = concurrency), on asyncio and on trio;
- aiosmtplib with one reused client per concurrent sender (asyncio only: it has no trio support);
- a bare pipelined loop with the backend's own streams (the floor any driver pays): MAIL + RCPT +
  DATA in one write, then the body and terminator in one write.

Messages are 1 KiB with one recipient. Nothing here is asserted; the numbers are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import anyio
from pooledmail_anyio import Host, PoolConfig, SMTPPool

BODY = (
    b"Subject: bench\r\nFrom: a@bench.test\r\nTo: b@bench.test\r\n\r\n" + (b"x" * 70 + b"\r\n") * 13
)
SENDER = "a@bench.test"
RECIPIENTS = ["b@bench.test"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(binary):
        sys.exit("smtp-sink not found: apt-get install postfix")
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "1024"])
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(5)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def run_pooledmail(port: int, messages: int, concurrency: int) -> float:
    config = PoolConfig(
        [Host("127.0.0.1", port, tls="none")],
        max_size=concurrency,
        max_messages_per_connection=None,
        max_connection_age=None,
    )
    async with SMTPPool(config) as pool:
        # Warm the pool so that connection setup is not measured.
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(lambda: pool.send_raw(BODY, sender=SENDER, recipients=RECIPIENTS))

        async def worker(count: int) -> None:
            for _ in range(count):
                await pool.send_raw(BODY, sender=SENDER, recipients=RECIPIENTS)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for count in split(messages, concurrency):
                tg.start_soon(worker, count)
        return time.perf_counter() - start


async def run_aiosmtplib(port: int, messages: int, concurrency: int) -> float:
    import aiosmtplib

    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(concurrency)]
    for client in clients:
        await client.connect()

    async def worker(client: aiosmtplib.SMTP, count: int) -> None:
        for _ in range(count):
            await client.sendmail(SENDER, RECIPIENTS, BODY)

    start = time.perf_counter()
    await asyncio.gather(
        *(worker(c, n) for c, n in zip(clients, split(messages, concurrency), strict=True))
    )
    elapsed = time.perf_counter() - start
    for client in clients:
        await client.quit()
    return elapsed


ENVELOPE = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENTS[0]}>\r\nDATA\r\n".encode()
PAYLOAD = BODY + b".\r\n"


def count_replies(buffer: bytes) -> int:
    # Final reply lines have a space after the code.
    return sum(1 for line in buffer.split(b"\r\n") if len(line) >= 4 and line[3:4] == b" ")


async def bare_session(
    send: Callable[[bytes], Awaitable[None]],
    receive: Callable[[], Awaitable[bytes]],
    count: int,
) -> None:
    async def expect(replies: int) -> None:
        buffer = b""
        while count_replies(buffer) < replies:
            buffer += await receive()

    await expect(1)
    await send(b"EHLO bench.test\r\n")
    await expect(1)
    for _ in range(count):
        await send(ENVELOPE)
        await expect(3)
        await send(PAYLOAD)
        await expect(1)


async def run_bare_asyncio(port: int, messages: int, concurrency: int) -> float:
    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        await bare_session(send, lambda: reader.read(65536), count)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in split(messages, concurrency)))
    return time.perf_counter() - start


async def run_bare_trio(port: int, messages: int, concurrency: int) -> float:
    import trio

    async def one(count: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await bare_session(stream.send_all, lambda: stream.receive_some(65536), count)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for n in split(messages, concurrency):
            nursery.start_soon(one, n)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    n, c = args.messages, args.concurrency
    rates: dict[str, float] = {}
    with smtp_sink() as port:
        import trio

        rates["bare asyncio"] = n / asyncio.run(run_bare_asyncio(port, n, c))
        rates["bare trio"] = n / trio.run(run_bare_trio, port, n, c)
        rates["pooledmail asyncio"] = n / anyio.run(run_pooledmail, port, n, c, backend="asyncio")
        rates["pooledmail trio"] = n / anyio.run(run_pooledmail, port, n, c, backend="trio")
        try:
            rates["aiosmtplib reused"] = n / asyncio.run(run_aiosmtplib(port, n, c))
        except ImportError:
            print("aiosmtplib is not installed: pip install '.[bench]'")
    print(f"{n} messages of {len(BODY)} bytes, 1 recipient, {c} concurrent senders, smtp-sink")
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:>9,.0f} messages/s")
    if "aiosmtplib reused" in rates:
        base = rates["aiosmtplib reused"]
        print(f"  pooledmail asyncio / aiosmtplib  {rates['pooledmail asyncio'] / base:5.2f}x")
        print(f"  pooledmail trio / aiosmtplib     {rates['pooledmail trio'] / base:5.2f}x")
    for backend in ("asyncio", "trio"):
        ratio = rates[f"pooledmail {backend}"] / rates[f"bare {backend}"]
        print(f"  pooledmail {backend} / bare {backend:<8} {ratio:5.2f}")


if __name__ == "__main__":
    main()
