"""Memory: the peak a large message adds while it is sent, and what idle TLS connections cost.

    python bench/bench_memory.py [--sizes 10,50] [--connections 100] [--backend both]

Each case runs in a fresh process of its own, so that one does not inherit another's heap.

- Peak growth for an N-byte message: the message is built first (it is the caller's memory),
  one connection is warmed up, then `send_raw(data)` sends it to Postfix's `smtp-sink` (DATA,
  PIPELINING). Reported two ways: the peak of Python's own allocations during the send above
  what was allocated before it (`tracemalloc`), and the peak resident set size during the send
  above the resident size before it (Linux `VmHWM`, reset first through `/proc/self/clear_refs`).
  The same for `send(EmailMessage)`, whose serialized form is itself N bytes the caller did not
  hold.
- Idle TLS connections: a pool opens `--connections` connections with STARTTLS to a local
  aiosmtpd (in a process of its own) and lets them sit idle; reported is the resident size they
  add over the same process with every import made, the TLS context built and one connection's
  worth of code run (a pool of one opened, used and closed), per connection and in total.

Needs smtp-sink (Debian's `postfix`), aiosmtpd and trustme (`pip install ".[bench]"`). Nothing is
asserted; the numbers are printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from email.message import EmailMessage
from pathlib import Path

import anyio
from pooledmail_anyio import Host, PoolConfig, SMTPPool

SENDER = "a@bench.test"
RECIPIENTS = ["b@bench.test"]
MIB = 1 << 20


def resident() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one.
    Path("/proc/self/clear_refs").write_text("5")


def message_bytes(size: int) -> bytes:
    line = b"x" * 998 + b"\r\n"
    head = b"From: a@bench.test\r\nTo: b@bench.test\r\nSubject: large\r\n\r\n"
    return head + line * ((size - len(head)) // len(line))


def email_message(size: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "a@bench.test"
    message["To"] = "b@bench.test"
    message["Subject"] = "large"
    # Lines of 998 characters: sent as they are (7bit), so the bytes are as many as the text.
    message.set_content(("x" * 998 + "\n") * (size // 1000), cte="7bit")
    return message


# -- one case per process ----------------------------------------------------------------------


async def large_message_case(port: int, size: int, api: str) -> dict[str, float]:
    config = PoolConfig([Host("127.0.0.1", port, tls="none")], max_size=1)
    payload: bytes | EmailMessage = (
        message_bytes(size) if api == "send_raw" else email_message(size)
    )
    async with SMTPPool(config) as pool:
        await pool.send_raw(b"Subject: warm\r\n\r\nup\r\n", sender=SENDER, recipients=RECIPIENTS)
        gc.collect()
        tracemalloc.start()
        before, _ = tracemalloc.get_traced_memory()
        reset_peak()
        rss_before, _ = resident()
        if isinstance(payload, EmailMessage):
            await pool.send(payload, sender=SENDER, recipients=RECIPIENTS)
        else:
            await pool.send_raw(payload, sender=SENDER, recipients=RECIPIENTS)
        _, rss_peak = resident()
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {"traced_growth": traced_peak - before, "rss_growth": rss_peak - rss_before}


async def idle_tls_case(port: int, ca_file: str, connections: int) -> dict[str, float]:
    import ssl

    context = ssl.create_default_context(cafile=ca_file)
    host = Host("127.0.0.1", port, tls="starttls")
    # Everything one connection needs, imported and run once, then gone.
    async with SMTPPool(PoolConfig([host], max_size=1), ssl_context=context) as pool:
        await pool.send_raw(b"Subject: warm\r\n\r\nup\r\n", sender=SENDER, recipients=RECIPIENTS)
    gc.collect()
    await anyio.sleep(0.2)
    idle_process, _ = resident()
    config = PoolConfig([host], min_size=connections, max_size=connections, refill_delay=0.0)
    async with SMTPPool(config, ssl_context=context) as pool:
        for _ in range(2400):  # at most 120 s
            if pool.statistics().idle >= connections:
                break
            await anyio.sleep(0.05)
        gc.collect()
        await anyio.sleep(0.5)
        with_connections, _ = resident()
        assert pool.statistics().idle == connections
    return {"growth": with_connections - idle_process}


def run_case(argv: list[str]) -> None:
    kind, backend = argv[0], argv[1]
    if kind == "large":
        port, size, api = int(argv[2]), int(argv[3]), argv[4]
        result = anyio.run(large_message_case, port, size, api, backend=backend)
    else:
        port, ca_file, connections = int(argv[2]), argv[3], int(argv[4])
        result = anyio.run(idle_tls_case, port, ca_file, connections, backend=backend)
    print(json.dumps(result))


def in_child(*argv: object) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--case", *map(str, argv)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


# -- servers -------------------------------------------------------------------------------------

TLS_SERVER = """
import asyncio, ssl, sys
from aiosmtpd.controller import Controller

class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(sys.argv[2])
controller = Controller(
    Handler(), hostname="127.0.0.1", port=int(sys.argv[1]), tls_context=context,
    require_starttls=True,
)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"""


def main() -> None:
    if sys.argv[1:2] == ["--case"]:
        run_case(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,50", help="message sizes in MiB")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    args = parser.parse_args()
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_driver import free_port, smtp_sink

    print("Peak growth while one message is sent (smtp-sink, DATA), over what was held before:")
    with smtp_sink() as port:
        for size_mib in (int(size) for size in args.sizes.split(",")):
            size = size_mib * MIB
            for backend in backends:
                for api in ("send_raw", "send"):
                    result = in_child("large", backend, port, size, api)
                    print(
                        f"  {size_mib:>3} MiB {backend:<8} {api:<9}"
                        f" Python allocations {result['traced_growth'] / size:5.2f} x N"
                        f"   resident {result['rss_growth'] / size:5.2f} x N"
                    )

    import trustme

    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1")
    with tempfile.TemporaryDirectory() as directory:
        ca_file = os.path.join(directory, "ca.pem")
        key_file = os.path.join(directory, "server.pem")
        ca.cert_pem.write_to_path(ca_file)
        certificate.private_key_and_cert_chain_pem.write_to_path(key_file)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", TLS_SERVER, str(port), key_file],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            time.sleep(0.2)
            print(f"\n{args.connections} idle connections with STARTTLS (aiosmtpd), resident size:")
            for backend in backends:
                result = in_child("idle", backend, port, ca_file, args.connections)
                growth = result["growth"]
                print(
                    f"  {backend:<8} {growth / MIB:6.2f} MiB over the idle process"
                    f" ({growth / args.connections / 1024:5.1f} KiB per connection)"
                )
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)


if __name__ == "__main__":
    main()
