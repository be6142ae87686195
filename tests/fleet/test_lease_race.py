"""A lease still being granted must not be swept out of the store by a release."""

from __future__ import annotations

from typing import Any

import pytest

import anyio
from pooledmail_anyio._budget import keys
from pooledmail_core import Host, ReleaseLease, RequestLease, SharedBudget
from tests.polling import until
from tests.servers.redis import RedisServer

from .links import bare_link
from .test_fleet import redis_command


class Machine:
    """Records the store's answers as the pool machine would receive them."""

    def __init__(self) -> None:
        self.granted: list[str | None] = []
        self._grew = anyio.Event()

    def lease_granted(self, request: int, now: float, lease: str | None) -> list[Any]:
        self.granted.append(lease)
        self._grew.set()
        self._grew = anyio.Event()
        return []

    async def wait_for_grants(self, count: int) -> None:
        while len(self.granted) < count:
            await self._grew.wait()

    def lease_refused(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def request_failed(self, *args: Any) -> list[Any]:
        return []


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_release_during_a_lease_request_leaves_the_granted_lease_counted(
    anyio_backend: str, redis_server: RedisServer
) -> None:
    budget = SharedBudget("race", redis_url=redis_server.url, max_connections=2)
    host = Host("127.0.0.1", 2525, tls="none", budget=budget)
    leases_key, _ = keys(budget)
    machine = Machine()
    async with anyio.create_task_group() as tg:
        link = bare_link(budget, machine, tg)
        async with link.running():
            # A first lease, granted; its connection is about to go away.
            link.perform(RequestLease(0, budget, host))
            with anyio.fail_after(5):
                await machine.wait_for_grants(1)
            first = machine.granted[0]
            assert first is not None
            # Another connection is wanted while the first one's slot is gone, at once.
            link.perform(RequestLease(1, budget, host))
            link.perform(ReleaseLease(budget, first))
            with anyio.fail_after(5):
                await machine.wait_for_grants(2)
            second = machine.granted[1]
            # Both leases are in the store until the release's round trip is over; it takes them
            # out in one ZREM, so the count goes from 2 straight to what it ends at.
            await until(
                lambda: redis_command(redis_server, "ZCARD", leases_key) != 2,
                what="the release done in the store",
            )
            # The pool holds `second`: the fleet's count in the store must include it.
            counted = redis_command(redis_server, "ZCARD", leases_key)
            assert counted == 1, f"the pool holds lease {second} but the store counts {counted}"
        tg.cancel_scope.cancel()
