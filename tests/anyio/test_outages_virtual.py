"""Long outages in virtual time (trio's MockClock; trio only), with the default cooldowns.

The clock jumps to the next deadline once every task has been blocked for 2 real milliseconds
(loopback I/O is delivered within the sending call, so it never races a jump), so twenty minutes
of outage under steady load cost a few seconds, and the cooldown law is checked to the virtual
millisecond: at most one connection attempt per cooldown period, and one as soon as a cooldown
ends while a send waits. A send fails before its deadline only when no recovery can come before
it.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from pooledmail_anyio import Host, PoolConfig, SendResult, SMTPPool

from .fakesmtp import FakeSMTPServer, Script
from .outages import Send, attempts_between, cooldown_law, fail_fast_law, steady_load

# One send every 2 s: there is always one waiting when a cooldown ends (acquire_timeout 15 s).
PERIOD = 2.0
# In virtual time nothing takes time but waits: attempts come exactly when allowed.
SLACK = 0.01


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    mock_clock.autojump_threshold = 0.002
    return mock_clock


def go_down(server: FakeSMTPServer) -> None:
    server.accepting = False
    server.cut()


def recovered_by(sends: list[Send], after: float, key: str) -> float:
    """When the first send started after `after` and served by `key` ended."""
    return min(
        s.end
        for s in sends
        if s.start >= after and isinstance(s.outcome, SendResult) and s.host_key == key
    )


@pytest.mark.trio
async def test_a_sustained_outage_sees_one_attempt_per_cooldown_period(
    clock: trio.testing.MockClock,
) -> None:
    server = FakeSMTPServer(Script())
    sends: list[Send] = []
    async with server.running():
        key = f"127.0.0.1:{server.port}"
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")])
        async with SMTPPool(config, random=random.Random(1)) as pool:
            start = trio.current_time()
            down, up, end = start + 10, start + 10 + 1200, start + 10 + 1200 + 120

            async def outage() -> None:
                await trio.sleep_until(down)
                go_down(server)
                await trio.sleep_until(up)
                server.accepting = True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(outage)
                await steady_load(pool, PERIOD, end, sends)
    attempts = attempts_between(server, down, up)
    # The law is judged on attempts that were made: several, over an outage this long.
    assert len(attempts) >= 2
    assert cooldown_law(attempts, config, burst_window=SLACK, demand=True, slack=SLACK) == []
    # Twenty minutes, cap 60 s: a handful while the cooldown grows, then one every 48 to 60 s.
    assert len(attempts) <= config.max_size + 7 + 1200 / ((1 - config.cooldown_jitter) * 60)
    during = [s for s in sends if down <= s.start < up]
    assert all(s.failed or s.end > up for s in during)
    assert fail_fast_law(during, [key]) == []
    # Most sends fail fast once the cooldown outgrows their deadline, instead of waiting 15 s.
    assert sum(s.end == s.start for s in during) > len(during) / 2
    # Back within one cooldown period of the relay's return, and every send after that is sent.
    assert recovered_by(sends, up, key) <= up + config.max_reconnect_cooldown + SLACK
    settled = [s for s in sends if s.start >= up + config.max_reconnect_cooldown + SLACK]
    assert settled
    assert all(isinstance(s.outcome, SendResult) for s in settled)


@pytest.mark.trio
async def test_flapping_three_times_starts_each_outage_from_the_first_cooldown(
    clock: trio.testing.MockClock,
) -> None:
    server = FakeSMTPServer(Script())
    sends: list[Send] = []
    cycles = [(30.0 + 200.0 * n, 30.0 + 200.0 * n + 100.0) for n in range(3)]
    async with server.running():
        key = f"127.0.0.1:{server.port}"
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")])
        async with SMTPPool(config, random=random.Random(2)) as pool:
            start = trio.current_time()

            async def flap() -> None:
                for down, up in cycles:
                    await trio.sleep_until(start + down)
                    go_down(server)
                    await trio.sleep_until(start + up)
                    server.accepting = True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flap)
                await steady_load(pool, PERIOD, start + cycles[-1][1] + 100.0, sends)
    for down, up in cycles:
        attempts = attempts_between(server, start + down, start + up)
        # The law is judged on attempts that were made: several, over an outage this long.
        assert len(attempts) >= 2
        # A success in between forgot every failure: each outage starts from the first cooldown.
        assert cooldown_law(attempts, config, burst_window=SLACK, demand=True, slack=SLACK) == []
        assert (
            fail_fast_law([s for s in sends if start + down <= s.start < start + up], [key]) == []
        )
        back = recovered_by(sends, start + up, key)
        assert back <= start + up + config.max_reconnect_cooldown + SLACK
        # Up again: every send that starts once the pool is back is sent.
        following = [s for s in sends if back <= s.start < start + up + 90.0]
        assert following
        assert all(isinstance(s.outcome, SendResult) for s in following)


@pytest.mark.trio
async def test_an_outage_of_the_primary_fails_no_send_and_traffic_returns_to_it(
    clock: trio.testing.MockClock,
) -> None:
    primary, backup = FakeSMTPServer(Script()), FakeSMTPServer(Script())
    sends: list[Send] = []
    async with primary.running(), backup.running():
        first = f"127.0.0.1:{primary.port}"
        config = PoolConfig(
            [
                Host("127.0.0.1", primary.port, tls="none", priority=0),
                Host("127.0.0.1", backup.port, tls="none", priority=1),
            ]
        )
        async with SMTPPool(config, random=random.Random(3)) as pool:
            start = trio.current_time()
            down, up, end = start + 10, start + 610, start + 800

            async def outage() -> None:
                await trio.sleep_until(down)
                go_down(primary)
                await trio.sleep_until(up)
                primary.accepting = True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(outage)
                await steady_load(pool, PERIOD, end, sends)
            stats = pool.statistics()
    # The backup carries every send: none fails.
    assert not [s for s in sends if s.failed]
    assert {s.host_key for s in sends if down + 1 <= s.start < up} == {f"127.0.0.1:{backup.port}"}
    # The primary is tried in the background, once per cooldown period.
    attempts = attempts_between(primary, down, up)
    # The law is judged on attempts that were made: several, over an outage this long.
    assert len(attempts) >= 2
    assert cooldown_law(attempts, config, burst_window=SLACK, demand=True, slack=SLACK) == []
    # Back to the primary within one cooldown period, and the backup's connections retire.
    assert recovered_by(sends, up, first) <= up + config.max_reconnect_cooldown + SLACK
    assert {s.host_key for s in sends if s.start >= up + config.max_reconnect_cooldown + 5} == {
        first
    }
    assert stats.closed_total.get("retired_for_priority", 0) >= 1


@pytest.mark.trio
async def test_a_send_whose_deadline_comes_before_any_recovery_fails_at_once(
    clock: trio.testing.MockClock,
) -> None:
    # A relay that was never up: a send whose own attempt fails learns it at once; one that
    # arrives during a cooldown waits for the next trial when it can come before its 15 s
    # deadline; once the cooldowns outgrow 15 s, a new send fails at once.
    server = FakeSMTPServer(Script())
    server.accepting = False
    sends: list[Send] = []
    async with server.running():
        key = f"127.0.0.1:{server.port}"
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")])
        async with SMTPPool(config, random=random.Random(4)) as pool:
            await steady_load(pool, 5.0, trio.current_time() + 120, sends)
    assert all(s.failed for s in sends)
    assert fail_fast_law(sends, [key], never_up=True) == []
    waited = [s for s in sends if s.end > s.start]
    fast = [s for s in sends if s.end == s.start]
    assert waited
    assert fast
