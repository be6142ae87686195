"""Two servers: priority failover, recovery after the cooldown, and the weighted split."""

from __future__ import annotations

import collections

import pytest

import anyio
from pooledmail_anyio import Host, PoolConfig, SMTPPool
from pooledmail_anyio._ports import free_port

from .fakesmtp import FakeSMTPServer, Script

pytestmark = pytest.mark.anyio

BODY = b"Subject: hi\r\n\r\nhello\r\n"


async def send_one(pool: SMTPPool) -> str:
    result = await pool.send_raw(BODY, sender="a@example.com", recipients=["b@example.com"])
    return result.host


async def test_failover_to_the_backup_while_the_primary_is_down_then_back() -> None:
    primary_port = free_port()  # nothing listens here yet: connections are refused
    backup = FakeSMTPServer(Script())
    async with backup.running():
        config = PoolConfig(
            [
                Host("127.0.0.1", primary_port, tls="none", priority=0),
                Host("127.0.0.1", backup.port, tls="none", priority=1),
            ],
            reconnect_cooldown=0.2,
            max_reconnect_cooldown=0.2,
            cooldown_jitter=0.0,
            max_retries=0,
        )
        async with SMTPPool(config) as pool:
            assert await send_one(pool) == f"127.0.0.1:{backup.port}"
            stats = pool.statistics()
            primary = stats.hosts[f"127.0.0.1:{primary_port}"]
            assert primary.cooling_down
            assert primary.consecutive_failures == 1
            # The primary comes back; once its cooldown ends new connections go to it and the
            # idle connection to the backup retires.
            primary_server = FakeSMTPServer(Script())
            async with primary_server.running(port=primary_port):
                await anyio.sleep(0.3)
                hosts = [await send_one(pool) for _ in range(3)]
                stats = pool.statistics()
    assert hosts[-1] == f"127.0.0.1:{primary_port}"
    assert stats.hosts[f"127.0.0.1:{primary_port}"].consecutive_failures == 0
    assert len(primary_server.messages) >= 1


async def test_weights_split_new_connections_three_to_one() -> None:
    heavy = FakeSMTPServer(Script())
    light = FakeSMTPServer(Script())
    async with heavy.running(), light.running():
        config = PoolConfig(
            [
                Host("127.0.0.1", heavy.port, tls="none", weight=3),
                Host("127.0.0.1", light.port, tls="none", weight=1),
            ],
            max_messages_per_connection=1,  # every send opens a new connection
        )
        async with SMTPPool(config) as pool:
            hosts = collections.Counter([await send_one(pool) for _ in range(40)])
    assert hosts[f"127.0.0.1:{heavy.port}"] == 30
    assert hosts[f"127.0.0.1:{light.port}"] == 10
