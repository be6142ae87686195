"""A store client that raises what no Redis error is (a bug or a surprise in it) costs the budget
its store, never the pool.

The pool runs against a real redis-server and a recording SMTP server on 127.0.0.1; the store
calls of its budget are then replaced by ones that raise RuntimeError or AssertionError, as a
broken client would. Before, the exception escaped the background task: the pool closed under
every send (POOL_CLOSED) and its exit raised an ExceptionGroup. Now each such call is a store
failure (on_store_failure applies), logged once at ERROR with the exception's type name and
nothing the exception said (it may quote the URL and its password). Verdicts are judged against
the SMTP server's record.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest

from pooledmail_anyio import FailureKind, SendFailed, SharedBudget, SMTPPool
from tests.polling import until
from tests.servers.redis import RedisServer

from .links import budgeted_config, send_or_failure
from .recording_server import RecordingServer

SECRET = "hunter2-in-the-message"


def broken(error: type[Exception]) -> Any:
    async def call(*args: object, **kwargs: object) -> Any:
        raise error(f"redis://:{SECRET}@127.0.0.1/0 said no")

    return call


def message(number: int) -> bytes:
    return f"Message-ID: <m{number}@broken.test>\r\n\r\nhello\r\n".encode()


async def send(pool: SMTPPool, number: int) -> SendFailed | None:
    return await send_or_failure(pool, message(number), "a@broken.test")


def faults_logged(caplog: pytest.LogCaptureFixture, error: type[Exception]) -> list[str]:
    records = [r for r in caplog.records if r.name == "pooledmail" and r.levelno == logging.ERROR]
    for record in records:
        text = record.getMessage()
        assert SECRET not in text
        assert "redis://" not in text
    return [r.getMessage() for r in records if error.__name__ in r.getMessage()]


@pytest.mark.parametrize("policy", ["refuse", "local"])
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_client_that_raises_on_every_call_leaves_the_pool_up(
    anyio_backend: str, policy: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pooledmail")
    name = f"broken-{policy}-{anyio_backend}"
    budget = SharedBudget(
        name,
        redis_url=redis_server.url,
        max_connections=2,
        max_messages_per_second=100,
        on_store_failure=policy,
        local_share=1.0 if policy == "local" else None,
    )
    with RecordingServer() as server:
        config = budgeted_config(server.port, budget, max_size=2)
        async with SMTPPool(config) as pool:
            for store in pool._fleet._stores.values():
                # Every call the budget makes: leases, renewals, tokens, cooldowns, give-backs.
                store.acquire = store.renew = store.tokens = store.cool = broken(RuntimeError)
                store.client.zrem = broken(RuntimeError)
            verdicts = [await send(pool, number) for number in range(3)]
            statistics = pool.budget_statistics()[name]
        # The exit raised nothing (the leases it gives back go to a client that raises too).
        stored = Counter(item.message_id for item in server.stored())

    assert statistics["mode"] == policy
    assert isinstance(statistics["store_failures"], int)
    assert statistics["store_failures"] >= 1
    if policy == "refuse":
        for failure in verdicts:
            assert failure is not None
            assert failure.kind is FailureKind.BUDGET_UNAVAILABLE
            assert failure.definitely_not_accepted
        assert stored == Counter()
    else:
        assert verdicts == [None, None, None]
        assert stored == Counter(f"<m{number}@broken.test>" for number in range(3))
    assert faults_logged(caplog, RuntimeError)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_renewal_that_raises_is_a_store_failure_and_the_pool_keeps_sending(
    anyio_backend: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pooledmail")
    name = f"broken-renewal-{anyio_backend}"
    budget = SharedBudget(
        name,
        redis_url=redis_server.url,
        max_connections=1,
        # Renewed every 0.3 s: the broken renewal comes soon after the first send.
        lease_ttl=0.9,
        store_timeout=0.2,
        on_store_failure="local",
        local_share=1.0,
    )
    with RecordingServer() as server:
        config = budgeted_config(server.port, budget, max_size=1)
        async with SMTPPool(config) as pool:
            assert await send(pool, 0) is None  # a connection under a lease the store granted
            (store,) = pool._fleet._stores.values()
            assert store.held
            store.renew = broken(AssertionError)
            store.client.zrem = broken(AssertionError)
            await until(
                lambda: pool.budget_statistics()[name]["mode"] == "local",
                what="the broken renewal taken as a store failure",
            )
            assert await send(pool, 1) is None
        stored = Counter(item.message_id for item in server.stored())

    assert stored == Counter(["<m0@broken.test>", "<m1@broken.test>"])
    assert faults_logged(caplog, AssertionError)
