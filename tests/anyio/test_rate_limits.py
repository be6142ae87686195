"""Message rates through the driver, on asyncio and trio: waiting for tokens, RATE_LIMITED.

(That a hopeless waiter is failed at once, not at its deadline, is held in virtual time by
tests/core/test_ratelimit.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

import anyio
from pooledmail_anyio import (
    FailureKind,
    Host,
    PoolConfig,
    SendFailed,
    SharedBudget,
    SMTPPool,
    Stage,
)
from pooledmail_anyio._limit_reasons import describe_limit

from .fakesmtp import FakeSMTPServer, Script

BODY = b"Subject: hi\r\n\r\nhello\r\n"


async def send(pool: SMTPPool) -> None:
    await pool.send_raw(BODY, sender="a@example.com", recipients=["b@example.com"])


@pytest.mark.anyio
async def test_sends_past_the_rate_wait_for_their_tokens_on_one_connection() -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        # A token every 100 ms: a send ends long before the next one comes, even on a loaded
        # machine (at 50 a second, sends held up past 40 ms had the pool open a fourth).
        host = Host("127.0.0.1", server.port, tls="none", max_messages_per_second=10, burst=2)
        async with SMTPPool(PoolConfig([host], max_size=4)) as pool:
            async with anyio.create_task_group() as senders:
                for _ in range(6):
                    senders.start_soon(send, pool)
            stats = pool.statistics()
            sent = pool.send_statistics().accepted
    assert sent == 6
    # Tokens, not connections, were what the senders waited for.
    assert stats.created_total <= 3
    assert len(server.messages) == 6


@pytest.mark.anyio
async def test_a_send_whose_token_cannot_come_in_time_fails_rate_limited_at_once() -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        host = Host("127.0.0.1", server.port, tls="none", max_messages_per_second=0.1)
        config = PoolConfig([host], acquire_timeout=5.0)
        async with SMTPPool(config) as pool:
            await send(pool)
            with pytest.raises(SendFailed) as caught:
                await send(pool)
    failure = caught.value
    assert failure.kind is FailureKind.RATE_LIMITED
    assert failure.stage is Stage.ACQUIRE
    assert failure.definitely_not_accepted
    assert failure.attempts == 1
    assert "0.1 msg/s" in str(failure)
    assert len(server.messages) == 1


def test_importing_the_driver_imports_no_redis_client() -> None:
    code = "import pooledmail_anyio, sys; assert 'coredis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_rate_limited_send_under_a_refusing_budget_is_described_without_local_share() -> None:
    # RATE_LIMITED because of the rated host, while the other host's budget refuses (its store
    # is away, and "refuse" has no local_share to name).
    shared = SharedBudget(
        "provider-x", redis_url="redis://127.0.0.1:6379/0", max_messages_per_second=10
    )
    config = PoolConfig(
        [Host("a.example", 25, budget=shared), Host("b.example", 25, max_messages_per_second=1)]
    )
    reason = describe_limit(FailureKind.RATE_LIMITED, config, {"provider-x": {"mode": "refuse"}})
    assert "'provider-x'" in reason
    assert "on_store_failure='refuse'" in reason
