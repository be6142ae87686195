"""The benchmark harness: pooledmail against aiosmtplib, smtplib, Postfix's smtp-source and a bare
pipelined loop, on loopback and through a 10 ms round trip, as one table and one JSON file.

    python bench/harness.py            # the full run (several minutes)
    python bench/harness.py --quick    # fewer messages, one round (well under a minute)

Needs Postfix's `smtp-sink` and `smtp-source` (Debian's `postfix` package), trio and aiosmtplib
(`pip install -e ".[bench]"`); the latency-bound run against a real Postfix also needs root, the
`postfix`, `sasl2-bin` and `libsasl2-modules` packages and trustme (it starts a private instance
with `tests/servers/postfix.py`, as the tests do). What is missing is skipped and said so.

Two sections, each made of interleaved rounds: a round runs every row once, in an order rotated
by one from the previous round's, so that load from elsewhere on the machine falls on a
different row each time. Each row's figures are the medians over rounds; its ratio to aiosmtplib
with reused clients is the median of the ratios measured in the same round against the same
server. Every in-process sender runs in a fresh child process (`harness_senders.py`); what each
figure is, and how it is measured, is written in docs/benchmarks.md.

1. Throughput: 1 KiB messages, one recipient, 8 connections, Postfix's smtp-sink on 127.0.0.1.
2. Latency-bound: the same senders through `delay_proxy.py` (5 ms each way: a 10 ms round trip)
   to smtp-sink and to a private Postfix smtpd with STARTTLS, AUTH and CHUNKING, next to the same
   pool without the proxy, for the target "85 % of the lower of 8 connections x one message per
   round trip, and the same pool's rate without the delay".

Connections and messages are counted by the server (smtp-sink's -c counters, Postfix's log and
hold queue), not taken from the client's word; a mismatch with what the client sent is flagged.
Nothing is asserted: the harness prints and records.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

BENCH = Path(__file__).resolve().parent
REPO_ROOT = BENCH.parent

from allocator import steady_allocator  # noqa: E402  (a sibling module, as below)
from harness_senders import (  # noqa: E402  (a sibling module: bench/ is not a package)
    RAW_MESSAGE,
    RECIPIENTS,
    SENDER,
    SenderSpec,
    run_sender,
)

LOOPBACK = "127.0.0.1"
BASELINE = "aiosmtplib-reused"


@dataclass(frozen=True)
class Contender:
    id: str
    label: str
    per_message: bool = False  # opens a connection for every message
    # Speaks only BDAT: runs against servers that offer CHUNKING (the private Postfix).
    needs_chunking: bool = False


CONTENDERS = {
    c.id: c
    for c in [
        Contender("pooledmail-asyncio-send_raw", "pooledmail, asyncio, send_raw"),
        Contender("pooledmail-trio-send_raw", "pooledmail, trio, send_raw"),
        Contender("pooledmail-asyncio-send", "pooledmail, asyncio, send(EmailMessage)"),
        Contender("pooledmail-trio-send", "pooledmail, trio, send(EmailMessage)"),
        Contender("pooledmail-asyncio-as_bytes", "as_bytes(policy=SMTP) + send_raw, asyncio"),
        Contender("pooledmail-trio-as_bytes", "as_bytes(policy=SMTP) + send_raw, trio"),
        Contender("aiosmtplib-reused", "aiosmtplib, reused clients"),
        Contender("aiosmtplib-per-message", "aiosmtplib, connect per message", True),
        Contender("smtplib-reused", "smtplib in threads, reused"),
        Contender("smtplib-per-message", "smtplib in threads, connect per message", True),
        Contender("smtp-source-d", "smtp-source -d (C, reused)"),
        Contender("smtp-source", "smtp-source (C, connect per message)", True),
        Contender("bare-asyncio", "bare pipelined loop, asyncio streams"),
        Contender("bare-anyio-trio", "bare pipelined loop, anyio on trio"),
        Contender(
            "bare-asyncio-chunking-1",
            "bare CHUNKING loop, asyncio streams, 1 in flight",
            needs_chunking=True,
        ),
        Contender(
            "bare-asyncio-chunking-2",
            "bare CHUNKING loop, asyncio streams, 2 in flight",
            needs_chunking=True,
        ),
    ]
}
THROUGHPUT_CONTENDERS = [c.id for c in CONTENDERS.values() if not c.needs_chunking]
LATENCY_CONTENDERS = [
    "pooledmail-asyncio-send_raw",
    "pooledmail-trio-send_raw",
    "aiosmtplib-reused",
    "aiosmtplib-per-message",
]
# What any client gets through the delay with one transaction in flight per connection (the
# first: one message per round trip, no client work to speak of), and with two: the floor that
# separates the pool's own overhead from the environment's ceiling. CHUNKING servers only.
LATENCY_FLOOR = [c.id for c in CONTENDERS.values() if c.needs_chunking]
# The same pool without the proxy: the second half of the latency target's bound.
LATENCY_DIRECT = ["pooledmail-asyncio-send_raw", "pooledmail-trio-send_raw"]


# -- what the servers recorded -------------------------------------------------------------------


class ServerRecord(Protocol):
    name: str
    port: int

    def counts(self) -> tuple[int, int]:
        """(sessions ended, messages accepted) so far, as the server counts them."""
        ...

    def before_run(self) -> None: ...

    def after_run(self) -> dict[str, Any]:
        """What else the server recorded about the run; then clean up after it."""
        ...


_SINK_COUNTERS = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)")


class SinkRecord:
    """smtp-sink started with -c writes "sess=S quit=Q mesg=M" each time a session ends, a QUIT
    is read or a message is received: its own count of sessions and messages."""

    name = "smtp-sink"

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.port: int = sink.port

    def counts(self) -> tuple[int, int]:
        with open(self._sink.log_file, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 4096))
            found = _SINK_COUNTERS.findall(log.read())
        if not found:
            return 0, 0
        sessions, messages = found[-1]
        return int(sessions), int(messages)

    def before_run(self) -> None:
        pass

    def after_run(self) -> dict[str, Any]:
        return {}


class PostfixRecord:
    """Sessions: smtpd's "disconnect" lines in the instance's log. Messages: files in the hold
    queue, where the instance puts every message it accepts (tests/servers/postfix.py); emptied
    between runs, outside the timing, once it holds more than PURGE_ABOVE files."""

    PURGE_ABOVE = 5000

    name = "postfix"

    def __init__(self, postfix: Any) -> None:
        self._postfix = postfix
        self.port: int = postfix.port
        self._postsuper = shutil.which("postsuper", path="/usr/sbin:/usr/bin:/sbin") or "postsuper"
        self._log_start = postfix.log_position()
        self._run_log_start = self._log_start
        self._deleted = 0

    def counts(self) -> tuple[int, int]:
        sessions = len(self._postfix.sessions(self._log_start))
        hold = self._postfix.queue_directory / "hold"
        held = sum(1 for entry in hold.iterdir() if entry.is_file())
        return sessions, self._deleted + held

    def before_run(self) -> None:
        self._run_log_start = self._postfix.log_position()

    def after_run(self) -> dict[str, Any]:
        # smtpd's own command counts for the run's sessions: BDAT, not DATA, carried the mail.
        commands: dict[str, int] = {}
        for session in self._postfix.sessions(self._run_log_start):
            for command, count in session.succeeded.items():
                commands[command] = commands.get(command, 0) + count
        hold = self._postfix.queue_directory / "hold"
        held = sum(1 for entry in hold.iterdir() if entry.is_file())
        if held <= self.PURGE_ABOVE:
            return {"server_commands": commands}
        subprocess.run(
            [self._postsuper, "-c", str(self._postfix.config_directory), "-d", "ALL", "hold"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        self._deleted += held
        return {"server_commands": commands}


def _open_server_side_connections(port: int) -> int:
    """Connections to `port` the server still holds: ESTABLISHED, SYN_RECV or CLOSE_WAIT."""
    wanted = f":{port:04X}"
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] in ("01", "03", "08"):
                count += 1
    return count


def settle(
    record: ServerRecord, before: tuple[int, int], expected_sessions: int | None
) -> tuple[int, int]:
    """What the server counted for the run that just ended: wait, bounded, until it holds no
    connection of the run, has counted the sessions the sender says it opened, and its counters
    stay still for a moment (a session is counted when it ends, and Postfix logs it a little
    after that)."""
    deadline = time.monotonic() + 20
    last = record.counts()
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = record.counts()
        if now != last:
            last, still_since = now, time.monotonic()
            continue
        sessions = now[0] - before[0]
        if _open_server_side_connections(record.port) or (
            expected_sessions is not None and sessions < expected_sessions
        ):
            continue
        if time.monotonic() - still_since >= 0.1:
            break
    return last[0] - before[0], last[1] - before[1]


# -- targets and rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a row sends: the server, directly or through a delay proxy, and how to log in."""

    label: str
    host: str
    port: int
    record: ServerRecord
    tls: str = "none"
    cafile: str | None = None
    username: str | None = None
    password: str | None = None
    through_proxy: bool = False
    chunking: bool = False  # the server offers CHUNKING (RFC 3030)

    @property
    def round_trips_per_message(self) -> int:
        # Without CHUNKING the body must wait for the 354 to DATA (RFC 2920 §3.1): two round
        # trips per message; with it, MAIL, RCPT and BDAT LAST go in one flight (RFC 3030): one.
        return 1 if self.chunking else 2


@dataclass(frozen=True)
class Row:
    key: str
    contender: Contender
    target: Target
    messages: int
    warmup: int
    concurrency: int | None = None  # the section's, unless given


@dataclass
class RowResult:
    row: Row
    runs: list[dict[str, Any]] = field(default_factory=list)


# -- running one row once ------------------------------------------------------------------------


def _child(spec: SenderSpec, results: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        results.send(("ok", asdict(run_sender(spec))))
    except BaseException as error:
        results.send(("error", f"{type(error).__name__}: {error}"))
        raise


def run_in_child(spec: SenderSpec, timeout: float) -> dict[str, Any]:
    """Run one sender in a child forked from this process, which imported the libraries but
    never ran a sender: every run starts from the same state without paying for an interpreter
    and its imports (a second or more per run on a busy 2-core machine)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(spec, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise TimeoutError(f"no result after {timeout:.0f} s")
        status, payload = receiver.recv()
        child.join(10)  # it has sent its result and is closing its connections
    except EOFError:
        status, payload = "error", "the child exited without a result"
    finally:
        # A timeout or an interruption (Ctrl-C, SIGTERM) leaves nothing running behind.
        if child.is_alive():
            child.kill()
            child.join()
        receiver.close()
    if status != "ok":
        raise RuntimeError(f"{payload} (exit code {child.exitcode})")
    measurement: dict[str, Any] = payload
    return measurement


def _preload_libraries() -> None:
    """Import what the senders use, once, before the first fork."""
    for module in ("anyio", "trio", "aiosmtplib", "pooledmail_anyio", "pooledmail_core"):
        with contextlib.suppress(ImportError):
            __import__(module)


def run_smtp_source(
    row: Row, concurrency: int, message_file: Path, timeout: float
) -> dict[str, Any]:
    """smtp-source as a child process: its CPU time is its own rusage (wait4), its memory the
    peak RSS of its process (VmHWM)."""
    binary = shutil.which("smtp-source", path="/usr/sbin:/usr/bin:/sbin") or "smtp-source"
    command = [binary, "-4", "-s", str(concurrency), "-m", str(row.messages)]
    command += ["-F", str(message_file), "-f", SENDER, "-t", RECIPIENTS[0]]
    command += ["-M", "client.bench.test"]
    if row.contender.id == "smtp-source-d":
        command.append("-d")
    command.append(f"{row.target.host}:{row.target.port}")
    peak_kib = 0

    def sample_peak(pid: int) -> None:
        # ru_maxrss of a child is useless here: Linux keeps the high-water mark of the memory
        # it had before exec, a copy of this Python process. VmHWM belongs to the new image.
        nonlocal peak_kib
        while True:
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peak_kib = max(peak_kib, int(line.split()[1]))
            except (OSError, ValueError):
                return
            time.sleep(0.02)

    with tempfile.TemporaryFile() as errors:
        began = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        sampler = threading.Thread(target=sample_peak, args=(process.pid,), daemon=True)
        sampler.start()
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
        watchdog.cancel()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"exit {process.returncode}: {errors.read().decode()[-1500:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "messages": row.messages,
        "warmup_messages": 0,
        "client_connections": None,
        # A whole process's peak, not a growth: see docs/benchmarks.md.
        "peak_rss_growth_kib": peak_kib,
        "memory_method": "VmHWM of the whole smtp-source process, sampled every 20 ms",
        "message_bytes": len(RAW_MESSAGE),
    }


@dataclass(frozen=True)
class RunFigures:
    rate: float  # messages the server accepted, a second
    cpu_us_per_message: float  # over every timed message, accepted or refused
    stored: int  # what the server should hold afterwards: warm-up and timed, less the refused


def run_figures(result: dict[str, Any]) -> RunFigures:
    """A sender's figures from its measurement. A refused message (only the bare CHUNKING loop
    counts them instead of raising) is not mail sent: it counts in no rate, and the server did
    not store it."""
    accepted = result["messages"] - result.get("failed_messages", 0)
    return RunFigures(
        rate=accepted / result["wall"],
        cpu_us_per_message=result["cpu"] / result["messages"] * 1e6,
        stored=accepted + result["warmup_messages"],
    )


def run_row(row: Row, concurrency: int, message_file: Path) -> dict[str, Any]:
    target = row.target
    concurrency = row.concurrency or concurrency
    timeout = 120 + row.messages * 0.1
    target.record.before_run()
    before = target.record.counts()
    load = os.getloadavg()[0]
    if row.contender.id.startswith("smtp-source"):
        result = run_smtp_source(row, concurrency, message_file, timeout)
    else:
        spec = SenderSpec(
            sender=row.contender.id,
            host=target.host,
            port=target.port,
            messages=row.messages,
            concurrency=concurrency,
            warmup=row.warmup,
            tls=target.tls,
            cafile=target.cafile,
            username=target.username,
            password=target.password,
        )
        result = run_in_child(spec, timeout)
    sessions, messages = settle(target.record, before, result["client_connections"])
    result.update(target.record.after_run())
    figures = run_figures(result)
    result.update(
        rate=figures.rate,
        cpu_us_per_message=figures.cpu_us_per_message,
        server_sessions=sessions,
        server_messages=messages,
        server_count_matches=messages == figures.stored,
        load_average_1min=load,
    )
    return result


# -- rounds ----------------------------------------------------------------------------------------


def run_section(
    title: str, rows: list[Row], rounds: int, concurrency: int, message_file: Path
) -> list[RowResult]:
    results = {row.key: RowResult(row) for row in rows}
    for round_index in range(rounds):
        shift = round_index % len(rows)
        order = rows[shift:] + rows[:shift]
        for position, row in enumerate(order):
            began = time.monotonic()
            try:
                run = run_row(row, concurrency, message_file)
            except Exception as error:
                run = {"error": f"{type(error).__name__}: {error}"}
                note = f"FAILED {run['error'][:300]}"
            else:
                note = (
                    f"{run['rate']:9,.0f} msg/s  {run['cpu_us_per_message']:6.0f} us cpu/msg  "
                    f"{run['server_sessions']} connections"
                )
            run.update(round=round_index + 1, position=position + 1)
            results[row.key].runs.append(run)
            took = time.monotonic() - began
            print(
                f"  [{title} {round_index + 1}/{rounds}] {row.key:<50} {note} ({took:.1f} s)",
                file=sys.stderr,
            )
    return list(results.values())


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _good_runs(result: RowResult) -> dict[int, dict[str, Any]]:
    return {run["round"]: run for run in result.runs if "error" not in run}


def paired_median(
    numerator: RowResult,
    denominator: RowResult,
    transform: Callable[[float], float] = float,
    figure: str = "rate",
) -> tuple[float | None, list[float]]:
    """The median over rounds of numerator / transform(denominator), same round only."""
    top, bottom = _good_runs(numerator), _good_runs(denominator)
    ratios = [
        top[r][figure] / transform(bottom[r][figure]) for r in sorted(top.keys() & bottom.keys())
    ]
    return _median(ratios), ratios


def summarize_row(result: RowResult, baseline: RowResult | None) -> dict[str, Any]:
    runs = list(_good_runs(result).values())
    ratio, per_round = (
        paired_median(result, baseline)
        if baseline is not None and baseline is not result
        else (1.0 if baseline is result else None, [])
    )
    return {
        "rate": _median([run["rate"] for run in runs]),
        "ratio_to_aiosmtplib_reused": ratio,
        "ratio_per_round": per_round,
        "cpu_us_per_message": _median([run["cpu_us_per_message"] for run in runs]),
        "peak_rss_kib": _median([run["peak_rss_growth_kib"] for run in runs]),
        "server_sessions": _median([run["server_sessions"] for run in runs]),
        "server_count_matches": all(run["server_count_matches"] for run in runs),
        "failed_messages": sum(run.get("failed_messages", 0) for run in runs),
        "failed_rounds": [run["round"] for run in result.runs if "error" in run],
    }


@dataclass
class Comparison:
    label: str
    value: float | None
    per_round: list[float]
    target: float | None = None
    unit: str = "x"
    detail: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.value >= self.target

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def throughput_comparisons(by_id: dict[str, RowResult]) -> list[Comparison]:
    wanted = [
        ("pooledmail-asyncio-send_raw", BASELINE, 3.5),
        ("pooledmail-trio-send_raw", BASELINE, 4.0),
        ("pooledmail-asyncio-send_raw", "bare-asyncio", 0.95),
        ("pooledmail-trio-send_raw", "bare-anyio-trio", 0.85),
        ("pooledmail-asyncio-send", "pooledmail-asyncio-as_bytes", 1.0),
        ("pooledmail-trio-send", "pooledmail-trio-as_bytes", 1.0),
        ("pooledmail-asyncio-send", "pooledmail-asyncio-send_raw", None),
        ("pooledmail-trio-send", "pooledmail-trio-send_raw", None),
        ("pooledmail-asyncio-send_raw", "smtp-source-d", None),
        ("pooledmail-trio-send_raw", "smtp-source-d", None),
    ]
    comparisons = []
    for top, bottom, target in wanted:
        if top in by_id and bottom in by_id:
            value, per_round = paired_median(by_id[top], by_id[bottom])
            label = f"{CONTENDERS[top].label} / {CONTENDERS[bottom].label}"
            comparisons.append(Comparison(label, value, per_round, target))
    # CPU per message, the steadier figure on a busy machine: what the pool costs over the floor.
    for top, bottom in [
        ("pooledmail-asyncio-send_raw", "bare-asyncio"),
        ("pooledmail-trio-send_raw", "bare-anyio-trio"),
        ("pooledmail-asyncio-send_raw", BASELINE),
        ("pooledmail-trio-send_raw", BASELINE),
    ]:
        if top in by_id and bottom in by_id:
            value, per_round = paired_median(by_id[top], by_id[bottom], figure="cpu_us_per_message")
            label = f"CPU per message: {CONTENDERS[top].label} / {CONTENDERS[bottom].label}"
            comparisons.append(Comparison(label, value, per_round))
    return comparisons


def latency_comparisons(
    results: list[RowResult], concurrency: int, delay: float, measured_ms: dict[str, float]
) -> list[Comparison]:
    """Through the delay, the pool against the lower of its round-trip bound and its own rate
    without the delay, same server, same round; and against aiosmtplib connecting per message.
    The target (0.85) is the issue's, set for a server with CHUNKING (one round trip a message).

    The detail adds a ceiling for a pool that has one message in flight per connection: each
    message costs its connection the round trips it needs plus what a message costs one
    connection alone without the delay (the server's time and the client's, uncontended: the
    "direct, 1 connection" row), so the pool cannot exceed
    concurrency / (round trips x measured round trip + 1 / that row's rate).

    Where the bare CHUNKING loops ran through the same delay, each one's share of the same bound
    follows (what any client gets here with one and with two transactions in flight per
    connection), then the pool as a share of the loop with one in flight: the part of the gap
    that is the pool's own."""
    comparisons = []
    by_key = {result.row.key: result for result in results}
    for result in results:
        row = result.row
        if not row.target.through_proxy or row.contender.id not in LATENCY_DIRECT:
            continue
        trips = row.target.round_trips_per_message
        bound = concurrency / (2 * delay * trips)
        direct = by_key.get(f"{row.target.record.name} direct / {row.contender.id}")
        if direct is not None:
            capped = functools.partial(min, bound)
            value, per_round = paired_median(result, direct, capped)
            direct_rate = _median([run["rate"] for run in _good_runs(direct).values()])
            delayed_rate = _median([run["rate"] for run in _good_runs(result).values()])
            detail = ""
            if direct_rate is not None and delayed_rate is not None:
                reference = min(bound, direct_rate)
                detail = (
                    f"medians: {delayed_rate:,.0f} msg/s through the delay; min({bound:,.0f}, "
                    f"{direct_rate:,.0f}) = {reference:,.0f}, 85 % of it {0.85 * reference:,.0f}"
                )
                name = row.target.record.name
                alone = by_key.get(f"{name} direct, 1 connection / {row.contender.id}")
                alone_rate = (
                    None
                    if alone is None
                    else _median([run["rate"] for run in _good_runs(alone).values()])
                )
                round_trip_ms = measured_ms.get(name)
                if round_trip_ms is not None and alone_rate is not None:
                    per_message_ms = trips * round_trip_ms + 1000 / alone_rate
                    detail += (
                        f"; one message in flight per connection: at most "
                        f"{concurrency / per_message_ms * 1000:,.0f} msg/s ({trips} x "
                        f"{round_trip_ms:.1f} ms measured round trip + {1000 / alone_rate:.1f} ms "
                        "a message on one connection alone)"
                    )
            per = "one round trip" if trips == 1 else f"{trips} round trips"
            comparisons.append(
                Comparison(
                    f"{row.target.label}: {row.contender.label} / min({bound:,.0f} "
                    f"({per} a message), the same pool without the delay)",
                    value,
                    per_round,
                    0.85 if trips == 1 else None,
                    unit="of the bound",
                    detail=detail,
                )
            )
            comparisons += _floor_comparisons(result, direct, by_key, bound)
        per_message = by_key.get(f"{row.target.label} / aiosmtplib-per-message")
        if per_message is not None:
            value, per_round = paired_median(result, per_message)
            comparisons.append(
                Comparison(
                    f"{row.target.label}: {row.contender.label} / "
                    f"{CONTENDERS['aiosmtplib-per-message'].label}",
                    value,
                    per_round,
                )
            )
    return comparisons


def _floor_comparisons(
    pool: RowResult, direct: RowResult, by_key: dict[str, RowResult], bound: float
) -> list[Comparison]:
    """The bare CHUNKING loops through the delay against the pool's bound (the lower of `bound`
    and the pool's own rate without the delay, same round), and the pool against the first."""
    comparisons = []
    delayed = pool.row.target.label
    floors = [
        (floor_id, by_key[f"{delayed} / {floor_id}"])
        for floor_id in LATENCY_FLOOR
        if f"{delayed} / {floor_id}" in by_key
    ]
    for floor_id, floor in floors:
        value, per_round = paired_median(floor, direct, functools.partial(min, bound))
        rate = _median([run["rate"] for run in _good_runs(floor).values()])
        comparisons.append(
            Comparison(
                f"{delayed}: {CONTENDERS[floor_id].label} / min({bound:,.0f}, "
                f"{pool.row.contender.label} without the delay)",
                value,
                per_round,
                unit="of the bound",
                detail="" if rate is None else f"median {rate:,.0f} msg/s through the delay",
            )
        )
    if floors and floors[0][0] == LATENCY_FLOOR[0]:
        floor_id, floor = floors[0]
        value, per_round = paired_median(pool, floor)
        comparisons.append(
            Comparison(
                f"{delayed}: {pool.row.contender.label} / {CONTENDERS[floor_id].label}",
                value,
                per_round,
            )
        )
    return comparisons


# -- output ----------------------------------------------------------------------------------------


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(results: list[RowResult], summaries: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| sender | server | messages | msg/s | x aiosmtplib reused | connections | "
        "CPU us/msg | peak RSS growth KiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for result in results:
        row, summary = result.row, summaries[result.row.key]
        label = row.contender.label
        if row.contender.id.startswith("smtp-source"):
            label += " [1]"
        if not summary["server_count_matches"]:
            label += " [2]"
            notes.append("[2]")
        if summary["failed_rounds"]:
            label += f" (failed in rounds {summary['failed_rounds']})"
        if summary["failed_messages"]:
            label += f" ({summary['failed_messages']:,} messages refused over all rounds)"
        connections = summary["server_sessions"]
        lines.append(
            f"| {label} | {row.target.label} | {row.messages:,} | "
            f"{_number(summary['rate'], ',.0f')} | "
            f"{_number(summary['ratio_to_aiosmtplib_reused'], '.2f')} | "
            f"{_number(connections, ',.0f')} | "
            f"{_number(summary['cpu_us_per_message'], ',.0f')} | "
            f"{_number(summary['peak_rss_kib'], ',.0f')} |"
        )
    if any(result.row.contender.id.startswith("smtp-source") for result in results):
        lines.append(
            "\n[1] a child process timed whole (start, connections, messages); its CPU is its "
            "own rusage (wait4) and its memory the whole process's peak RSS (VmHWM), not a "
            "growth."
        )
    if notes:
        lines.append(
            "[2] the server counted a different number of messages than the sender sent "
            "(see the JSON)."
        )
    return "\n".join(lines)


def comparison_lines(comparisons: list[Comparison]) -> str:
    lines = []
    for comparison in comparisons:
        target = ""
        if comparison.target is not None:
            verdict = {True: "met", False: "NOT met", None: "-"}[comparison.met]
            target = f" (target >= {comparison.target:g}: {verdict})"
        value = _number(comparison.value, ".2f")
        detail = f"; {comparison.detail}" if comparison.detail else ""
        lines.append(f"- {comparison.label}: **{value}** {comparison.unit}{target}{detail}")
    return "\n".join(lines)


# -- servers -------------------------------------------------------------------------------------


def _import_servers() -> Any:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import tests.servers

    return tests.servers


@contextlib.contextmanager
def delay_proxy(host: str, port: int, delay: float) -> Iterator[tuple[str, int]]:
    process = subprocess.Popen(
        [
            sys.executable,
            str(BENCH / "delay_proxy.py"),
            *("--target", f"{host}:{port}", "--delay", str(delay)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        listening = process.stdout.readline().strip()
        if not listening:
            raise RuntimeError("the delay proxy did not start")
        proxy_host, _, proxy_port = listening.rpartition(":")
        yield proxy_host, int(proxy_port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def measure_round_trip(host: str, port: int, count: int = 30) -> float:
    """Median seconds of a NOOP round trip on one SMTP connection (before EHLO; both servers
    answer it)."""
    times = []
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        received = b""
        while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", received):
            received += connection.recv(4096)
        for _ in range(count):
            began = time.perf_counter()
            connection.sendall(b"NOOP\r\n")
            received = b""
            while not received.endswith(b"\r\n"):
                received += connection.recv(4096)
            times.append(time.perf_counter() - began)
        connection.sendall(b"QUIT\r\n")
        with contextlib.suppress(OSError):
            connection.recv(4096)
    return statistics.median(times)


# -- main ----------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("pooledmail", "anyio", "trio", "aiosmtplib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        postconf = subprocess.run(
            ["/usr/sbin/postconf", "-d", "mail_version"], capture_output=True, text=True, check=True
        )
        versions["postfix"] = postconf.stdout.split("=")[-1].strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
        versions["commit"] = commit.stdout.strip()
    return versions


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages, one round")
    parser.add_argument("--messages", type=int, help="messages per throughput run [5000]")
    parser.add_argument("--rounds", type=int, help="throughput rounds [5]")
    parser.add_argument("--warmup", type=int, default=20, help="messages per connection, untimed")
    parser.add_argument("--latency-messages", type=int, help="messages per latency run [1600]")
    parser.add_argument("--latency-rounds", type=int, help="latency rounds [3]")
    parser.add_argument("--latency-warmup", type=int, default=5)
    parser.add_argument(
        "--latency-per-message-share",
        type=int,
        default=8,
        help="connect-per-message senders send latency-messages / this through the delay",
    )
    parser.add_argument("--delay", type=float, default=0.005, help="seconds each way")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help="comma-separated ids to run (both sections)",
    )
    parser.add_argument(
        "--latency-servers", default="sink,postfix", help="comma-separated: sink, postfix"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--json", type=Path, default=BENCH / "results" / "latest.json", help="where to write"
    )
    args = parser.parse_args(argv)
    quick = {"messages": 1000, "rounds": 1, "latency_messages": 200, "latency_rounds": 1}
    full = {"messages": 5000, "rounds": 5, "latency_messages": 1600, "latency_rounds": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = set(args.contenders.split(",")) - set(CONTENDERS)
    if unknown:
        parser.error(f"--contenders: unknown {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    return args


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # As for Ctrl-C: unwind, so that the servers and proxies this run started are stopped.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    servers = _import_servers()
    chosen = [c for c in args.contenders.split(",") if c]
    missing_modules = []
    needs = {"aiosmtplib": ("aiosmtplib-",), "trio": ("pooledmail-trio", "bare-anyio")}
    for module, ids in needs.items():
        try:
            __import__(module)
        except ImportError:
            missing_modules.append(module)
            chosen = [c for c in chosen if not c.startswith(ids)]
    _preload_libraries()
    # Before any sender is forked: each inherits it.
    allocator = steady_allocator()
    print(allocator, flush=True)
    skipped = [f"{name} is not installed: pip install -e '.[bench]'" for name in missing_modules]
    started = datetime.datetime.now().astimezone()
    report: dict[str, Any] = {
        "command": [sys.executable, *sys.argv] if argv is None else ["harness.py", *argv],
        "started": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "allocator": allocator,
        "message_bytes": len(RAW_MESSAGE),
        "load_average_start": os.getloadavg(),
        "sections": [],
        "skipped": skipped,
    }
    output: list[str] = []
    concurrency = args.concurrency

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pooledmail-bench-")))
        message_file = work / "message.txt"
        # smtp-source appends CRLF to each line of its -F file.
        message_file.write_bytes(RAW_MESSAGE.replace(b"\r\n", b"\n"))
        try:
            sink = stack.enter_context(servers.SmtpSink(["-c"]))
        except servers.MissingBinary as missing:
            print(f"cannot run: {missing}", file=sys.stderr)
            return 2
        sink_record = SinkRecord(sink)
        sink_target = Target("smtp-sink", LOOPBACK, sink.port, sink_record)
        if not shutil.which("smtp-source", path="/usr/sbin:/usr/bin:/sbin"):
            skipped.append("smtp-source not found (Debian package postfix)")
            chosen = [c for c in chosen if not c.startswith("smtp-source")]

        if not args.skip_throughput:
            rows = [
                Row(c, CONTENDERS[c], sink_target, args.messages, args.warmup)
                for c in THROUGHPUT_CONTENDERS
                if c in chosen
            ]
            title = (
                f"Throughput: {args.messages:,} messages of {len(RAW_MESSAGE):,} bytes, one "
                f"recipient, {concurrency} connections, smtp-sink on loopback; median of "
                f"{args.rounds} interleaved rounds"
            )
            print(f"{title}", file=sys.stderr)
            results = run_section("throughput", rows, args.rounds, concurrency, message_file)
            by_id = {result.row.contender.id: result for result in results}
            comparisons = throughput_comparisons(by_id)
            output += [f"### {title}", "", *_section_output(results, by_id.get(BASELINE))]
            output += ["", comparison_lines(comparisons), ""]
            report["sections"].append(_section_json("throughput", title, results, comparisons))

        if not args.skip_latency:
            latency_output, section = run_latency(
                args, stack, servers, sink_record, sink_target, chosen, work, message_file
            )
            output += latency_output
            report["sections"].append(section)

    report["load_average_end"] = os.getloadavg()
    report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    header = [
        f"pooledmail benchmark, {report['started']}, {os.cpu_count()} CPUs, load average "
        f"{report['load_average_start'][0]:.1f} at the start and "
        f"{report['load_average_end'][0]:.1f} at the end; versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    header += [f"Skipped: {reason}" for reason in skipped]
    print("\n".join(header + output))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


def _section_output(results: list[RowResult], baseline: RowResult | None) -> list[str]:
    summaries = {result.row.key: summarize_row(result, baseline) for result in results}
    return [markdown_table(results, summaries)]


def _section_json(
    name: str, title: str, results: list[RowResult], comparisons: list[Comparison]
) -> dict[str, Any]:
    baselines = {
        result.row.target.label: result for result in results if result.row.contender.id == BASELINE
    }
    return {
        "name": name,
        "title": title,
        "rows": [
            {
                "key": result.row.key,
                "contender": result.row.contender.id,
                "label": result.row.contender.label,
                "server": result.row.target.label,
                "messages": result.row.messages,
                "warmup_per_connection": result.row.warmup,
                "median": summarize_row(result, baselines.get(result.row.target.label)),
                "runs": result.runs,
            }
            for result in results
        ],
        "comparisons": [comparison.as_json() for comparison in comparisons],
    }


def latency_rows(
    direct: Target,
    delayed: Target,
    chosen: Sequence[str],
    messages: int,
    warmup: int,
    *,
    per_message_share: int,
    concurrency: int,
) -> list[Row]:
    """The latency section's rows for one server: the chosen senders through the delay (the
    bare CHUNKING loops only where the server offers CHUNKING), then the pools without it."""
    name = direct.record.name
    rows: list[Row] = []
    through_delay = LATENCY_CONTENDERS + (LATENCY_FLOOR if delayed.chunking else [])
    for contender_id in through_delay:
        if contender_id in chosen:
            contender = CONTENDERS[contender_id]
            count = messages
            if contender.per_message:
                count = max(concurrency, messages // per_message_share)
            key = f"{delayed.label} / {contender_id}"
            rows.append(Row(key, contender, delayed, count, warmup))
    for contender_id in LATENCY_DIRECT:
        if contender_id in chosen:
            contender = CONTENDERS[contender_id]
            direct_row = replace(direct, label=f"{name} direct")
            rows.append(
                Row(f"{name} direct / {contender_id}", contender, direct_row, messages, warmup)
            )
            # What one message costs one connection alone: the other half of the ceiling
            # for one message in flight per connection (see latency_comparisons).
            alone = replace(direct, label=f"{name} direct, 1 connection")
            count = max(1, messages // per_message_share)
            key = f"{name} direct, 1 connection / {contender_id}"
            rows.append(Row(key, contender, alone, count, warmup, concurrency=1))
    return rows


def run_latency(
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    servers: Any,
    sink_record: SinkRecord,
    sink_target: Target,
    chosen: list[str],
    work: Path,
    message_file: Path,
) -> tuple[list[str], dict[str, Any]]:
    concurrency = args.concurrency
    round_trip_ms = 2 * args.delay * 1000
    bound = concurrency / (2 * args.delay)
    wanted_servers = set(args.latency_servers.split(","))
    skipped: list[str] = []
    directs: list[Target] = []
    if "sink" in wanted_servers:
        directs.append(replace(sink_target, label="smtp-sink direct"))
    if "postfix" in wanted_servers:
        postfix_target, reason = _start_postfix(stack, servers, work)
        if postfix_target is None:
            skipped.append(f"Postfix: {reason}")
        else:
            directs.append(postfix_target)
    rows: list[Row] = []
    round_trips: dict[str, dict[str, float]] = {}
    for direct in directs:
        name = direct.record.name
        proxy_host, proxy_port = stack.enter_context(
            delay_proxy(direct.host, direct.port, args.delay)
        )
        delayed = replace(
            direct,
            label=f"{name} + {round_trip_ms:g} ms",
            host=proxy_host,
            port=proxy_port,
            through_proxy=True,
        )
        round_trips[name] = {
            "direct_ms": measure_round_trip(direct.host, direct.port) * 1000,
            "through_proxy_ms": measure_round_trip(proxy_host, proxy_port) * 1000,
        }
        rows += latency_rows(
            direct,
            delayed,
            chosen,
            args.latency_messages,
            args.latency_warmup,
            per_message_share=args.latency_per_message_share,
            concurrency=concurrency,
        )
    title = (
        f"Latency-bound: {round_trip_ms:g} ms round trip added by a delay proxy, {concurrency} "
        f"connections, 1 KiB messages; median of {args.latency_rounds} interleaved rounds; "
        f"one message per round trip per connection is {bound:.0f} msg/s"
    )
    if "postfix" in round_trips:
        title += "; Postfix with STARTTLS, AUTH PLAIN and CHUNKING"
    print(title, file=sys.stderr)
    results = run_section("latency", rows, args.latency_rounds, concurrency, message_file)
    measured_ms = {name: trip["through_proxy_ms"] for name, trip in round_trips.items()}
    comparisons = latency_comparisons(results, concurrency, args.delay, measured_ms)
    lines = [f"### {title}", ""]
    lines += [f"Skipped: {reason}" for reason in skipped]
    for name, trip in round_trips.items():
        lines.append(
            f"- measured NOOP round trip to {name}: {trip['direct_ms']:.2f} ms direct, "
            f"{trip['through_proxy_ms']:.2f} ms through the proxy (one message per measured "
            f"round trip per connection: {concurrency / trip['through_proxy_ms'] * 1000:,.0f} "
            "msg/s)"
        )
    lines.append("")
    baselines = {r.row.target.label: r for r in results if r.row.contender.id == BASELINE}
    summaries = {
        result.row.key: summarize_row(result, baselines.get(result.row.target.label))
        for result in results
    }
    lines += [markdown_table(results, summaries), "", comparison_lines(comparisons), ""]
    section = _section_json("latency", title, results, comparisons)
    section.update(round_trips=round_trips, bound_messages_per_second=bound, skipped=skipped)
    return lines, section


def _start_postfix(
    stack: contextlib.ExitStack, servers: Any, work: Path
) -> tuple[Target | None, str]:
    if os.geteuid() != 0:
        return None, "a private Postfix instance must be started as root"
    try:
        import trustme
    except ImportError:
        return None, "trustme is not installed: pip install -e '.[bench]'"
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cafile = work / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    try:
        postfix = servers.PostfixServer(
            certificate_chain_pem=b"".join(pem.bytes() for pem in leaf.cert_chain_pems),
            private_key_pem=leaf.private_key_pem.bytes(),
            require_tls=True,
            require_auth=True,
        )
    except servers.MissingBinary as missing:
        return None, str(missing)
    stack.enter_context(postfix)
    target = Target(
        "postfix direct",
        postfix.host,
        postfix.port,
        PostfixRecord(postfix),
        tls="starttls",
        cafile=str(cafile),
        username=postfix.username,
        password=postfix.password,
        chunking=True,
    )
    return target, ""


if __name__ == "__main__":
    sys.exit(main())
