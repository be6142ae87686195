"""Driver throughput against Postfix's smtp-sink on loopback, as ratios in one run.

    python bench/bench_driver.py [--messages 4000] [--concurrency 8] [--rounds 3]

Needs `smtp-sink` (Debian's `postfix` package) and, for the comparison, aiosmtplib
(`pip install ".[bench]"`). Compares, on the same sink and in the same process:

- pooledmail `send_raw` through one pool (max_size = concurrency), on asyncio and on trio;
- aiosmtplib with one reused client per concurrent sender (asyncio only: it has no trio support);
- a bare pipelined loop with the backend's own streams (the floor any driver pays): MAIL + RCPT +
  DATA in one write, then the body and terminator in one write; on trio also the same loop over
  anyio's stream ("bare anyio trio"), the floor for a driver written with anyio.

`--only "pooledmail trio"` runs one contender alone, for a profiler or `strace -c -f`.

Messages are 1 KiB with one recipient. Every contender is warmed up the same way before it is
timed: its connections are open and greeted and a few messages went through each of them. Each
round runs every contender once, in a rotated order, so that a burst of load from elsewhere on
the machine hits a different one each time; the table keeps each contender's best round (the
least disturbed one) and the ratios compare those. `cpu/msg` is this process's CPU time per
message in that round: less noisy than the rate on a busy machine, and the direct measure of
what the driver costs, as the sink's work is the same for everyone. Nothing here is asserted;
the numbers are printed.
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
from dataclasses import dataclass

import anyio.abc
from allocator import steady_allocator  # a sibling module: bench/ is not a package

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


# Messages each connection carries before the clock starts.
WARM_UP = 20


@dataclass
class Timing:
    """Wall-clock and process CPU seconds (user and system) of one timed section."""

    wall: float = 0.0
    user: float = 0.0
    system: float = 0.0
    # Connections the sender opened, warm-up included (known for pooledmail only).
    connections: int | None = None

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def start(self) -> None:
        self.wall = time.perf_counter()
        times = os.times()
        self.user, self.system = times.user, times.system

    def stop(self) -> Timing:
        self.wall = time.perf_counter() - self.wall
        times = os.times()
        self.user = times.user - self.user
        self.system = times.system - self.system
        return self


async def run_pooledmail(port: int, messages: int, concurrency: int) -> Timing:
    config = PoolConfig(
        [Host("127.0.0.1", port, tls="none")],
        max_size=concurrency,
        max_messages_per_connection=None,
        max_connection_age=None,
    )
    timing = Timing()
    async with SMTPPool(config) as pool:

        async def worker(count: int) -> None:
            for _ in range(count):
                await pool.send_raw(BODY, sender=SENDER, recipients=RECIPIENTS)

        # Warm the pool so that connection setup is not measured: every connection opens.
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker, WARM_UP)
        timing.start()
        async with anyio.create_task_group() as tg:
            for count in split(messages, concurrency):
                tg.start_soon(worker, count)
        timing.stop()
        timing.connections = pool.statistics().created_total
        return timing


async def run_aiosmtplib(port: int, messages: int, concurrency: int) -> Timing:
    import aiosmtplib

    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(concurrency)]
    for client in clients:
        await client.connect()

    async def worker(client: aiosmtplib.SMTP, count: int) -> None:
        for _ in range(count):
            await client.sendmail(SENDER, RECIPIENTS, BODY)

    await asyncio.gather(*(worker(c, WARM_UP) for c in clients))
    timing = Timing()
    timing.start()
    await asyncio.gather(
        *(worker(c, n) for c, n in zip(clients, split(messages, concurrency), strict=True))
    )
    timing.stop()
    for client in clients:
        await client.quit()
    return timing


ENVELOPE = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENTS[0]}>\r\nDATA\r\n".encode()
PAYLOAD = BODY + b".\r\n"


def count_replies(buffer: bytes) -> int:
    # Final reply lines have a space after the code.
    return sum(1 for line in buffer.split(b"\r\n") if len(line) >= 4 and line[3:4] == b" ")


class BareSession:
    """The floor: one pipelined envelope flight and one data flight per message, replies counted
    and not parsed."""

    def __init__(
        self, send: Callable[[bytes], Awaitable[None]], receive: Callable[[], Awaitable[bytes]]
    ) -> None:
        self.send = send
        self.receive = receive

    async def expect(self, replies: int) -> None:
        buffer = b""
        while count_replies(buffer) < replies:
            buffer += await self.receive()

    async def greet(self) -> None:
        await self.expect(1)
        await self.send(b"EHLO bench.test\r\n")
        await self.expect(1)

    async def transact(self, count: int) -> None:
        for _ in range(count):
            await self.send(ENVELOPE)
            await self.expect(3)
            await self.send(PAYLOAD)
            await self.expect(1)


async def run_bare_asyncio(port: int, messages: int, concurrency: int) -> Timing:
    async def connect() -> BareSession:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        session = BareSession(send, lambda: reader.read(65536))
        await session.greet()
        await session.transact(WARM_UP)
        return session

    writers: list[asyncio.StreamWriter] = []
    sessions = await asyncio.gather(*(connect() for _ in range(concurrency)))
    timing = Timing()
    timing.start()
    await asyncio.gather(
        *(s.transact(n) for s, n in zip(sessions, split(messages, concurrency), strict=True))
    )
    timing.stop()
    for writer in writers:
        writer.close()
    return timing


async def run_bare_anyio(port: int, messages: int, concurrency: int) -> Timing:
    """The bare loop over anyio's own TCP stream, on whichever backend runs it (trio here)."""
    streams: list[anyio.abc.SocketStream] = []
    sessions: list[BareSession] = []

    async def connect() -> None:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        streams.append(stream)
        session = BareSession(stream.send, lambda: stream.receive(65536))
        await session.greet()
        await session.transact(WARM_UP)
        sessions.append(session)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(connect)
    timing = Timing()
    timing.start()
    async with anyio.create_task_group() as tg:
        for session, n in zip(sessions, split(messages, concurrency), strict=True):
            tg.start_soon(session.transact, n)
    timing.stop()
    for stream in streams:
        await stream.aclose()
    return timing


async def run_bare_trio(port: int, messages: int, concurrency: int) -> Timing:
    import trio

    streams: list[trio.SocketStream] = []
    sessions: list[BareSession] = []

    async def connect() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        streams.append(stream)
        session = BareSession(stream.send_all, lambda: stream.receive_some(65536))
        await session.greet()
        await session.transact(WARM_UP)
        sessions.append(session)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(connect)
    timing = Timing()
    timing.start()
    async with trio.open_nursery() as nursery:
        for session, n in zip(sessions, split(messages, concurrency), strict=True):
            nursery.start_soon(session.transact, n)
    timing.stop()
    for stream in streams:
        await stream.aclose()
    return timing


def run_round(port: int, n: int, c: int, order: list[str]) -> dict[str, Timing]:
    import trio

    runners: dict[str, Callable[[], Timing]] = {
        "bare asyncio": lambda: asyncio.run(run_bare_asyncio(port, n, c)),
        "bare trio": lambda: trio.run(run_bare_trio, port, n, c),
        "bare anyio trio": lambda: anyio.run(run_bare_anyio, port, n, c, backend="trio"),
        "pooledmail asyncio": lambda: anyio.run(run_pooledmail, port, n, c, backend="asyncio"),
        "pooledmail trio": lambda: anyio.run(run_pooledmail, port, n, c, backend="trio"),
        "aiosmtplib reused": lambda: asyncio.run(run_aiosmtplib(port, n, c)),
    }
    return {name: runners[name]() for name in order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated contenders to run alone (for profiling), e.g. 'pooledmail trio'",
    )
    args = parser.parse_args()
    print(steady_allocator())
    n, c = args.messages, args.concurrency
    names = ["bare asyncio", "bare trio", "bare anyio trio", "pooledmail asyncio"]
    names.append("pooledmail trio")
    try:
        import aiosmtplib  # noqa: F401
    except ImportError:
        print("aiosmtplib is not installed: pip install '.[bench]'")
    else:
        names.append("aiosmtplib reused")
    if args.only:
        wanted = [name.strip() for name in args.only.split(",")]
        unknown = set(wanted) - set(names)
        if unknown:
            sys.exit(f"unknown contender(s): {', '.join(sorted(unknown))}; known: {names}")
        names = wanted
    best: dict[str, Timing] = {}
    with smtp_sink() as port:
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            for name, timing in run_round(port, n, c, names[shift:] + names[:shift]).items():
                if name not in best or timing.wall < best[name].wall:
                    best[name] = timing
    rates = {name: n / best[name].wall for name in names}
    print(
        f"{n} messages of {len(BODY)} bytes, 1 recipient, {c} concurrent senders, smtp-sink, "
        f"best of {args.rounds} rounds"
    )
    for name in names:
        timing = best[name]
        cpu, user, system = (
            seconds / n * 1e6 for seconds in (timing.cpu, timing.user, timing.system)
        )
        opened = "" if timing.connections is None else f", {timing.connections} connections"
        print(
            f"  {name:<20} {rates[name]:>9,.0f} messages/s   {cpu:6.0f} us cpu/msg"
            f" ({user:.0f} user + {system:.0f} system{opened})"
        )
    ratios = [
        ("pooledmail asyncio", "aiosmtplib reused", "x"),
        ("pooledmail trio", "aiosmtplib reused", "x"),
        ("pooledmail asyncio", "bare asyncio", ""),
        ("pooledmail trio", "bare anyio trio", ""),
        ("pooledmail trio", "bare trio", ""),
    ]
    for mine, theirs, unit in ratios:
        if mine in rates and theirs in rates:
            print(f"  {mine} / {theirs:<18} {rates[mine] / rates[theirs]:5.2f}{unit}")


if __name__ == "__main__":
    main()
