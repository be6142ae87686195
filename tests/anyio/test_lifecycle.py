"""Pool lifecycle: exhaustion, closing, cancellation at many points, background work bounded."""

from __future__ import annotations

import random
from typing import Any

import pytest

import anyio
from pooledmail_anyio import FailureKind, Host, PoolConfig, SendFailed, SMTPPool, Stage

from ..polling import until
from .fakesmtp import STALL, FakeSMTPServer, Script

pytestmark = pytest.mark.anyio

BODY = b"Subject: hi\r\n\r\nhello\r\n"


def config(server: FakeSMTPServer, **options: Any) -> PoolConfig:
    return PoolConfig([Host("127.0.0.1", server.port, tls="none")], **options)


async def send(pool: SMTPPool) -> Any:
    return await pool.send_raw(BODY, sender="a@example.com", recipients=["b@example.com"])


async def test_waiter_past_its_deadline_fails_with_pool_exhausted() -> None:
    server = FakeSMTPServer(lambda n: Script(data_end=STALL))
    options = {"max_size": 1, "acquire_timeout": 0.2, "command_timeout": 30.0, "max_retries": 0}
    async with (
        server.running(),
        SMTPPool(config(server, **options)) as pool,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(send, pool)  # holds the only connection, stalled after the terminator
        await anyio.sleep(0.05)
        with pytest.raises(SendFailed) as caught:
            await send(pool)
        assert pool.statistics().waiting == 0
        tg.cancel_scope.cancel()
    assert caught.value.kind is FailureKind.POOL_EXHAUSTED
    assert caught.value.stage is Stage.ACQUIRE
    assert caught.value.definitely_not_accepted


async def test_send_after_close_fails_with_pool_closed() -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        pool = SMTPPool(config(server))
        async with pool:
            await send(pool)
        with pytest.raises(SendFailed) as caught:
            await send(pool)
        stats = pool.statistics()
    assert caught.value.kind is FailureKind.POOL_CLOSED
    assert stats.live == 0
    # The idle connection said QUIT on the way out.
    assert server.connections[0].commands[-1] == "QUIT"


async def test_waiters_fail_with_pool_closed_when_the_pool_closes() -> None:
    server = FakeSMTPServer(lambda n: Script(data_end=STALL))
    options = {"max_size": 1, "acquire_timeout": 30.0, "command_timeout": 0.5, "max_retries": 0}
    failures: list[FailureKind] = []

    async def waiting_sender(pool: SMTPPool) -> None:
        try:
            await send(pool)
        except SendFailed as failure:
            failures.append(failure.kind)

    async with server.running():
        async with anyio.create_task_group() as tg, SMTPPool(config(server, **options)) as pool:
            tg.start_soon(waiting_sender, pool)
            await anyio.sleep(0.05)
            tg.start_soon(waiting_sender, pool)
            await anyio.sleep(0.05)
            assert pool.statistics().waiting == 1
        assert pool.statistics().live == 0
    assert sorted(f.name for f in failures) == ["POOL_CLOSED", "UNKNOWN_AFTER_DATA"]


async def test_min_size_is_kept_warm_in_the_background() -> None:
    server = FakeSMTPServer(Script())
    async with server.running(), SMTPPool(config(server, min_size=2)) as pool:
        # Polling a snapshot is the point here: the test observes from outside.
        await until(lambda: pool.statistics().idle >= 2, what="2 idle connections", within=5)
        stats = pool.statistics()
    assert stats.created_total == 2


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.005, 0.02, 0.05])
async def test_cancellation_at_any_point_leaves_the_pool_consistent(delay: float) -> None:
    server = FakeSMTPServer(Script())
    async with server.running(), SMTPPool(config(server, max_size=2)) as pool:
        for _ in range(5):
            with anyio.move_on_after(delay):
                await send(pool)
        stats = pool.statistics()
        assert stats.leased == 0
        assert stats.waiting == 0
        assert stats.live <= 2
        result = await send(pool)
    assert result.reply.code == 250


async def test_idle_connection_is_probed_before_reuse_and_replaced_when_dead() -> None:
    server = FakeSMTPServer(
        lambda n: Script(noop="421 4.4.2 idle too long") if n == 0 else Script()
    )
    options = {"keepalive_interval": 0.05, "max_retries": 0}
    async with server.running(), SMTPPool(config(server, **options)) as pool:
        await send(pool)
        await anyio.sleep(0.1)
        result = await send(pool)
        stats = pool.statistics()
    assert result.reply.code == 250
    assert "NOOP" in server.connections[0].commands
    assert stats.created_total == 2


async def test_many_random_cancellations_leave_the_pool_consistent() -> None:
    rng = random.Random(20261123)
    server = FakeSMTPServer(Script())
    async with server.running(), SMTPPool(config(server, max_size=3)) as pool:

        async def cancelled_sender() -> None:
            with anyio.move_on_after(rng.uniform(0, 0.004)):
                await send(pool)

        for _ in range(40):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(cancelled_sender)
            stats = pool.statistics()
            assert stats.leased == 0
            assert stats.waiting == 0
            assert stats.live <= 3
        result = await send(pool)
    assert result.reply.code == 250
    assert pool.statistics().live == 0
