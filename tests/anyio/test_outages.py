"""Short outages in real time, on both backends.

* A 2 s restart of the only relay under steady load (a new send every 10 ms) costs at most 5 % of
  the sends in flight, with the default configuration: the sends that were waiting for it get a
  connection as soon as it is back (docs/guide/options.md, "Cooldowns", says why the defaults are
  what they are).
* The cooldown law, with cooldowns scaled down to fractions of a second: during an outage the
  attempts to a host are at least one cooldown apart, and a send fails before its deadline only
  when no recovery can come before it; with two hosts, an outage of the primary fails no send.

The law is a lower bound on the spacing of attempts, which real time can only stretch; the
upper bound ("tries again as soon as it may") is checked in virtual time (test_outages_virtual).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

import anyio
from pooledmail_anyio import FailureKind, Host, PoolConfig, SendFailed, SendResult, SMTPPool

from .fakesmtp import FakeSMTPServer, Script
from .outages import Send, as_sent, attempts_between, cooldown_law, fail_fast_law, steady_load
from .verdicts import judge, settled

pytestmark = pytest.mark.anyio

OUTAGE = 2.0
RATE = 100  # sends per second


async def restart_under_load(
    config_options: dict[str, Any], seed: int, outage: float = OUTAGE
) -> dict[str, Any]:
    """Run the relay, stop it for `outage` seconds (listener closed, sessions dropped) under
    steady load, start it again on the same port; returns what happened."""
    server = FakeSMTPServer(Script())
    sends: list[Send] = []
    times: dict[str, float] = {}
    stopping, finished = anyio.Event(), anyio.Event()

    async def relay(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        async with server.running():
            task_status.started(server.port)
            await stopping.wait()
        times["down"] = anyio.current_time()
        await anyio.sleep(outage)
        async with server.running(port=server.port):
            times["up"] = anyio.current_time()
            await finished.wait()
            await settled(server)

    async with anyio.create_task_group() as tasks:
        port = await tasks.start(relay)
        config = PoolConfig([Host("127.0.0.1", port, tls="none")], **config_options)
        async with SMTPPool(config, random=random.Random(seed)) as pool:
            start = anyio.current_time()

            async def stop_soon() -> None:
                await anyio.sleep(0.5)
                stopping.set()

            tasks.start_soon(stop_soon)
            with anyio.fail_after(60):
                await steady_load(pool, 1 / RATE, start + 0.5 + outage + 2.0, sends)
            stats = pool.statistics()
        finished.set()
    down, up = times["down"], times["up"]
    in_flight = [s for s in sends if s.start < up and s.end > down]
    failed = [s for s in in_flight if s.failed]
    return {
        "in_flight": len(in_flight),
        "failed": len(failed),
        "kinds": sorted({s.outcome.kind.name for s in failed if isinstance(s.outcome, SendFailed)}),
        "connect_failed": stats.closed_total.get("connect_failed", 0),
        "wrong": judge(server, as_sent(sends), bdat=False, chunk_size=1),
        # How long after its return the relay carried a message again.
        "back_after": min(
            (s.end for s in sends if isinstance(s.outcome, SendResult) and s.end > up),
            default=float("inf"),
        )
        - up,
        # Sends that start once the relay has been back for 1.5 s.
        "after": [s.outcome for s in sends if s.start > up + 1.5],
    }


async def test_a_two_second_restart_of_the_only_relay_costs_at_most_5_percent(
    anyio_backend: str,
) -> None:
    outcome = await restart_under_load({}, seed=5)
    assert outcome["in_flight"] >= 150, outcome  # 2 s of sends at 100 a second
    assert outcome["failed"] <= 0.05 * outcome["in_flight"], outcome
    assert outcome["wrong"] == []
    assert outcome["after"]
    assert all(isinstance(after, SendResult) for after in outcome["after"])


def stored_tags(server: FakeSMTPServer) -> list[str]:
    """The tags of the messages `server` stored (see `verdicts.message`), in order."""
    return [m.split(b"\r\n", 1)[0].removeprefix(b"Subject: m-").decode() for m in server.messages]


# How far apart the fake server's stamps of two connection attempts may drift from the moments
# the pool made them, in real time under load (see `cooldown_law`): a quarter of the shortest
# first cooldown here (0.8 x 0.05 s), so a missing or halved cooldown is still caught.
REAL_TIME_LAG = 0.01

SCALED = {
    "retry_base_delay": 0.05,
    "reconnect_cooldown": 0.05,
    "max_reconnect_cooldown": 0.4,
    "acquire_timeout": 0.3,
    "connect_timeout": 1.0,
}


async def test_a_sustained_outage_keeps_the_cooldown_law_in_real_time(anyio_backend: str) -> None:
    server = FakeSMTPServer(Script())
    sends: list[Send] = []
    async with server.running():
        key = f"127.0.0.1:{server.port}"
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")], **SCALED)
        async with SMTPPool(config, random=random.Random(6)) as pool:
            start = anyio.current_time()
            down, up = start + 0.2, start + 1.4

            async def outage() -> None:
                await anyio.sleep_until(down)
                server.accepting = False
                server.cut()
                await anyio.sleep_until(up)
                server.accepting = True

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(outage)
                await steady_load(pool, 0.02, up + 0.6, sends)
    attempts = attempts_between(server, down, up)
    # The law is judged on attempts that were made: several, over an outage this long.
    assert len(attempts) >= 2
    assert (
        cooldown_law(
            attempts, config, burst_window=0.02, demand=False, slack=0, early_slack=REAL_TIME_LAG
        )
        == []
    )
    during = [s for s in sends if down + 0.05 <= s.start < up]
    # Nothing is sent while the relay is down (a send may still succeed by a retry after it).
    assert all(s.failed or s.end > up for s in during)
    assert fail_fast_law(during, [key]) == []
    assert any(isinstance(s.outcome, SendResult) for s in sends if s.start > up)


async def test_an_outage_of_the_primary_fails_no_send_in_real_time(anyio_backend: str) -> None:
    # The primary answers each reply 30 ms late, so that sends are on the wire when it drops
    # every session (and the test sees what becomes of them).
    primary, backup = FakeSMTPServer(Script(reply_delay=0.03)), FakeSMTPServer(Script())
    sends: list[Send] = []
    async with primary.running(), backup.running():
        config = PoolConfig(
            [
                Host("127.0.0.1", primary.port, tls="none", priority=0),
                Host("127.0.0.1", backup.port, tls="none", priority=1),
            ],
            **SCALED,
        )
        async with SMTPPool(config, random=random.Random(7)) as pool:
            start = anyio.current_time()
            down, up = start + 0.2, start + 1.4

            async def outage() -> None:
                await anyio.sleep_until(down)
                primary.accepting = False
                primary.cut()
                await anyio.sleep_until(up)
                primary.accepting = True

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(outage)
                await steady_load(pool, 0.02, up + 1.0, sends)
    # A send whose message was on the wire to the primary when it dropped every session can only
    # be UNKNOWN_AFTER_DATA (true: it was handed over in full); any other failure is a defect.
    cut_in_flight = [
        s
        for s in sends
        if isinstance(s.outcome, SendFailed)
        and s.outcome.kind is FailureKind.UNKNOWN_AFTER_DATA
        and s.start <= down <= s.end
    ]
    assert [s for s in sends if s.failed and s not in cut_in_flight] == []
    assert len(cut_in_flight) <= config.max_size
    # Judged against the servers' records: no message stored twice (an unknown one is never
    # sent again behind the caller's back), every accepted one stored by the host that said so.
    on_primary, on_backup = stored_tags(primary), stored_tags(backup)
    assert not set(on_primary) & set(on_backup)
    assert max(Counter(on_primary + on_backup).values(), default=1) == 1
    for sent in sends:
        if isinstance(sent.outcome, SendResult):
            where = on_primary if sent.host_key == f"127.0.0.1:{primary.port}" else on_backup
            assert sent.tag in where
    attempts = attempts_between(primary, down, up)
    # The law is judged on attempts that were made: several, over an outage this long.
    assert len(attempts) >= 2
    assert (
        cooldown_law(
            attempts, config, burst_window=0.02, demand=False, slack=0, early_slack=REAL_TIME_LAG
        )
        == []
    )
    # Back on the primary within one cooldown period (0.4 s) of its return.
    assert f"127.0.0.1:{primary.port}" in {s.host_key for s in sends if s.start > up + 0.5}
