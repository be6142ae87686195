"""Waiting in tests for what another task, thread or process brings about.

A fixed sleep is a guess at how long that takes, and a loaded machine (CI under coverage) makes
the guess wrong. `until` polls the condition instead; its real-time bound is there only to end a
broken test, never to judge a speed.
"""

from __future__ import annotations

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
