"""A `FleetLink` on its own, for tests that drive the store side without a pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.abc

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
