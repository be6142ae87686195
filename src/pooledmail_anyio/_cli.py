"""The `pooledmail` command: probe a server, send a message, check a configuration, benchmark a
server, or run the demo against an embedded one. See docs/guide/operations.md for every command,
option and exit status."""

from __future__ import annotations

import argparse
import collections
import datetime
import math
import os
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from anyio.streams.tls import TLSAttribute

import anyio
from pooledmail_core import (
    FailureKind,
    Host,
    InvalidArgument,
    Limits,
    PoolConfig,
    PoolStatistics,
    Stage,
    TLSMode,
    checked_envelope,
    classify,
)

from ._cli_options import (
    CommandLineError,
    add_host_options,
    add_pool_options,
    build_config,
    ssl_context_from,
)
from ._cli_output import Output
from ._connection import (
    TRANSPORT_ERRORS,
    ConnectFailure,
    Connection,
    describe_transport_failure,
    open_connection,
)
from ._pool import QUIT_GRACE, SMTPPool
from ._results import SendFailed

__all__ = ["EXIT_CODES", "main"]

# One exit status per failure kind (docs/guide/operations.md). 1 is left to Python's own crash,
# 2 to argparse and to a wrong option.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CODES: Mapping[FailureKind, int] = {
    FailureKind.PERMANENT: 10,
    FailureKind.TRANSIENT: 11,
    FailureKind.UNKNOWN_AFTER_DATA: 12,
    FailureKind.CONNECT_FAILED: 13,
    FailureKind.TLS_FAILED: 14,
    FailureKind.AUTH_FAILED: 15,
    FailureKind.HOSTS_UNAVAILABLE: 16,
    FailureKind.POOL_EXHAUSTED: 17,
    FailureKind.POOL_CLOSED: 18,
    FailureKind.RATE_LIMITED: 20,
    FailureKind.BUDGET_UNAVAILABLE: 21,
}
# The demo's own verdict: the embedded server did not receive every message.
EXIT_DEMO_MISMATCH = 19
# `send`: accepted for some recipients and refused for others. Not 0, so that a script notices;
# not a failure kind's, because sending the whole message again would deliver it twice to those
# that have it.
EXIT_PARTLY_REFUSED = 22


def _own_version() -> str:
    try:
        return version("pooledmail")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _size(text: str) -> int:
    value = _positive(text)
    if value < 64:
        raise argparse.ArgumentTypeError("must be at least 64 bytes (room for the headers)")
    return value


_BACKENDS = ("asyncio", "trio")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pooledmail",
        description="Guarded SMTP connection reuse: probe, send, check, bench, demo.",
        epilog="Exit status: 0 ok, 2 wrong option, 10-21 by failure kind (see docs).",
    )
    parser.add_argument("--version", action="version", version=f"pooledmail {_own_version()}")
    parser.add_argument(
        "--backend",
        choices=_BACKENDS,
        # None: from POOLEDMAIL_BACKEND, checked in `main` (argparse checks no default's choices).
        default=None,
        help="event loop (POOLEDMAIL_BACKEND; asyncio)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    probe = commands.add_parser(
        "probe",
        help="connect to one server and show what it offers; sends nothing",
        description="Greeting, extensions, TLS, certificate, AUTH and round-trip time of one "
        "server. Sends no message.",
    )
    add_host_options(probe, positional=True)
    add_pool_options(probe, "connect_timeout", "local_hostname")

    send = commands.add_parser(
        "send",
        help="send one message (body on stdin) through a pool",
        description="Send one message whose body is read from stdin. The exit status says how "
        "it ended (0 accepted; see the docs for the others).",
    )
    add_host_options(send, positional=False)
    send.add_argument("--from", dest="sender", required=True, help="envelope and From: sender")
    send.add_argument(
        "--to", dest="recipients", action="append", required=True, help="a recipient (repeat)"
    )
    send.add_argument("--subject", default="", help="the Subject: header")
    send.add_argument(
        "--raw", action="store_true", help="stdin is a whole message (headers and body), sent as is"
    )
    add_pool_options(send)

    check = commands.add_parser(
        "check",
        help="open one connection per host up to a ready session; sends nothing",
        description="Check every configured host as SMTPPool.check() does.",
    )
    add_host_options(check, positional=False)
    add_pool_options(check)

    bench = commands.add_parser(
        "bench",
        help="send N messages with C concurrent senders to a server and time them",
        description="Drive a server you control (a sink) and report messages/s, latency "
        "percentiles, connections created and failures by kind.",
    )
    add_host_options(bench, positional=False)
    bench.add_argument("-n", "--messages", type=_positive, default=1000, help="how many (1000)")
    bench.add_argument(
        "-c", "--concurrency", type=_positive, default=16, help="concurrent senders (16)"
    )
    bench.add_argument("--size", type=_size, default=1024, help="message size in bytes (1024)")
    bench.add_argument("--from", dest="sender", default="bench@example.com")
    bench.add_argument("--to", dest="recipient", default="sink@example.com")
    add_pool_options(bench)

    demo = commands.add_parser(
        "demo", help="send messages through a pool to an SMTP sink embedded on 127.0.0.1"
    )
    demo.add_argument("--messages", type=_positive, default=1000, help="how many (1000)")
    demo.add_argument("--concurrency", type=_positive, default=16, help="concurrent senders (16)")
    demo.add_argument("--max-size", type=_positive, default=4, help="pool max_size (4)")
    # `--backend` is taken after the command too (`pooledmail demo --backend trio`), as users
    # write it; given there it wins over the one before the command.
    for command in (probe, send, check, bench, demo):
        command.add_argument(
            "--backend", choices=_BACKENDS, default=argparse.SUPPRESS, help="event loop"
        )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    output = Output()
    commands: dict[str, Callable[[argparse.Namespace, Mapping[str, str], Output], int]] = {
        "probe": _probe_command,
        "send": _send_command,
        "check": _check_command,
        "bench": _bench_command,
        "demo": _demo_command,
    }
    try:
        if args.backend is None:
            args.backend = env.get("POOLEDMAIL_BACKEND", "asyncio")
            if args.backend not in _BACKENDS:
                raise CommandLineError(
                    f"backend: must be asyncio or trio, not {args.backend!r} (POOLEDMAIL_BACKEND)"
                )
        return commands[args.command](args, env, output)
    except CommandLineError as exc:
        output.error(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        output.error("interrupted")
        return 130


def _exit_code(kind: FailureKind) -> int:
    return EXIT_CODES[kind]


# -- probe ------------------------------------------------------------------------------------


@dataclass
class _Probe:
    host: str
    connected: Connection | None = None
    failure: ConnectFailure | None = None
    seconds: float = 0.0
    round_trip: float | None = None
    auth: ConnectFailure | Connection | None = None


async def _probe(
    host: Host, ssl_context: ssl.SSLContext, connect_timeout: float, local_hostname: str
) -> tuple[_Probe, list[tuple[str, str]]]:
    found = _Probe(host.key)
    # First without credentials: what the server offers, even if AUTH would then fail.
    anonymous = Host(host.hostname, host.port, tls=host.tls)
    clock = anyio.current_time
    started = clock()
    outcome = await open_connection(
        anonymous,
        local_hostname=local_hostname,
        connect_timeout=connect_timeout,
        ssl_context=ssl_context,
        limits=Limits(),
        quit_grace=QUIT_GRACE,
        keep_greeting=True,
    )
    found.seconds = clock() - started
    rows: list[tuple[str, str]] = [("server", host.key)]
    if isinstance(outcome, ConnectFailure):
        found.failure = outcome
        rows.append(("result", f"{outcome.kind.name} during {outcome.stage.name}"))
        rows.append(("reason", outcome.reason))
        return found, rows
    connection = outcome
    # One deadline for the connection, its NOOP and its QUIT, as for `check()`.
    deadline = started + connect_timeout
    try:
        rows.append(("ready in", f"{found.seconds * 1000:.1f} ms"))
        if connection.greeting is not None:
            rows.append(("greeting", str(connection.greeting)))
        rows.extend(_tls_rows(connection, host.tls))
        rows.extend(_extension_rows(connection))
        noop = connection.session.noop()
        before = clock()
        try:
            await connection.run(noop, step_timeout=connect_timeout, deadline=deadline)
        except TRANSPORT_ERRORS as exc:
            why = describe_transport_failure(
                exc,
                Stage.EHLO,
                host,
                connect_timeout,
                connecting=True,
                closed=connection.server_closed,
                command="NOOP",
            )
            found.failure = ConnectFailure(host.key, classify(Stage.EHLO), None, exc, why)
            rows.append(("round trip", f"NOOP failed: {why}"))
            return found, rows
        found.round_trip = clock() - before
        reply = noop.result
        if reply.is_positive:
            rows.append(("round trip", f"{found.round_trip * 1000:.2f} ms (NOOP: {reply})"))
        else:
            # As `check()` judges it (CONNECT_FAILED): a session that refuses NOOP is no
            # session a pool can keep alive; the probe still goes on to show AUTH.
            why = f"NOOP refused: server said {reply}"
            found.failure = ConnectFailure(host.key, classify(Stage.EHLO), reply, None, why)
            rows.append(("round trip", f"{why} (after {found.round_trip * 1000:.2f} ms)"))
    finally:
        await connection.quit(QUIT_GRACE, deadline=deadline)
    if host.username is not None:
        auth_started = clock()
        auth = await open_connection(
            host,
            local_hostname=local_hostname,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
            limits=Limits(),
            quit_grace=QUIT_GRACE,
        )
        found.auth = auth
        if isinstance(auth, ConnectFailure):
            rows.append(("AUTH", f"{auth.kind.name}: {auth.reason}"))
        else:
            rows.append(("AUTH", f"accepted for {host.username} ({auth.auth_mechanism})"))
            # Within the second connection's own connect timeout, as its setup.
            await auth.quit(QUIT_GRACE, deadline=auth_started + connect_timeout)
    return found, rows


def _tls_rows(connection: Connection, mode: TLSMode) -> list[tuple[str, str]]:
    stream = connection.stream
    version_ = connection.tls_version()
    if version_ is None:
        return [("TLS", "none (plaintext)")]
    cipher = stream.extra(TLSAttribute.cipher, None)
    how = "implicit" if mode is TLSMode.IMPLICIT else "STARTTLS"
    rows = [("TLS", f"{version_}, {cipher[0] if cipher else '?'} ({how})")]
    certificate = stream.extra(TLSAttribute.peer_certificate, None)
    if certificate:
        rows.append(("certificate", _name(certificate.get("subject", ()))))
        names: Any = certificate.get("subjectAltName", ())
        if names:
            rows.append(("names", ", ".join(f"{kind} {value}" for kind, value in names)))
        rows.append(("issuer", _name(certificate.get("issuer", ()))))
        expires = certificate.get("notAfter")
        if isinstance(expires, str):
            when = datetime.datetime.fromtimestamp(
                ssl.cert_time_to_seconds(expires), tz=datetime.timezone.utc
            )
            left = when - datetime.datetime.now(datetime.timezone.utc)
            rows.append(("expires", f"{when:%Y-%m-%d %H:%M} UTC (in {left.days} days)"))
    return rows


def _name(parts: Any) -> str:
    return ", ".join(f"{key}={value}" for rdn in parts for key, value in rdn) or "-"


def _extension_rows(connection: Connection) -> list[tuple[str, str]]:
    caps = connection.session.capabilities
    offered = [
        name
        for name, on in (
            ("PIPELINING", caps.pipelining),
            ("CHUNKING", caps.chunking),
            ("SMTPUTF8", caps.smtputf8),
            ("8BITMIME", caps.eight_bit_mime),
            ("DSN", caps.dsn),
            ("ENHANCEDSTATUSCODES", caps.enhanced_status_codes),
            ("STARTTLS", caps.starttls),
        )
        if on
    ]
    if caps.size is not None:
        offered.append(f"SIZE {caps.size}" if caps.size else "SIZE (no limit given)")
    mechanisms = " ".join(sorted(caps.auth_mechanisms)) or "none offered"
    return [("extensions", ", ".join(offered) or "none"), ("AUTH mechanisms", mechanisms)]


def _probe_command(args: argparse.Namespace, env: Mapping[str, str], output: Output) -> int:
    config = build_config(args, env, hosts=[args.host])
    context = ssl_context_from(args, env)
    host = config.hosts[0]
    found, rows = anyio.run(
        _probe,
        host,
        context,
        config.connect_timeout,
        config.local_hostname or "localhost",
        backend=args.backend,
    )
    output.fields(f"pooledmail probe {host.key}", rows)
    if found.failure is not None:
        return _exit_code(found.failure.kind)
    if isinstance(found.auth, ConnectFailure):
        return _exit_code(found.auth.kind)
    return EXIT_OK


# -- send -------------------------------------------------------------------------------------


def _send_command(args: argparse.Namespace, env: Mapping[str, str], output: Output) -> int:
    config = build_config(args, env, prompt=False)
    context = ssl_context_from(args, env)
    data = sys.stdin.buffer.read()

    async def run() -> Any:
        async with SMTPPool(config, ssl_context=context) as pool:
            if args.raw:
                return await pool.send_raw(data, sender=args.sender, recipients=args.recipients)
            message = EmailMessage()
            message["From"] = args.sender
            message["To"] = ", ".join(args.recipients)
            message["Subject"] = args.subject
            message.set_content(data.decode("utf-8", "replace"))
            return await pool.send(message)

    try:
        result = anyio.run(run, backend=args.backend)
    except SendFailed as failure:
        output.error(str(failure))
        return _exit_code(failure.kind)
    except (InvalidArgument, ValueError) as exc:  # a bad --from / --to / --subject
        output.error(f"error: {exc}")
        return EXIT_USAGE
    output.line(f"accepted by {result.host}: {result.reply}")
    # --raw bytes may have no Message-ID: say so in words, as the log records do.
    message_id = result.message_id or "none (the message has no Message-ID)"
    output.line(f"message-id {message_id}")
    if not result.refused:
        return EXIT_OK
    for recipient, reply in result.refused:
        output.line(f"refused {recipient}: {reply}")
    return EXIT_PARTLY_REFUSED


# -- check ------------------------------------------------------------------------------------


def _check_command(args: argparse.Namespace, env: Mapping[str, str], output: Output) -> int:
    config = build_config(args, env)
    context = ssl_context_from(args, env)

    async def run() -> Any:
        return await SMTPPool(config, ssl_context=context, metrics=False).check()

    report = anyio.run(run, backend=args.backend)
    rows = []
    for found in report.hosts:
        if found.ok:
            rtt = found.round_trip_seconds or 0.0
            rows.append(
                [
                    found.host,
                    "ok",
                    found.tls_version or "none",
                    found.auth_mechanism or "-",
                    f"{found.setup_seconds * 1000:.1f} ms",
                    f"{rtt * 1000:.2f} ms",
                    found.reason,
                ]
            )
        else:
            kind = found.kind.name if found.kind is not None else "FAILED"
            rows.append(
                [
                    found.host,
                    kind,
                    found.tls_version or "-",
                    found.auth_mechanism or "-",
                    f"{found.setup_seconds * 1000:.1f} ms",
                    "-",
                    f"during {found.stage.name}: {found.reason}",
                ]
            )
    output.table(
        "pooledmail check",
        ["host", "result", "TLS", "AUTH", "ready in", "NOOP", "detail"],
        rows,
    )
    for found in report.hosts:
        if not found.ok and found.kind is not None:
            return _exit_code(found.kind)
    return EXIT_OK


# -- bench and demo ---------------------------------------------------------------------------


@dataclass
class _Run:
    elapsed: float
    latencies: list[float]
    outcomes: collections.Counter[str]
    stats: PoolStatistics


def _raw_message(size: int, sender: str, recipient: str) -> bytes:
    head = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: pooledmail bench\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body + b"." * max(0, size - len(head) - len(body) - 2) + b"\r\n"


async def _drive(
    config: PoolConfig,
    ssl_context: ssl.SSLContext | None,
    count: int,
    concurrency: int,
    make: Callable[[int], Callable[[SMTPPool], Any]],
    advance: Callable[[int], None],
) -> _Run:
    outcomes: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    pending = iter(range(count))
    clock = anyio.current_time
    async with SMTPPool(config, ssl_context=ssl_context) as pool:

        async def sender() -> None:
            for n in pending:
                began = clock()
                try:
                    await make(n)(pool)
                except SendFailed as failure:
                    outcomes[failure.kind.name] += 1
                else:
                    outcomes["ACCEPTED"] += 1
                    latencies.append(clock() - began)
                advance(1)

        start = clock()
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, count)):
                tg.start_soon(sender)
        elapsed = clock() - start
        stats = pool.statistics()
    return _Run(elapsed, latencies, outcomes, stats)


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def _summary(run: _Run, count: int) -> list[tuple[str, str]]:
    rate = count / run.elapsed if run.elapsed > 0 else math.inf
    ordered = sorted(run.latencies)
    latency = ", ".join(
        f"{label} {_percentile(ordered, fraction) * 1000:.1f} ms"
        for label, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    )
    closed = ", ".join(f"{k} {v}" for k, v in sorted(run.stats.closed_total.items()) if v)
    failures = ", ".join(f"{k} {v}" for k, v in sorted(run.outcomes.items()) if k != "ACCEPTED")
    return [
        ("messages", f"{count} in {run.elapsed:.2f} s"),
        ("messages/s", f"{rate:,.0f}"),
        ("latency", latency if ordered else "-"),
        ("accepted", str(run.outcomes.get("ACCEPTED", 0))),
        ("failures", failures or "none"),
        ("connections", f"{run.stats.created_total} created, closed: {closed or 'none'}"),
    ]


def _failure_exit(outcomes: collections.Counter[str]) -> int:
    failures = [(n, kind) for kind, n in outcomes.items() if kind != "ACCEPTED"]
    if not failures:
        return EXIT_OK
    _, kind = max(failures)
    return _exit_code(FailureKind[kind])


def _bench_command(args: argparse.Namespace, env: Mapping[str, str], output: Output) -> int:
    config = build_config(args, env)
    context = ssl_context_from(args, env)
    try:
        # Checked before they go into the message's header fields and the pool's envelopes.
        checked_envelope(args.sender, [args.recipient])
    except InvalidArgument as exc:
        output.error(f"error: {exc}")
        return EXIT_USAGE
    raw = _raw_message(args.size, args.sender, args.recipient)

    def make(n: int) -> Callable[[SMTPPool], Any]:
        return lambda pool: pool.send_raw(raw, sender=args.sender, recipients=[args.recipient])

    with output.progress("sending", args.messages) as advance:
        run = anyio.run(
            _drive,
            config,
            context,
            args.messages,
            args.concurrency,
            make,
            advance,
            backend=args.backend,
        )
    title = f"pooledmail bench: {config.hosts[0].key}, {args.backend}, -c {args.concurrency}"
    output.fields(title, _summary(run, args.messages))
    return _failure_exit(run.outcomes)


def _demo_message(n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "demo@pooledmail.test"
    message["To"] = f"user{n % 10}@pooledmail.test"
    message["Subject"] = f"pooledmail demo message {n}"
    message.set_content(f"Hello from the pooledmail demo, message number {n}.\n")
    return message


def _demo_command(args: argparse.Namespace, env: Mapping[str, str], output: Output) -> int:
    from .testing import LocalSMTPServer

    def make(n: int) -> Callable[[SMTPPool], Any]:
        return lambda pool: pool.send(_demo_message(n))

    with LocalSMTPServer(keep_messages=False) as sink:
        config = PoolConfig(
            [Host("127.0.0.1", sink.port, tls="none")],
            max_size=args.max_size,
            local_hostname="demo.pooledmail.test",
        )
        with output.progress("sending", args.messages) as advance:
            run = anyio.run(
                _drive,
                config,
                None,
                args.messages,
                args.concurrency,
                make,
                advance,
                backend=args.backend,
            )
        received = sink.received
    rows = [("backend", args.backend), *_summary(run, args.messages)]
    rows.append(("server received", str(received)))
    output.fields("pooledmail demo", rows)
    output.line(
        "note: the rate is bounded by the embedded server (aiosmtpd, in Python, in a thread "
        "of this process); use `pooledmail bench` against a real server to measure the pool."
    )
    if run.outcomes.get("ACCEPTED", 0) == args.messages == received:
        return EXIT_OK
    code = _failure_exit(run.outcomes)
    return code if code != EXIT_OK else EXIT_DEMO_MISMATCH
