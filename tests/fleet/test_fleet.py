"""A fleet of processes, each with its own pool, sharing budgets through a real Redis.

Four worker processes (tests/fleet/worker.py), each with a pool of max_size=4, send through one
recording SMTP server on 127.0.0.1 (tests/fleet/recording_server.py), which keeps its own record of
the sessions open at once and of every message it stored. Every test runs its workers on asyncio
and on trio. Verdicts are judged against the server's record: a Message-ID a worker reports
accepted must be stored exactly once, one it reports failed must not be stored at all.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.polling import eventually
from tests.servers.redis import RedisServer

from .recording_server import RecordingServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKERS = 4

pytestmark = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's Redis, restarted empty if a test stopped it."""
    yield redis_server
    if not _running(redis_server):
        redis_server.start()


def _running(server: RedisServer) -> bool:
    return server._process is not None


def start_worker(spec: dict[str, Any]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fleet.worker", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(worker: subprocess.Popen[str], timeout: float = 40.0) -> dict[str, Any]:
    try:
        out, err = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        out, err = worker.communicate()
        pytest.fail(f"a worker did not finish in {timeout} s:\n{err[-3000:]}")
    assert worker.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (done,) = [event for event in events if event.get("done")]
    return done


def redis_command(redis: RedisServer, *words: str) -> int:
    """One command to the test's Redis whose reply is an integer (RESP, by hand)."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection((redis.host, redis.port), timeout=5) as connection:
        connection.sendall(request.encode())
        reply = connection.makefile("rb").readline()
    assert reply.startswith(b":"), reply
    return int(reply[1:])


def budget(name: str, redis: RedisServer, **options: Any) -> dict[str, Any]:
    return {"name": name, "redis_url": redis.url, **options}


def run_fleet(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    workers = [start_worker(spec) for spec in specs]
    return [finish(worker) for worker in workers]


def wait_until_every_worker_sent(server: RecordingServer, workers: int) -> None:
    """Until the server has stored a few messages of every worker (they start at their pace)."""

    def every_worker_sent() -> bool:
        per_worker = Counter(item.message_id.split("-")[0] for item in server.stored())
        return len(per_worker) == workers and min(per_worker.values()) >= 3

    if not eventually(every_worker_sent, within=30):
        pytest.fail("the workers did not start sending")


def per_worker(server: RecordingServer, start: float, end: float) -> Counter[str]:
    """Messages stored per worker with their MAIL in [start, end) (on the test's own clock)."""
    return Counter(
        item.message_id.split("-")[0] for item in server.stored() if start <= item.mail_at < end
    )


def check_exactly_once(results: list[dict[str, Any]], server: RecordingServer) -> Counter[str]:
    """Every accepted message stored once, every failed one not at all; returns the stored ids."""
    stored = Counter(item.message_id for item in server.stored())
    accepted = [message_id for result in results for message_id in result["accepted"]]
    failed = [message_id for result in results for message_id, _ in result["failed"]]
    assert all(count == 1 for count in stored.values()), "a message was stored twice"
    assert set(accepted) == set(stored), "accepted and stored differ"
    assert not set(failed) & set(stored), "a message reported failed was stored"
    return stored


def test_a_fleet_connection_cap_holds_across_processes(
    backend: str, redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    name = f"cap-{backend}-{request.node.name[-8:]}"
    with RecordingServer(final_reply_delay=0.03) as server:
        specs = [
            {
                "backend": backend,
                "smtp_port": server.port,
                # A lease outlives a process stalled by a loaded machine (the default TTL).
                "budget": budget(name, redis, max_connections=3, store_timeout=1.0),
                "tag": f"w{index}",
                "count": 12,
                "concurrency": 6,
            }
            for index in range(WORKERS)
        ]
        results = run_fleet(specs)
        stored = check_exactly_once(results, server)
        most = server.most_sessions
    # 4 pools of 4 would open 16 connections; the fleet holds 3.
    assert most <= 3
    assert len(stored) == WORKERS * 12
    # Every process gave its leases back when its pool closed.
    assert redis_command(redis, "ZCARD", f"pooledmail:{{{name}}}:leases") == 0


def test_a_fleet_message_rate_holds_across_processes(
    backend: str, redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    rate, burst = 8, 2
    name = f"rate-{backend}-{request.node.name[-8:]}"
    with RecordingServer() as server:
        specs = [
            {
                "backend": backend,
                "smtp_port": server.port,
                "budget": budget(name, redis, max_messages_per_second=rate, burst=burst),
                "tag": f"w{index}",
                "count": 6,
                "concurrency": 3,
            }
            for index in range(WORKERS)
        ]
        results = run_fleet(specs)
        check_exactly_once(results, server)
        arrivals = sorted(item.mail_at for item in server.stored())
    assert len(arrivals) == WORKERS * 6
    # Four processes each sending as fast as they can: in no one-second window does the server
    # see more than the rate plus the burst.
    busiest = max(
        sum(1 for later in arrivals[index:] if later < start + 1.0)
        for index, start in enumerate(arrivals)
    )
    assert busiest <= rate + burst
    # How close the fleet comes to the rate is measured in bench/bench_budget.py, not here.


def test_a_process_killed_with_its_leases_frees_them_within_the_ttl(
    backend: str, redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    name = f"kill-{backend}-{request.node.name[-8:]}"
    ttl = 1.2
    shared = budget(name, redis, max_connections=3, lease_ttl=ttl, store_timeout=0.3)
    with RecordingServer() as server:
        holder = start_worker(
            {
                "backend": backend,
                "smtp_port": server.port,
                "budget": shared,
                "tag": "holder",
                "hold": True,
                "min_size": 3,
            }
        )
        assert holder.stdout is not None
        ready = json.loads(holder.stdout.readline())
        assert ready == {"ready": True, "leases": 3}
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed_at = time.monotonic()
        # The fleet is full until the dead process's leases expire: a new process waits for them.
        result = run_fleet(
            [
                {
                    "backend": backend,
                    "smtp_port": server.port,
                    "budget": shared,
                    "tag": "after",
                    "count": 6,
                    "concurrency": 3,
                    "acquire_timeout": 4 * ttl,
                }
            ]
        )[0]
        waited = time.monotonic() - killed_at
        check_exactly_once([result], server)
        most = server.most_sessions
    assert result["failed"] == []
    assert len(result["accepted"]) == 6
    assert most <= 3
    # Not a timing assertion on the code under test: a sanity check that the new process did
    # have to wait for the dead one's leases (it cannot have sent before they expired).
    assert waited >= ttl * 0.5


def test_redis_stopped_mid_run_with_local_policy_keeps_sending_exactly_once(
    backend: str, redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    name = f"local-{backend}-{request.node.name[-8:]}"
    shared = budget(
        name,
        redis,
        max_connections=8,
        max_messages_per_second=40,
        lease_ttl=1.5,
        store_timeout=0.2,
        on_store_failure="local",
        local_share=0.25,
    )
    with RecordingServer(final_reply_delay=0.01) as server:
        specs = [
            {
                "backend": backend,
                "smtp_port": server.port,
                "budget": shared,
                "tag": f"w{index}",
                "duration": 5.0,
                "concurrency": 2,
            }
            for index in range(WORKERS)
        ]
        workers = [start_worker(spec) for spec in specs]
        wait_until_every_worker_sent(server, WORKERS)
        stopped_at = time.monotonic()
        redis.stop()
        time.sleep(1.5)
        redis.start()
        restarted_at = time.monotonic()
        results = [finish(worker) for worker in workers]
        sent_during = per_worker(server, stopped_at, restarted_at)
        sent_after = per_worker(server, restarted_at, math.inf)
        stored = check_exactly_once(results, server)
        most = server.most_sessions
    # Nothing failed: every message was sent, once.
    assert [result["failed"] for result in results] == [[]] * WORKERS
    assert len(stored) == sum(len(result["accepted"]) for result in results)
    # Each process fell back to its share, kept sending, and came back to the fleet's budget.
    assert all("local" in result["modes"] for result in results)
    assert len(sent_during) == WORKERS, sent_during
    assert len(sent_after) == WORKERS, sent_after
    assert all(result["stats"]["mode"] == "fleet" for result in results)
    # Each process held at most a quarter of 8 connections while Redis was away, and the fleet
    # 8 otherwise. A connection opened without a lease meanwhile retires once idle after Redis is
    # back, so for the length of one send it may overlap with one opened under a new lease.
    assert most <= 8 + WORKERS


def test_redis_stopped_mid_run_with_refuse_policy_refuses_and_recovers(
    backend: str, redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    name = f"refuse-{backend}-{request.node.name[-8:]}"
    shared = budget(
        name,
        redis,
        max_connections=8,
        max_messages_per_second=40,
        lease_ttl=1.5,
        store_timeout=0.2,
    )
    with RecordingServer(final_reply_delay=0.01) as server:
        specs = [
            {
                "backend": backend,
                "smtp_port": server.port,
                "budget": shared,
                "tag": f"w{index}",
                "duration": 5.0,
                "concurrency": 2,
                "pause_after_failure": 0.1,
            }
            for index in range(WORKERS)
        ]
        workers = [start_worker(spec) for spec in specs]
        wait_until_every_worker_sent(server, WORKERS)
        stopped_at = time.monotonic()
        redis.stop()
        time.sleep(1.5)
        redis.start()
        restarted_at = time.monotonic()
        results = [finish(worker) for worker in workers]
        sent_during = per_worker(server, stopped_at, restarted_at)
        sent_after = per_worker(server, restarted_at, math.inf)
        check_exactly_once(results, server)
    kinds = Counter(kind for result in results for _, kind in result["failed"])
    # While Redis was away, sends that needed it were refused, and said why.
    assert kinds, "no send was refused while the store was down"
    assert set(kinds) == {"budget_unavailable"}
    # Sending resumed by itself once Redis was back, in every process.
    assert all(result["stats"]["mode"] == "fleet" for result in results)
    assert len(sent_after) == WORKERS, sent_after
    # While it was away, nothing went out beyond the tokens granted before it stopped.
    assert sum(sent_during.values()) <= WORKERS * 4, sent_during
