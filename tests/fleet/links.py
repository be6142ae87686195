"""Building blocks of the fleet tests: a `FleetLink` on its own (the store side without a
pool), a pool whose one host is under a budget, and a send that returns its failure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.abc

from pooledmail_anyio import Host, PoolConfig, SendFailed, SMTPPool
from pooledmail_anyio._budget import FleetLink
from pooledmail_core import SharedBudget


def bare_link(
    budget: SharedBudget,
    machine: Any,
    task_group: anyio.abc.TaskGroup,
    *,
    perform: Callable[[Any], None] = lambda actions: None,
    clock: Callable[[], float] = lambda: 0.0,
) -> FleetLink:
    """A link for `budget` that reports to `machine` (the real pool machine or a recorder) and
    runs its background work in `task_group`."""

    def spawn(func: Any, *args: Any) -> bool:
        task_group.start_soon(func, *args)
        return True

    return FleetLink([budget], machine=machine, perform=perform, clock=clock, spawn=spawn)


def budgeted_config(port: int, budget: SharedBudget, **options: Any) -> PoolConfig:
    """A pool whose one host, 127.0.0.1:`port` in plaintext, is under `budget`: no retry (each
    verdict is one attempt's), a 5 s send_timeout and no keepalive unless `options` say
    otherwise."""
    settings: dict[str, Any] = {"max_retries": 0, "send_timeout": 5.0, "keepalive_interval": None}
    settings.update(options)
    return PoolConfig([Host("127.0.0.1", port, tls="none", budget=budget)], **settings)


async def send_or_failure(pool: SMTPPool, data: bytes, sender: str) -> SendFailed | None:
    """Send `data` to one recipient; its SendFailed, or None when it was accepted."""
    try:
        await pool.send_raw(data, sender=sender, recipients=["b@t"])
    except SendFailed as failed:
        return failed
    return None
