"""A Django view sending one message per request, under 16 threads: pooled backend vs Django's.

    python bench/bench_django.py [--requests 2000] [--threads 16] [--rounds 3] [--starttls]

Needs Django (`pip install ".[bench]"`) and Postfix's `smtp-sink` (Debian's `postfix` package),
which plays the relay on 127.0.0.1 in its own process. With `--starttls` the relay is aiosmtpd
in its own process instead, requiring STARTTLS with a certificate from a throw-away CA (trustme)
that the client trusts through `SSL_CERT_FILE`, as a real relay on port 587 would.

Each request goes through Django's whole request handler (`django.test.Client`, no HTTP
server) to a view that calls `send_mail()` for one 1 KiB message to one recipient and answers
with the count sent. Contenders, each with the same settings except `EMAIL_BACKEND`:

- `pooledmail_django.EmailBackend` on the asyncio loop and on the trio loop (`max_size` 8);
- `django.core.mail.backends.smtp.EmailBackend`, which opens one SMTP connection per
  `send_mail()`;
- `django.core.mail.backends.locmem.EmailBackend`, which sends nothing: the floor, what Django's
  request handling and message building cost by themselves.

Every contender is warmed up with one request per thread before its clock starts. Each round runs
every contender once, in a rotated order; the table keeps each one's best round (the least
disturbed on a shared machine) and the ratios compare those. "conn" is the number of SMTP
connections the contender opened during its timed run (the pool's `created_total`; for Django's
backend, `smtplib.SMTP.connect` calls). Nothing is asserted; the numbers are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import django
from bench_driver import smtp_sink
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

BODY = ("x" * 70 + "\n") * 13
CONTENDERS = {
    "pooled asyncio": ("pooledmail_django.EmailBackend", "asyncio"),
    "pooled trio": ("pooledmail_django.EmailBackend", "trio"),
    "django smtp": ("django.core.mail.backends.smtp.EmailBackend", "asyncio"),
    "django locmem": ("django.core.mail.backends.locmem.EmailBackend", "asyncio"),
}


def signup(request: HttpRequest) -> HttpResponse:
    from django.core.mail import send_mail

    sent = send_mail("Welcome", BODY, "app@bench.test", [f"{request.GET['u']}@bench.test"])
    return HttpResponse(str(sent))


urlpatterns = [path("signup", signup)]


class ConnectCounter:
    """Counts `smtplib.SMTP.connect` calls: Django's backend opens one per `send_mail()`."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self._connect = smtplib.SMTP.connect

    def install(self) -> None:
        counter, connect = self, self._connect

        def counting(smtp: smtplib.SMTP, *args: Any, **kwargs: Any) -> Any:
            with counter.lock:
                counter.count += 1
            return connect(smtp, *args, **kwargs)

        smtplib.SMTP.connect = counting  # type: ignore[method-assign]


@dataclass
class Timing:
    wall: float
    cpu: float
    connections: int


def run(name: str, requests: int, threads: int, counter: ConnectCounter) -> Timing:
    from django.core.mail import get_connection
    from django.test import Client, override_settings

    backend_path, loop = CONTENDERS[name]
    with override_settings(EMAIL_BACKEND=backend_path, POOLEDMAIL={"backend": loop}):
        pool = get_connection().pool if backend_path.startswith("pooledmail") else None
        clients = [Client() for _ in range(threads)]
        failures: list[str] = []
        start = threading.Barrier(threads + 1)

        def worker(index: int, count: int) -> None:
            client = clients[index]
            # Warm-up: one request before the clock starts (connections, caches).
            client.get("/signup", {"u": f"warm{index}"})
            start.wait()
            for n in range(count):
                response = client.get("/signup", {"u": f"t{index}n{n}"})
                if response.content != b"1":
                    failures.append(response.content.decode())

        shares = [requests // threads + (i < requests % threads) for i in range(threads)]
        workers = [threading.Thread(target=worker, args=(i, shares[i])) for i in range(threads)]
        for thread in workers:
            thread.start()
        start.wait()
        created_before = pool.statistics().created_total if pool else counter.count
        wall, cpu = time.perf_counter(), time.process_time()
        for thread in workers:
            thread.join()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        created = (pool.statistics().created_total if pool else counter.count) - created_before
        if pool is not None:
            pool.close()
    if failures:
        sys.exit(f"{name}: {len(failures)} requests did not send their message")
    return Timing(wall, cpu, created)


STARTTLS_SINK = """
import ssl, sys, threading
from aiosmtpd.controller import Controller

class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 queued"

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(sys.argv[2])
controller = Controller(
    Sink(), hostname="127.0.0.1", port=int(sys.argv[1]), tls_context=context,
    require_starttls=True,
)
controller.start()
print("ready", flush=True)
threading.Event().wait()
"""


@contextlib.contextmanager
def starttls_sink() -> Iterator[int]:
    """aiosmtpd requiring STARTTLS, in its own process; the client trusts its CA."""
    import trustme

    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as folder:
        server_pem = os.path.join(folder, "server.pem")
        ca_pem = os.path.join(folder, "ca.pem")
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(server_pem)
        ca.cert_pem.write_to_path(ca_pem)
        # Read by ssl.create_default_context() in both backends.
        os.environ["SSL_CERT_FILE"] = ca_pem
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-c", STARTTLS_SINK, str(port), server_pem],
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            process.stdout.readline()
            yield port
        finally:
            process.terminate()
            process.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--starttls", action="store_true")
    args = parser.parse_args()
    counter = ConnectCounter()
    counter.install()
    names = list(CONTENDERS)
    best: dict[str, Timing] = {}
    with starttls_sink() if args.starttls else smtp_sink() as port:
        settings.configure(
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["testserver"],
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=port,
            EMAIL_USE_TLS=args.starttls,
            DEFAULT_CHARSET="utf-8",
        )
        django.setup()
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                timing = run(name, args.requests, args.threads, counter)
                if name not in best or timing.wall < best[name].wall:
                    best[name] = timing
    n = args.requests
    sink = "aiosmtpd with STARTTLS" if args.starttls else "smtp-sink"
    print(
        f"{n} requests, one send_mail() each, {args.threads} threads, {sink} on loopback, "
        f"best of {args.rounds} rounds"
    )
    for name in names:
        timing = best[name]
        print(
            f"  {name:<15} {n / timing.wall:>7,.0f} messages/s  "
            f"{timing.cpu / n * 1e6:6.0f} us cpu/msg  {timing.connections:>5} conn"
        )
    base = n / best["django smtp"].wall
    for name in ("pooled asyncio", "pooled trio"):
        print(f"  {name} / django smtp  {n / best[name].wall / base:5.2f}x messages/s")


if __name__ == "__main__":
    main()
