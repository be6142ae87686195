"""Pools that name one budget with different `lease_ttl`s (a rolling deploy that changes it)."""

from __future__ import annotations

import pytest

import anyio
from pooledmail_anyio._budget import keys
from pooledmail_core import Host, RequestLease, SharedBudget
from tests.servers.redis import RedisServer

from .links import bare_link
from .test_fleet import redis_command
from .test_lease_race import Machine


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_short_lease_ttl_does_not_cut_short_the_leases_of_a_longer_one(
    anyio_backend: str, redis_server: RedisServer
) -> None:
    name = f"mixed-ttl-{anyio_backend}"
    long = SharedBudget(name, redis_url=redis_server.url, max_connections=4, lease_ttl=30.0)
    short = SharedBudget(name, redis_url=redis_server.url, max_connections=4, lease_ttl=1.5)
    leases_key, _ = keys(long)
    async with anyio.create_task_group() as tg:
        for budget in (long, short):
            machine = Machine()
            link = bare_link(budget, machine, tg)
            async with link.running():
                link.perform(RequestLease(0, budget, Host("127.0.0.1", 2525, budget=budget)))
                with anyio.fail_after(5):
                    await machine.wait_for_grants(1)
                # Left without giving the lease back, as a process that still holds it.
                link._stores[name].held.clear()
        tg.cancel_scope.cancel()
    # The first lease is good for 30 s: the set that holds it must live as long, or its expiry
    # (set by the other pool's acquire to 2 x 1.5 s) takes it away while it is held.
    assert redis_command(redis_server, "ZCARD", leases_key) == 2
    assert redis_command(redis_server, "PTTL", leases_key) > 20_000
