"""The `pooledmail` command. `pooledmail demo` sends mail through a pool to an embedded sink."""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Sequence
from email.message import EmailMessage

import anyio
from pooledmail_core._config import Host, PoolConfig
from pooledmail_core._pool import PoolStatistics

from ._pool import SMTPPool
from ._results import SendFailed
from ._sink import LoopbackSink

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pooledmail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="send messages through a pool to an embedded SMTP sink on 127.0.0.1"
    )
    demo.add_argument("--messages", type=_positive, default=1000, help="how many (1000)")
    demo.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    demo.add_argument("--concurrency", type=_positive, default=16, help="concurrent senders (16)")
    demo.add_argument("--max-size", type=_positive, default=4, help="pool max_size (4)")
    return parser


def _message(n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "demo@pooledmail.test"
    message["To"] = f"user{n % 10}@pooledmail.test"
    message["Subject"] = f"pooledmail demo message {n}"
    message.set_content(f"Hello from the pooledmail demo, message number {n}.\n")
    return message


async def _demo(
    port: int, args: argparse.Namespace
) -> tuple[float, collections.Counter[str], PoolStatistics]:
    config = PoolConfig(
        [Host("127.0.0.1", port, tls="none")],
        max_size=args.max_size,
        local_hostname="demo.pooledmail.test",
    )
    outcomes: collections.Counter[str] = collections.Counter()
    pending = iter(range(args.messages))

    async with SMTPPool(config) as pool:

        async def sender() -> None:
            for n in pending:
                try:
                    await pool.send(_message(n))
                except SendFailed as failure:
                    outcomes[failure.kind.name] += 1
                else:
                    outcomes["ACCEPTED"] += 1

        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(args.concurrency):
                tg.start_soon(sender)
        elapsed = anyio.current_time() - start
        stats = pool.statistics()
    return elapsed, outcomes, stats


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with LoopbackSink() as sink:
        elapsed, outcomes, stats = anyio.run(_demo, sink.port, args, backend=args.backend)
        received = sink.handler.messages
    rate = args.messages / elapsed if elapsed > 0 else float("inf")
    print(f"backend            {args.backend}")
    print(f"messages           {args.messages} in {elapsed:.2f} s ({rate:,.0f} messages/s)")
    retired = ", ".join(f"{k} {v}" for k, v in sorted(stats.closed_total.items()) if v)
    print(f"connections        {stats.created_total} created for {args.messages} messages")
    print(f"closed so far      {retired or 'none'}")
    print("outcomes           " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"server received    {received}")
    return 0 if outcomes.get("ACCEPTED", 0) == args.messages == received else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
