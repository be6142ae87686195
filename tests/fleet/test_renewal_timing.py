"""Lease renewals start at most lease_ttl / 3 apart, even when every store call takes almost
store_timeout (the most the config allows: a third of lease_ttl).

Before, the renewal loop paused lease_ttl / 3 after the END of a renewal, and gave stray leases
back before the next one: with every call slow, renewals started store_timeout + lease_ttl / 3
+ store_timeout apart, and one that the store applied late in its call came about 4/3 lease_ttl
after one it applied early: the lease expired while the process was alive. The test runs in
virtual time on both backends (tests/fleet/virtual_time.py), against a real Redis whose every
answer, renewals and give-backs alike, reaches the pool a controlled delay later.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import anyio
from pooledmail_core import Host, RequestLease, SharedBudget
from tests.servers.redis import RedisServer

from .links import bare_link
from .virtual_time import virtual_backend

LEASE_TTL = 3.0
STORE_TIMEOUT = 1.0  # the config's limit: a third of lease_ttl
DELAY = 0.95 * STORE_TIMEOUT  # every answer comes almost at the call's time bound
RENEWALS = 8


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return virtual_backend(str(request.param))


class Machine:
    """Records what the store's answers tell the pool machine."""

    def __init__(self) -> None:
        self.granted: list[str | None] = []
        self.failures = 0
        self.lost: list[str] = []
        self.granted_event = anyio.Event()

    def lease_granted(self, request: int, now: float, lease: str | None) -> list[Any]:
        self.granted.append(lease)
        self.granted_event.set()
        return []

    def store_failed(self, budget: str, now: float) -> list[Any]:
        self.failures += 1
        return []

    def lease_lost(self, budget: str, lease: str, now: float) -> list[Any]:
        self.lost.append(lease)
        return []


async def test_renewals_start_a_third_of_the_ttl_apart_when_every_answer_is_slow(
    anyio_backend: tuple[str, dict[str, Any]], redis_server: RedisServer
) -> None:
    name = f"renewal-timing-{anyio_backend[0]}"
    budget = SharedBudget(
        name,
        redis_url=redis_server.url,
        max_connections=2,
        lease_ttl=LEASE_TTL,
        store_timeout=STORE_TIMEOUT,
    )
    host = Host("127.0.0.1", 2525, tls="none", budget=budget)
    machine = Machine()
    starts: list[float] = []
    give_backs: list[float] = []
    enough = anyio.Event()
    async with anyio.create_task_group() as tg:
        link = bare_link(budget, machine, tg, clock=anyio.current_time)
        async with link.running():
            link.perform(RequestLease(0, budget, host))
            with anyio.fail_after(5):
                await machine.granted_event.wait()
            (lease,) = machine.granted
            assert lease is not None
            (store,) = link._stores.values()
            renew, zrem = store.renew, store.client.zrem

            async def slow_renew(**kwargs: Any) -> Any:
                starts.append(anyio.current_time())
                if len(starts) > RENEWALS:
                    enough.set()
                # A lease whose request failed in this period: given back after the renewal.
                store.stray.add(f"stray-{len(starts)}")
                reply = await renew(**kwargs)
                await anyio.sleep(DELAY)
                return reply

            async def slow_zrem(*args: Any, **kwargs: Any) -> Any:
                give_backs.append(anyio.current_time())
                reply = await zrem(*args, **kwargs)
                await anyio.sleep(DELAY)
                return reply

            store.renew = slow_renew
            store.client.zrem = slow_zrem  # type: ignore[method-assign]
            link.start(tg)
            # In virtual seconds: a bound that ends a broken test, never a judgement of speed.
            with anyio.fail_after(2 * RENEWALS * LEASE_TTL):
                await enough.wait()
            tg.cancel_scope.cancel()

    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    report = f"renewals started at {[round(t, 3) for t in starts]} (virtual s)"
    assert machine.failures == 0, report
    assert machine.lost == [], report
    assert max(gaps) <= LEASE_TTL / 3 + 1e-6, report
    # The stray leases were given back meanwhile, each after the renewal that found it.
    assert give_backs, report
