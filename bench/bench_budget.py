"""What a shared budget costs, and whether a fleet keeps to it, against smtp-sink and a real Redis.

    python bench/bench_budget.py [--messages 4000] [--seconds 3] [--rate 400] [--backend asyncio]

1. One process, pool max_size 8, 32 concurrent senders, against Postfix's smtp-sink on loopback:
   messages/s with no budget, with a budget whose limits never bind (max_connections=8 and a rate
   far above what the process can send: the pure cost of the store), and with a rate that binds.
   Also the Redis round trips per message (the budget's `store_calls`).
2. A fleet of 1, 2, 4 and 8 processes, each with its own pool (max_size 4, 8 senders), sending for
   `--seconds` under one budget of `--rate` messages/s: the fleet's messages/s over the budget.
   It should stay at 1.0, not grow with the processes.

Needs smtp-sink (Debian's `postfix`) and redis-server (Debian's `redis-server`), and
`pip install ".[redis]"`. The machine may be shared: read the ratios, which come from one run, not
the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

from bench_driver import BODY, RECIPIENTS, SENDER, smtp_sink  # noqa: E402
from tests.servers.redis import RedisServer  # noqa: E402

import anyio  # noqa: E402
from pooledmail_anyio import Host, PoolConfig, SharedBudget, SMTPPool  # noqa: E402


async def send_many(
    port: int,
    budget: SharedBudget | None,
    *,
    messages: int | None,
    seconds: float | None,
    max_size: int,
    senders: int,
) -> dict[str, Any]:
    host = Host("127.0.0.1", port, tls="none", budget=budget)
    config = PoolConfig([host], max_size=max_size, max_retries=0, send_timeout=30.0)
    sent = 0
    async with SMTPPool(config) as pool:
        started = anyio.current_time()
        until = started + (seconds if seconds is not None else 1e9)
        left = [messages if messages is not None else 1 << 60]

        async def sender() -> None:
            nonlocal sent
            while left[0] > 0 and anyio.current_time() < until:
                left[0] -= 1
                await pool.send_raw(BODY, sender=SENDER, recipients=RECIPIENTS)
                sent += 1

        async with anyio.create_task_group() as group:
            for _ in range(senders):
                group.start_soon(sender)
        elapsed = anyio.current_time() - started
        stats = pool.budget_statistics().get(budget.name, {}) if budget else {}
    return {"sent": sent, "elapsed": elapsed, "store_calls": stats.get("store_calls", 0)}


def worker(spec: str) -> None:
    options = json.loads(spec)
    budget = SharedBudget(**options["budget"])
    result = anyio.run(
        lambda: send_many(
            options["port"],
            budget,
            messages=None,
            seconds=options["seconds"],
            max_size=4,
            senders=8,
        ),
        backend=options["backend"],
    )
    print(json.dumps(result), flush=True)


def fleet(processes: int, port: int, budget: dict[str, Any], seconds: float, backend: str) -> float:
    spec = {"port": port, "budget": budget, "seconds": seconds, "backend": backend}
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    results = [json.loads(worker.communicate()[0]) for worker in workers]
    # From the first process's start to the last one's end would count start-up; each process
    # measures its own sending time, and they overlap: the fleet's rate is the sum of the rates.
    return sum(result["sent"] / result["elapsed"] for result in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    with smtp_sink() as port, RedisServer() as redis:
        print(f"pooledmail shared budgets, {args.backend}, smtp-sink and redis-server on loopback")
        print(f"1. one process, max_size 8, 32 senders, {args.messages} messages")
        runs = {
            "no budget": None,
            "budget, limits never bind": SharedBudget(
                "bench-free", redis_url=redis.url, max_connections=8, max_messages_per_second=1e6
            ),
            f"budget, {args.rate:g} msg/s": SharedBudget(
                "bench-rate", redis_url=redis.url, max_messages_per_second=args.rate
            ),
        }
        baseline = 0.0
        for label, budget in runs.items():
            result = anyio.run(
                lambda b=budget: send_many(
                    port, b, messages=args.messages, seconds=None, max_size=8, senders=32
                ),
                backend=args.backend,
            )
            rate = result["sent"] / result["elapsed"]
            baseline = baseline or rate
            per_message = result["store_calls"] / result["sent"]
            print(
                f"   {label:<28} {rate / baseline:5.2f}x the no-budget rate"
                f"   {per_message:.3f} Redis round trips/message"
                + (f"   {rate / args.rate:.2f}x the budget" if "msg/s" in label else "")
            )
        print(f"2. a fleet under one budget of {args.rate:g} msg/s, {args.seconds:g} s each")
        for processes in (1, 2, 4, 8):
            budget = {
                "name": f"bench-fleet-{processes}",
                "redis_url": redis.url,
                "max_messages_per_second": args.rate,
            }
            total = fleet(processes, port, budget, args.seconds, args.backend)
            print(f"   {processes} process(es): {total / args.rate:5.2f}x the budget")
        time.sleep(0)


if __name__ == "__main__":
    main()
