"""bench/harness.py still runs, end to end, in a tiny mode: the pool and the bare loops against
smtp-sink on loopback, directly and through the delay proxy.

Nothing here judges speed (that is bench/'s job, never a test's): the test holds that the one
documented benchmark command works, writes its JSON, and that the server's own count of messages
and connections agrees with what each sender says it did.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

# bench/ is not a package: its modules import each other as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from harness import parse_arguments

from tests.servers._process import MissingBinary, find_binary
from tests.servers.fixtures import unavailable

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
