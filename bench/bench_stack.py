"""pooledmail's own CPU per message, with the network replaced by a server in memory.

    python bench/bench_stack.py [--messages 20000] [--concurrency 8] [--backend asyncio|trio|both]

Every connection the pool opens is an in-memory stream that answers each flight at once (a
pipelining server without CHUNKING, as `smtp-sink` is) and yields to the scheduler once per
receive, as the driver's real streams do. What is left is exactly what pooledmail itself costs per
`send_raw`: the API, the pool, the protocol core, the exchange loop, and one trip through the
event loop per round trip; no system call, no other process. It is the figure to watch when
changing the hot path (it moves by a few percent, where `bench_driver.py` moves by a few tens on
a shared machine), and `valgrind --tool=callgrind` over it counts instructions per message
steadily.

`--api` picks what is sent: `send_raw` (bytes), `send` (an `EmailMessage`, as an application
builds it: no Date, no Message-ID), or `as_bytes+send_raw` (the same message serialized by the
standard library with `policy=SMTP`, then sent raw: what `send` must not be slower than). `all`
runs the three. Nothing here is asserted; the numbers are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from typing import Any

import anyio.abc

import anyio
import pooledmail_anyio._connection as connection_module
from pooledmail_anyio import Host, PoolConfig, SMTPPool
from pooledmail_anyio._stream import DeadlineSocketStream

BODY = (
    b"Subject: bench\r\nFrom: a@bench.test\r\nTo: b@bench.test\r\n\r\n" + (b"x" * 70 + b"\r\n") * 13
)
SENDER = "a@bench.test"
RECIPIENTS = ["b@bench.test"]
GREETING = b"220 sink.bench.test ESMTP\r\n"
# What Postfix's smtp-sink offers (bench_driver.py's server).
EHLO = (
    b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
    b"250 DSN\r\n"
)
ENVELOPE_REPLIES = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"


APIS = ("send_raw", "send", "as_bytes+send_raw")


class InstantServer(DeadlineSocketStream):
    """A stream whose server answers every flight at once, from memory."""

    def __init__(self, pause: Callable[[], object]) -> None:
        self.deadline = math.inf
        self._pause = pause
        self._replies: deque[bytes] = deque([GREETING])
        self._queued = 0

    @property
    def _raw_socket(self) -> object:  # type: ignore[override]
        raise anyio.TypedAttributeLookupError("no socket: the server is in memory")

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}

    async def send(self, item: bytes) -> None:
        if item[:4] == b"MAIL":
            self._replies.append(ENVELOPE_REPLIES)
        elif item[-5:] == b"\r\n.\r\n":
            # Every final reply differs (the queue id), as on a real server.
            self._queued += 1
            self._replies.append(b"250 2.0.0 Ok: queued as %08X\r\n" % self._queued)
        elif item[:4] == b"EHLO":
            self._replies.append(EHLO)
        elif item[:4] == b"QUIT":
            self._replies.append(b"221 2.0.0 Bye\r\n")
        else:
            raise AssertionError(f"unexpected flight {bytes(item[:20])!r}")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await self._pause()  # the real streams yield once per receive
        if not self._replies:
            raise anyio.EndOfStream
        return self._replies.popleft()

    def unusable(self) -> str | None:
        return None

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self._replies.clear()


def email_message() -> EmailMessage:
    """A small text message as an application builds it (the body of BODY, about 1 KiB)."""
    message = EmailMessage()
    message["From"] = "Alice <a@bench.test>"
    message["To"] = "Bob <b@bench.test>"
    message["Subject"] = "bench"
    message.set_content(("x" * 70 + "\n") * 13)
    return message


async def run(messages: int, concurrency: int, api: str = "send_raw") -> tuple[float, float]:
    if anyio.get_current_task().__class__.__module__.startswith("anyio._backends._asyncio"):
        pause: Callable[[], object] = lambda: asyncio.sleep(0)  # noqa: E731
    else:
        import trio

        pause = trio.lowlevel.cancel_shielded_checkpoint

    async def connect(host: str, port: int, *, read_limit: int) -> DeadlineSocketStream:
        return InstantServer(pause)

    connection_module.connect_tcp = connect  # type: ignore[assignment]
    config = PoolConfig(
        [Host("sink.bench.test", 25, tls="none")],
        max_size=concurrency,
        max_messages_per_connection=None,
        max_connection_age=None,
    )
    async with SMTPPool(config) as pool:
        message = email_message()
        smtp = email.policy.SMTP

        async def worker(count: int) -> None:
            if api == "send_raw":
                for _ in range(count):
                    await pool.send_raw(BODY, sender=SENDER, recipients=RECIPIENTS)
            elif api == "send":
                for _ in range(count):
                    await pool.send(message)
            else:
                for _ in range(count):
                    data = message.as_bytes(policy=smtp)
                    await pool.send_raw(data, sender=SENDER, recipients=RECIPIENTS)

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker, 20)
        wall, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for index in range(concurrency):
                tg.start_soon(worker, messages // concurrency + (index < messages % concurrency))
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--api", choices=[*APIS, "all"], default="send_raw")
    args = parser.parse_args()
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    apis = list(APIS) if args.api == "all" else [args.api]
    print(f"{args.messages} messages of {len(BODY)} bytes, {args.concurrency} senders, in memory")
    for backend in backends:
        for api in apis:
            # Interleaved rounds, the best of each kept (the least disturbed by other work).
            best = min(
                anyio.run(run, args.messages, args.concurrency, api, backend=backend)
                for _ in range(args.rounds)
            )
            wall, cpu = best
            print(
                f"  {backend:<8} {api:<18} {cpu / args.messages * 1e6:6.1f} us cpu/msg "
                f"({args.messages / wall:,.0f} messages/s)"
            )


if __name__ == "__main__":
    main()
