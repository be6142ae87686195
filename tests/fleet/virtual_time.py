"""Virtual time on both backends: trio's MockClock, and an asyncio loop that does the same.

Both jump the clock to the next timer once every task has been blocked for `autojump_threshold`
real seconds, so loopback I/O (a real Redis answers in microseconds) never races a jump, and a
wait of seconds costs a twentieth of a second. Under either, `anyio.current_time()`, `sleep`,
`fail_after` and the store client's own timeouts all read the virtual clock.

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request): return virtual_backend(request.param)
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

import trio.testing

AUTOJUMP = 0.05


class _JumpingSelector:
    """The loop's selector, but a wait with nothing to do moves the virtual clock instead."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._real = real
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout <= 0:
            return self._real.select(timeout)
        events = self._real.select(self._loop.autojump_threshold)
        if events or timeout is None:
            # Nothing scheduled: only I/O or another thread can wake the loop.
            return events or self._real.select(None)
        self._loop.virtual_now += timeout  # the next timer is due
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose `time()` is virtual, and jumps as trio's autojumping MockClock."""

    def __init__(self, autojump_threshold: float = AUTOJUMP) -> None:
        super().__init__()
        self.autojump_threshold = autojump_threshold
        self.virtual_now = 0.0
        self._selector = _JumpingSelector(self._selector, self)  # type: ignore[has-type]

    def time(self) -> float:
        return self.virtual_now


def virtual_backend(name: str) -> tuple[str, dict[str, Any]]:
    """The `anyio_backend` value that runs a test on `name` ("asyncio", "trio") in virtual time."""
    if name == "trio":
        return "trio", {"clock": trio.testing.MockClock(autojump_threshold=AUTOJUMP)}
    return "asyncio", {"loop_factory": VirtualTimeLoop}
