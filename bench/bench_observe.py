"""What metrics cost on the per-message path, against Postfix's smtp-sink, as ratios in one run.

    python bench/bench_observe.py [--messages 4000] [--concurrency 8] [--rounds 3]
                                  [--backend asyncio] [--baseline-src PATH]

Each variant runs in its own process (so that "OpenTelemetry absent" really imports nothing of it)
against the same sink, with the same warm pool as bench_driver.py:

- `absent`: OpenTelemetry cannot be imported, as without `pooledmail[otel]`;
- `off`: installed, but `SMTPPool(metrics=False)`;
- `api only`: installed, no SDK configured: the API's no-op meter provider (what an application
  that installed the extra but set up no SDK pays);
- `sdk`: the OpenTelemetry SDK with an in-memory reader, every instrument recording;
- `baseline` (with `--baseline-src`): another checkout's `src` (say the commit before metrics),
  so that `absent / baseline` shows what the observer seam itself costs.

Rounds rotate the order; each variant keeps its best round. `cpu/msg` is the process's CPU time
per message: the direct measure of what the driver costs, less noisy than the rate on a busy
machine. Nothing is asserted; the numbers are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

CHILD = """
import json, sys, time
variant, port, messages, concurrency, backend = sys.argv[1:6]
port, messages, concurrency = int(port), int(messages), int(concurrency)
if variant == "absent":
    sys.modules["opentelemetry"] = None
import anyio
from pooledmail_anyio import Host, PoolConfig, SMTPPool

options = {}
if variant == "off":
    options["metrics"] = False
if variant == "sdk":
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    reader = InMemoryMetricReader()
    options["meter_provider"] = MeterProvider(metric_readers=[reader])

BODY = b"Subject: bench\\r\\nFrom: a@bench.test\\r\\nTo: b@bench.test\\r\\n\\r\\n" + (
    b"x" * 70 + b"\\r\\n"
) * 13

def split(total, parts):
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]

async def run():
    config = PoolConfig(
        [Host("127.0.0.1", port, tls="none")],
        max_size=concurrency,
        max_messages_per_connection=None,
        max_connection_age=None,
    )
    try:
        pool = SMTPPool(config, **options)
    except TypeError:  # a baseline without these options
        pool = SMTPPool(config)
    async with pool:
        async def worker(count):
            for _ in range(count):
                await pool.send_raw(BODY, sender="a@bench.test", recipients=["b@bench.test"])
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker, 20)
        wall, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for count in split(messages, concurrency):
                tg.start_soon(worker, count)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if variant == "sdk":
        assert reader.get_metrics_data() is not None
    print(json.dumps({"wall": wall, "cpu": cpu}))

anyio.run(run, backend=backend)
"""


def run_variant(
    variant: str, port: int, messages: int, concurrency: int, backend: str, src: Path
) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(port), str(messages), str(concurrency), backend],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{variant} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src directory")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_driver import smtp_sink

    variants = {"absent": SRC, "off": SRC, "api only": SRC, "sdk": SRC}
    if args.baseline_src:
        variants = {"baseline": args.baseline_src, **variants}
    names = list(variants)
    best: dict[str, dict[str, float]] = {}
    n, c = args.messages, args.concurrency
    with smtp_sink() as port:
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                child = "baseline" if name == "baseline" else name.replace(" ", "_")
                timing = run_variant(child, port, n, c, args.backend, variants[name])
                if name not in best or timing["cpu"] < best[name]["cpu"]:
                    best[name] = timing
    print(
        f"{n} messages, {c} concurrent senders, {args.backend}, smtp-sink, best of "
        f"{args.rounds} rounds (by CPU)"
    )
    for name in names:
        rate = n / best[name]["wall"]
        cpu = best[name]["cpu"] / n * 1e6
        print(f"  {name:<10} {rate:>9,.0f} messages/s   {cpu:6.1f} us cpu/msg")
    base = best["absent"]["cpu"]
    for name in names:
        if name != "absent":
            print(f"  cpu/msg {name} / absent   {best[name]['cpu'] / base:5.3f}")


if __name__ == "__main__":
    main()
