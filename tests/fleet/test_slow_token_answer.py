"""A fleet token whose answer was slow to come is still used: the pool keeps sending.

The store reserves a token of the fleet's rate for its own "now", which the driver only knows
lies between its ask and the answer. A token that lived from the ask would be dead on arrival
whenever the answer took longer than its lifetime (20 ms at 25 messages/s or more): the pool
would ask again and again, burning one of the fleet's tokens each time, and never send. So its
lifetime counts from the answer, and a token may be used up to one answer's delay after the
fleet's slot for it (docs/guide/scaling.md states that bound). The driver's clock here is a manual
one, moved on while the real Redis's answer is on its way; the pool machine is the real one.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

import anyio
from pooledmail_core import (
    Action,
    GrantSlot,
    Host,
    OpenConnection,
    PoolConfig,
    PoolMachine,
    RequestLease,
    RequestTokens,
    SharedBudget,
)
from tests.servers.redis import RedisServer

from .links import bare_link

SLOW = 0.2  # the answer's delay, beyond the token's lifetime (0.05 s at 10 messages/s)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_token_whose_answer_came_after_its_lifetime_is_still_granted(
    anyio_backend: str, redis_server: RedisServer
) -> None:
    budget = SharedBudget(
        f"slow-answer-{anyio_backend}", redis_url=redis_server.url, max_messages_per_second=10
    )
    host = Host("127.0.0.1", 2525, tls="none", budget=budget)
    machine = PoolMachine(PoolConfig([host], keepalive_interval=None), random.Random(0))
    now = [100.0]
    seen: list[Action] = []
    answered = anyio.Event()
    first_ask = -1

    async with anyio.create_task_group() as tg:

        def perform(actions: Any) -> None:
            for action in actions:
                seen.append(action)
                if isinstance(action, OpenConnection | GrantSlot):
                    answered.set()
                elif isinstance(action, RequestTokens) and action.request != first_ask:
                    answered.set()  # the first token's answer is in: the pool asks again
                elif isinstance(action, RequestLease | RequestTokens):
                    link.perform(action)

        link = bare_link(budget, machine, tg, perform=perform, clock=lambda: now[0])
        async with link.running():
            (store,) = link._stores.values()
            tokens_script = store.tokens

            async def slow_tokens(**kwargs: Any) -> Any:
                reply = await tokens_script(**kwargs)
                now[0] += SLOW  # the answer reaches the pool SLOW seconds after it asked
                return reply

            store.tokens = slow_tokens
            waiter, actions = machine.acquire(now[0], now[0] + 10.0)
            perform(actions)  # RequestLease: the host is not cooling down fleet-wide
            with anyio.fail_after(5):
                await answered.wait()
            (opened,) = [action for action in seen if isinstance(action, OpenConnection)]
            answered = anyio.Event()
            (ask,) = machine.connected(opened.slot, now[0])
            assert isinstance(ask, RequestTokens)
            first_ask = ask.request
            perform([ask])  # answered slowly
            with anyio.fail_after(5):
                await answered.wait()
        tg.cancel_scope.cancel()
    # The waiter gets the fleet's token, and the pool did not have to ask the store again.
    assert GrantSlot(opened.slot, waiter) in seen
    assert sum(isinstance(action, RequestTokens) for action in seen) == 1
