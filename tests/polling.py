"""Waiting in tests for what another task, thread or process brings about: `until` in a task,
`eventually` in a thread.

A fixed sleep is a guess at how long that takes, and a loaded machine (CI under coverage) makes
the guess wrong. `until` polls the condition instead; its real-time bound is there only to end a
broken test, never to judge a speed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import anyio


async def until(condition: Callable[[], bool], *, what: str, within: float = 10.0) -> None:
    """Return once `condition()` holds; fail the test, naming `what`, if it has not in `within`
    seconds."""
    with anyio.move_on_after(within):
        while not condition():  # noqa: ASYNC110 (polled: another thread or process may change it)
            await anyio.sleep(0.01)
        return
    pytest.fail(f"{what}: not within {within} s")


def eventually(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    """Whether `predicate` becomes true: for what another thread's server records after the
    client has moved on (a QUIT is sent, the server reads it a moment later). `within` only
    stops a broken test from hanging; nothing is asserted about time."""
    gate = threading.Event()
    for _ in range(int(within / 0.01)):
        if predicate():
            return True
        gate.wait(0.01)
    return predicate()
