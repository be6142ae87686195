"""Timeouts, cooldowns and idle retirement in virtual time (trio's MockClock; trio only).

The clock jumps to the next deadline once every task has been blocked for a tenth of a real
second, so a 30 s command timeout costs a tenth of a second and loopback I/O, which completes in
microseconds, never races a jump.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pooledmail_anyio import (
    FailureKind,
    HealthReport,
    Host,
    PoolConfig,
    SendFailed,
    SMTPPool,
    Stage,
)
from pooledmail_anyio._ports import free_port

from .fakesmtp import STALL, FakeSMTPServer, Fault, Script

BODY = b"Subject: hi\r\n\r\nhello\r\n"


async def send(pool: SMTPPool) -> str:
    result = await pool.send_raw(BODY, sender="a@example.com", recipients=["b@example.com"])
    return result.host


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    mock_clock.autojump_threshold = 0.1
    return mock_clock


@pytest.mark.trio
async def test_a_stall_after_the_terminator_ends_at_the_command_timeout(
    clock: trio.testing.MockClock,
) -> None:
    server = FakeSMTPServer(Script(data_end=STALL))
    async with server.running():
        config = PoolConfig(
            [Host("127.0.0.1", server.port, tls="none")], command_timeout=30.0, max_retries=3
        )
        async with SMTPPool(config) as pool:
            with pytest.raises(SendFailed) as caught:
                await send(pool)
            stats = pool.statistics()
    assert caught.value.kind is FailureKind.UNKNOWN_AFTER_DATA
    assert caught.value.stage is Stage.DATA_END
    assert caught.value.attempts == 1
    assert stats.closed_total.get("broken", 0) + stats.closing == 1


@pytest.mark.trio
async def test_a_full_pool_fails_the_waiter_at_its_acquire_deadline(
    clock: trio.testing.MockClock,
) -> None:
    server = FakeSMTPServer(Script(data_end=STALL))
    async with server.running():
        config = PoolConfig(
            [Host("127.0.0.1", server.port, tls="none")],
            max_size=1,
            acquire_timeout=15.0,
            command_timeout=60.0,
            max_retries=0,
        )
        async with SMTPPool(config) as pool, trio.open_nursery() as nursery:
            nursery.start_soon(send, pool)  # takes the only connection and stalls
            await trio.testing.wait_all_tasks_blocked(0.05)
            started = trio.current_time()
            with pytest.raises(SendFailed) as caught:
                await send(pool)
            waited = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert caught.value.kind is FailureKind.POOL_EXHAUSTED
    # Virtual seconds: the deadline is absolute, neither early nor restarted.
    assert 15.0 <= waited < 16.0


@pytest.mark.trio
async def test_an_idle_connection_retires_with_quit_after_idle_timeout(
    clock: trio.testing.MockClock,
) -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig(
            [Host("127.0.0.1", server.port, tls="none")],
            idle_timeout=120.0,
            keepalive_interval=None,
        )
        async with SMTPPool(config) as pool:
            await send(pool)
            await trio.sleep(121)
            stats = pool.statistics()
    assert stats.live == 0
    assert stats.closed_total["idle_timeout"] == 1
    assert server.connections[0].commands[-1] == "QUIT"


@pytest.mark.trio
async def test_primary_is_used_again_after_its_cooldown(clock: trio.testing.MockClock) -> None:
    primary_port = free_port()
    backup = FakeSMTPServer(Script())
    primary = FakeSMTPServer(Script())
    async with backup.running():
        config = PoolConfig(
            [
                Host("127.0.0.1", primary_port, tls="none", priority=0),
                Host("127.0.0.1", backup.port, tls="none", priority=1),
            ],
            reconnect_cooldown=30.0,
            cooldown_jitter=0.0,
        )
        async with SMTPPool(config) as pool:
            assert await send(pool) == f"127.0.0.1:{backup.port}"
            assert pool.statistics().hosts[f"127.0.0.1:{primary_port}"].cooling_down
            async with primary.running(port=primary_port):
                await trio.sleep(31)
                hosts = [await send(pool) for _ in range(3)]
                stats = pool.statistics()
    assert hosts[-1] == f"127.0.0.1:{primary_port}"
    assert not stats.hosts[f"127.0.0.1:{primary_port}"].cooling_down
    assert stats.closed_total.get("retired_for_priority", 0) >= 1


@pytest.mark.trio
async def test_a_dripping_greeting_fails_at_the_connect_timeout(
    clock: trio.testing.MockClock,
) -> None:
    # 10 s per byte: the whole greeting would take minutes; the whole setup gets 30 s.
    server = FakeSMTPServer(Script(drip_greeting=10.0))
    async with server.running():
        config = PoolConfig(
            [Host("127.0.0.1", server.port, tls="none")],
            connect_timeout=30.0,
            # The cooldown ends after the waiter's deadline, so no trial follows the failure.
            acquire_timeout=45.0,
            reconnect_cooldown=60.0,
            max_retries=0,
        )
        async with SMTPPool(config) as pool:
            started = trio.current_time()
            with pytest.raises(SendFailed) as caught:
                await send(pool)
            waited = trio.current_time() - started
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    assert caught.value.stage is Stage.GREETING
    assert waited < 40.0  # virtual seconds: one step, not one step per byte


@pytest.mark.trio
async def test_nothing_of_the_pool_runs_on_trio_after_its_block_exits() -> None:
    # The trio stream's watchdog (one system task per run) lives only while a stream is open.
    from pooledmail_anyio._trio_stream import _watchdog

    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")])
        async with SMTPPool(config) as pool:
            await send(pool)
            assert _watchdog().open_streams == 1
        await trio.testing.wait_all_tasks_blocked()
        assert _watchdog().open_streams == 0
        assert not _watchdog()._running
        # A new pool starts it again.
        async with SMTPPool(config) as pool:
            await send(pool)
            assert _watchdog()._running


async def timed_check(config: PoolConfig) -> tuple[HealthReport, float]:
    """`check()`'s report, and how long it took in virtual time."""
    started = trio.current_time()
    report = await SMTPPool(config).check()
    return report, trio.current_time() - started


@pytest.mark.trio
async def test_check_of_a_slow_then_silent_host_ends_within_connect_timeout(
    clock: trio.testing.MockClock,
) -> None:
    # "All hosts are checked at once, each within `connect_timeout`": the NOOP after a slow
    # setup gets what is left of it, not a step of its own. (Virtual time: 10 s cost nothing.)
    # Setup takes 8 s of a 10 s connect_timeout (greeting and EHLO 4 s each), then NOOP stalls.
    server = FakeSMTPServer(Script(noop=STALL, reply_delay=4.0))
    async with server.running():
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")], connect_timeout=10.0)
        report, took = await timed_check(config)
    assert not report.ok
    assert took <= 10.0  # connect_timeout: the abort after the NOOP gets no grace beyond it


# Replies 3 s apart: greeting at 3 s, EHLO at 6 s, NOOP at 9 s of a 10 s connect_timeout; then
# the server never answers QUIT (reply 3), which alone would be granted a 2 s grace.
_SLOW_THEN_NO_QUIT = Script(
    reply_delay=3.0, acts=(Fault("normal"), Fault("normal"), Fault("normal"), Fault("stall"))
)


@pytest.mark.trio
async def test_check_ends_at_its_connect_timeout_when_the_server_ignores_quit(
    clock: trio.testing.MockClock,
) -> None:
    # One absolute deadline bounds the whole check of a host: the QUIT after the NOOP gets
    # what is left of it (1 s here), not a grace of its own.
    server = FakeSMTPServer(_SLOW_THEN_NO_QUIT)
    async with server.running():
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")], connect_timeout=10.0)
        report, took = await timed_check(config)
    assert report.ok
    assert server.connections[0].commands[-2:] == ["NOOP", "QUIT"]
    assert took <= 10.0


@pytest.mark.trio
async def test_check_of_refused_credentials_ends_at_its_connect_timeout_despite_quit(
    clock: trio.testing.MockClock,
) -> None:
    # AUTH is refused (535) at 9 s; the QUIT that follows the refusal is never answered.
    script = Script(
        extensions=("AUTH PLAIN",),
        reply_delay=3.0,
        acts=(Fault("normal"), Fault("normal"), Fault("5xx"), Fault("stall")),
    )
    server = FakeSMTPServer(script)
    async with server.running():
        host = Host(
            "127.0.0.1",
            server.port,
            tls="none",
            username="alice",
            password="s3cret-pw",
            allow_plaintext_auth=True,
        )
        config = PoolConfig([host], connect_timeout=10.0)
        report, took = await timed_check(config)
    (found,) = report.failures
    assert found.kind is FailureKind.AUTH_FAILED
    assert found.reply is not None
    assert found.reply.code == 535
    assert server.connections[0].commands[-1] == "QUIT"
    assert took <= 10.0


@pytest.mark.trio
async def test_check_aborts_at_once_when_the_noop_answer_used_up_the_deadline(
    clock: trio.testing.MockClock,
) -> None:
    # Replies 5 s apart: the NOOP answer would come at 15 s, after the 10 s deadline; and
    # nothing is left for a QUIT, so none is sent.
    server = FakeSMTPServer(Script(reply_delay=5.0))
    async with server.running():
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")], connect_timeout=10.0)
        report, took = await timed_check(config)
    assert not report.ok
    assert "QUIT" not in server.connections[0].commands
    assert took <= 10.0


@pytest.mark.trio
async def test_probe_ends_at_its_connect_timeout_when_the_server_ignores_quit(
    clock: trio.testing.MockClock,
) -> None:
    # `pooledmail probe`: the connection and its NOOP within one --connect-timeout, the QUIT too.
    import ssl

    from pooledmail_anyio._cli import _probe

    server = FakeSMTPServer(_SLOW_THEN_NO_QUIT)
    async with server.running():
        host = Host("127.0.0.1", server.port, tls="none")
        started = trio.current_time()
        found, _ = await _probe(host, ssl.create_default_context(), 10.0, "localhost")
        took = trio.current_time() - started
    assert found.failure is None
    assert server.connections[0].commands[-2:] == ["NOOP", "QUIT"]
    assert took <= 10.0
