"""bench/harness.py still runs, end to end, in a tiny mode: the pool and the bare loops against
smtp-sink on loopback, directly and through the delay proxy.

Nothing here judges speed (that is bench/'s job, never a test's): the test holds that the one
documented benchmark command works, writes its JSON, and that the server's own count of messages
and connections agrees with what each sender says it did.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# bench/ is not a package: its modules import each other as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import harness_senders
from harness import (
    CONTENDERS,
    LATENCY_FLOOR,
    THROUGHPUT_CONTENDERS,
    Row,
    RowResult,
    Target,
    latency_comparisons,
    latency_rows,
    parse_arguments,
    run_figures,
)
from harness_senders import (
    CHUNKED_TRANSACTION,
    RAW_MESSAGE,
    BareChunkingSession,
    SenderSpec,
    SetupRefused,
    run_sender,
)

from tests.servers._process import MissingBinary, find_binary
from tests.servers.fixtures import postfix_instance, unavailable
from tests.servers.postfix import PostfixServer

REPO = Path(__file__).resolve().parents[2]

SENDERS = [
    "pooledmail-asyncio-send_raw",
    "pooledmail-trio-send_raw",
    "bare-asyncio",
    "bare-anyio-trio",
]


def test_the_harness_runs_in_a_tiny_mode_and_the_server_counts_what_the_senders_sent(
    tmp_path: Path,
) -> None:
    try:
        find_binary("smtp-sink", "postfix")
    except MissingBinary as missing:
        unavailable(str(missing))
    report_path = tmp_path / "report.json"
    environment = dict(os.environ)
    # The harness must measure this checkout's pooledmail, whatever is installed.
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), *filter(None, [environment.get("PYTHONPATH")])]
    )
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "harness.py"),
            *("--messages", "50", "--rounds", "1", "--warmup", "2"),
            *("--latency-messages", "16", "--latency-rounds", "1", "--latency-warmup", "1"),
            *("--latency-servers", "sink", "--contenders", ",".join(SENDERS)),
            *("--json", str(report_path)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=environment,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(report_path.read_text())

    throughput, latency = report["sections"]
    assert (throughput["name"], latency["name"]) == ("throughput", "latency")
    assert [row["contender"] for row in throughput["rows"]] == SENDERS
    assert {row["key"] for row in latency["rows"]} == {
        "smtp-sink + 10 ms / pooledmail-asyncio-send_raw",
        "smtp-sink + 10 ms / pooledmail-trio-send_raw",
        "smtp-sink direct / pooledmail-asyncio-send_raw",
        "smtp-sink direct / pooledmail-trio-send_raw",
        "smtp-sink direct, 1 connection / pooledmail-asyncio-send_raw",
        "smtp-sink direct, 1 connection / pooledmail-trio-send_raw",
    }
    for section in (throughput, latency):
        for row in section["rows"]:
            (run,) = row["runs"]
            assert "error" not in run, (row["key"], run)
            assert run["messages"] == row["messages"]
            # smtp-sink's own counters: every message the sender sent, on the connections the
            # sender says it opened (for the pool, its statistics' created_total).
            assert run["server_messages"] == run["messages"] + run["warmup_messages"]
            assert run["server_sessions"] == run["client_connections"]
            assert 1 <= run["server_sessions"] <= 8
            assert run["rate"] > 0
            assert run["cpu_us_per_message"] > 0
            assert run["peak_rss_growth_kib"] >= 0
    # The ratios of the targets are computed where both sides ran.
    labels = [comparison["label"] for comparison in throughput["comparisons"]]
    assert any("bare pipelined loop, anyio on trio" in label for label in labels)
    assert all(comparison["value"] > 0 for comparison in throughput["comparisons"])
    assert latency["round_trips"]["smtp-sink"]["through_proxy_ms"] > 0
    assert "| pooledmail, trio, send_raw | smtp-sink |" in completed.stdout


def test_the_documented_benchmark_commands_are_ones_the_harness_accepts() -> None:
    for document in (REPO / "README.md", REPO / "docs" / "benchmarks.md"):
        commands = re.findall(r"python bench/harness\.py([^\n`#&]*)", document.read_text())
        assert commands, document
        for arguments in commands:
            if "--help" not in arguments:
                parse_arguments(shlex.split(arguments))


# -- the bare CHUNKING loop: the latency section's floor ------------------------------------------


class _ScriptedServer:
    """What a BareChunkingSession writes, and the replies it reads, one chunk per read."""

    def __init__(self, replies: list[bytes]) -> None:
        self.written: list[bytes] = []
        self._replies = replies

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    async def read(self) -> bytes:
        return self._replies.pop(0)


def test_the_bare_chunking_loop_writes_in_flight_transactions_at_once_and_counts_refusals() -> None:
    ok = b"250 2.0.0 Ok\r\n"
    server = _ScriptedServer(
        [
            # First write, two transactions: the second one's RCPT is refused, and the
            # replies arrive split in the middle of a line.
            ok + ok + ok + ok + b"550 5.1.1 no",
            b" such user\r\n554 5.5.1 no valid recipients\r\n",
            # Second write, the one transaction left.
            ok + ok + ok,
        ]
    )
    session = BareChunkingSession(server.write, server.read, in_flight=2)
    asyncio.run(session.transact_chunked(3))
    assert server.written == [CHUNKED_TRANSACTION * 2, CHUNKED_TRANSACTION]
    assert session.failed == 1
    assert CHUNKED_TRANSACTION.endswith(b" LAST\r\n" + RAW_MESSAGE)
    assert f"BDAT {len(RAW_MESSAGE)} LAST".encode() in CHUNKED_TRANSACTION


def test_the_bare_loops_take_a_bare_reply_code_and_stop_at_a_closed_connection() -> None:
    # Found by review: "250" with no text (RFC 5321 §4.2) was never taken as a final reply, and a
    # closed connection made the loop read empty bytes forever.
    server = _ScriptedServer([b"250\r\n250 Ok\r\n250\r\n"])
    session = BareChunkingSession(server.write, server.read, in_flight=1)
    asyncio.run(session.transact_chunked(1))
    assert session.failed == 0
    closing = _ScriptedServer([b"250 Ok\r\n", b""])
    session = BareChunkingSession(closing.write, closing.read, in_flight=1)
    with pytest.raises(ConnectionError):
        asyncio.run(session.transact_chunked(1))


@pytest.mark.parametrize("missing", ["CHUNKING", "PIPELINING"])
def test_the_bare_chunking_loop_needs_pipelining_as_well_as_chunking(missing: str) -> None:
    # Found by review: every write pipelines MAIL, RCPT and BDAT, but only CHUNKING was checked.
    offered = [e for e in ["SIZE 10240000", "PIPELINING", "CHUNKING", "8BITMIME"] if e != missing]
    ehlo = "".join(f"250-{line}\r\n" for line in ["sink.test", *offered[:-1]])
    server = _ScriptedServer([b"220 sink.test\r\n", f"{ehlo}250 {offered[-1]}\r\n".encode()])
    session = BareChunkingSession(server.write, server.read, in_flight=1)
    with pytest.raises(SetupRefused, match=missing):
        asyncio.run(session.open(None, None, None))


def test_a_refused_message_counts_in_no_rate_and_is_not_expected_at_the_server() -> None:
    # Found by review: the refused messages were taken out of the server's expected count but
    # still counted in the rate, which would have flattered a loop with refusals.
    figures = run_figures(
        {"messages": 100, "warmup_messages": 16, "failed_messages": 4, "wall": 2.0, "cpu": 0.5}
    )
    assert figures.rate == 48.0
    assert figures.stored == 112
    assert figures.cpu_us_per_message == 5000.0
    assert run_figures({"messages": 100, "warmup_messages": 16, "wall": 2.0, "cpu": 0.5}).rate == 50


def test_a_bare_chunking_sender_runs_the_in_flight_count_its_name_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The count belongs to the sender's id alone: no spec can run "-2" with one in flight.
    ran: list[tuple[str, int]] = []

    async def loop(spec: SenderSpec, in_flight: int) -> Any:
        ran.append((spec.sender, in_flight))

    monkeypatch.setattr(harness_senders, "_bare_asyncio_chunking", loop)
    for sender in LATENCY_FLOOR:
        spec = SenderSpec(
            sender=sender, host="127.0.0.1", port=9, messages=1, concurrency=1, warmup=0
        )
        run_sender(spec)
    assert ran == [("bare-asyncio-chunking-1", 1), ("bare-asyncio-chunking-2", 2)]


@pytest.fixture(scope="module")
def postfix_and_cafile(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PostfixServer, Path]]:
    """A private Postfix as the harness starts it (STARTTLS and AUTH required), and its CA."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cafile = tmp_path_factory.mktemp("bench-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    with postfix_instance(ca) as server:
        yield server, cafile


def _postfix_spec(
    postfix: PostfixServer, cafile: Path, *, in_flight: int, messages: int, concurrency: int
) -> SenderSpec:
    """The bare CHUNKING loop's spec against the private Postfix, as the harness makes it."""
    return SenderSpec(
        sender=f"bare-asyncio-chunking-{in_flight}",
        host=postfix.host,
        port=postfix.port,
        messages=messages,
        concurrency=concurrency,
        warmup=1,
        tls="starttls",
        cafile=str(cafile),
        username=postfix.username,
        password=postfix.password,
    )


@pytest.mark.parametrize("in_flight", [1, 2])
def test_the_bare_chunking_loop_logs_in_and_postfix_stores_every_message(
    postfix_and_cafile: tuple[PostfixServer, Path], in_flight: int
) -> None:
    postfix, cafile = postfix_and_cafile
    since = postfix.log_position()
    held_before = len(postfix.stored())
    # 7 messages, 4 and 3 a connection: an odd count leaves a write of one with 2 in flight.
    spec = _postfix_spec(postfix, cafile, in_flight=in_flight, messages=7, concurrency=2)
    measurement = run_sender(spec)
    assert measurement.failed_messages == 0
    assert (measurement.messages, measurement.warmup_messages) == (7, 2)
    sessions = postfix.wait_for_sessions(2, since=since)
    # Postfix's own record: TLS and AUTH once a connection, every message by BDAT, and each of
    # them in the hold queue.
    for session in sessions:
        assert session.succeeded.get("starttls") == 1
        assert session.succeeded.get("auth") == 1
        assert "data" not in session.attempted
    assert sum(session.succeeded.get("bdat", 0) for session in sessions) == 9
    assert sum(session.attempted.get("bdat", 0) for session in sessions) == 9
    assert len(postfix.stored()) - held_before == 9


def test_the_bare_chunking_loop_verifies_the_servers_certificate(
    postfix_and_cafile: tuple[PostfixServer, Path], tmp_path: Path
) -> None:
    # Found by review: nothing failed when the loop's TLS context skipped verification. Its rows
    # stand beside the pool's, which verify against the same CA: a CA that did not sign Postfix's
    # certificate must stop the loop at STARTTLS, before AUTH sends the password.
    trustme = pytest.importorskip("trustme")
    postfix, _ = postfix_and_cafile
    other_cafile = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_cafile))
    held_before = len(postfix.stored())
    spec = _postfix_spec(postfix, other_cafile, in_flight=1, messages=1, concurrency=1)
    with pytest.raises(ssl.SSLCertVerificationError):
        run_sender(spec)
    assert len(postfix.stored()) == held_before


# -- the latency section's rows and comparisons -----------------------------------------------


class _Record:
    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 25

    def counts(self) -> tuple[int, int]:
        return 0, 0

    def before_run(self) -> None:
        pass

    def after_run(self) -> dict[str, Any]:
        return {}


def _targets(name: str, *, chunking: bool) -> tuple[Target, Target]:
    direct = Target(f"{name} direct", "127.0.0.1", 25, _Record(name), chunking=chunking)
    delayed = Target(
        f"{name} + 10 ms", "127.0.0.1", 26, _Record(name), chunking=chunking, through_proxy=True
    )
    return direct, delayed


def test_the_bare_chunking_loops_run_only_through_the_delay_to_a_server_with_chunking() -> None:
    chosen = list(CONTENDERS)
    assert not set(LATENCY_FLOOR) & set(THROUGHPUT_CONTENDERS)
    options: dict[str, Any] = {"per_message_share": 8, "concurrency": 8}
    sink_rows = latency_rows(*_targets("smtp-sink", chunking=False), chosen, 1600, 5, **options)
    assert not {row.contender.id for row in sink_rows} & set(LATENCY_FLOOR)
    rows = latency_rows(*_targets("postfix", chunking=True), chosen, 1600, 5, **options)
    floors = [row for row in rows if row.contender.id in LATENCY_FLOOR]
    assert [row.key for row in floors] == [
        "postfix + 10 ms / bare-asyncio-chunking-1",
        "postfix + 10 ms / bare-asyncio-chunking-2",
    ]
    assert LATENCY_FLOOR == ["bare-asyncio-chunking-1", "bare-asyncio-chunking-2"]
    assert all(row.messages == 1600 and row.target.through_proxy for row in floors)
    without = latency_rows(
        *_targets("postfix", chunking=True), ["pooledmail-trio-send_raw"], 1600, 5, **options
    )
    assert not {row.contender.id for row in without} & set(LATENCY_FLOOR)


def _result(row: Row, rates: list[float]) -> RowResult:
    runs = [{"round": index + 1, "rate": rate} for index, rate in enumerate(rates)]
    return RowResult(row, runs)


def test_the_latency_comparisons_set_the_bare_loops_against_the_pools_bound_round_by_round() -> (
    None
):
    rows = latency_rows(
        *_targets("postfix", chunking=True),
        ["pooledmail-asyncio-send_raw", *LATENCY_FLOOR],
        100,
        1,
        per_message_share=8,
        concurrency=8,
    )
    by_key = {row.key: row for row in rows}
    rates = {
        # Without the delay, the pool is below the 800 of the round-trip bound in round 2 only.
        "postfix direct / pooledmail-asyncio-send_raw": [1000.0, 700.0, 900.0],
        "postfix + 10 ms / pooledmail-asyncio-send_raw": [400.0, 350.0, 480.0],
        "postfix + 10 ms / bare-asyncio-chunking-1": [500.0, 350.0, 600.0],
        "postfix + 10 ms / bare-asyncio-chunking-2": [960.0, 700.0, 880.0],
        "postfix direct, 1 connection / pooledmail-asyncio-send_raw": [500.0, 500.0, 500.0],
    }
    results = [_result(by_key[key], rates[key]) for key in by_key]
    comparisons = {
        comparison.label: comparison
        for comparison in latency_comparisons(results, 8, 0.005, {"postfix": 10.0})
    }
    pool = "pooledmail, asyncio, send_raw"
    floor_1, floor_2 = (CONTENDERS[floor_id].label for floor_id in LATENCY_FLOOR)
    bound = f"min(800, {pool} without the delay)"
    share_1 = comparisons[f"postfix + 10 ms: {floor_1} / {bound}"]
    assert share_1.per_round == [500 / 800, 350 / 700, 600 / 800]
    assert share_1.value == 500 / 800
    assert share_1.target is None
    share_2 = comparisons[f"postfix + 10 ms: {floor_2} / {bound}"]
    assert share_2.per_round == [960 / 800, 700 / 700, 880 / 800]
    pool_over_floor = comparisons[f"postfix + 10 ms: {pool} / {floor_1}"]
    assert pool_over_floor.per_round == [400 / 500, 350 / 350, 480 / 600]
    assert pool_over_floor.value == 0.8
