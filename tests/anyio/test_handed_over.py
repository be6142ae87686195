"""When the asyncio stream's `send()` says the bytes were handed over, they were, and only then.

The driver's ambiguity boundary (docs/internals/design.md) rests on one property of the stream:
a `send()` that returned handed every byte to the kernel, and one that raised did not, unless it
sets `handed_over_when_interrupted`. The asyncio stream waits for the kernel through the
protocol's `resume_writing()`, which completes its waiter in one loop iteration, while the
sending task resumes in the next: whatever runs in between (another task's close, a reset read
from the socket, a cancellation) must not change what the kernel already took, or undo what it
never took. Both orders are forced here with a hook on the protocol, and each is judged by what
the peer really received. The trio stream has no such window (its `send()` returns as soon as
the kernel took the last byte, in the same step), so these run on asyncio alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import anyio.abc
import pytest

import anyio
from pooledmail_anyio._stream import AsyncioSocketStream, _Protocol

from .streampair import stream_pair

pytestmark = pytest.mark.anyio

# Far more than both socket buffers hold on loopback: the send must wait for the peer.
FLOOD = 16 << 20


class _Hooked(_Protocol):
    """The stream's protocol, with a hook run before `resume_writing()` or `get_buffer()` (set
    per test on the class; the protocol's slots leave its instances no room for one)."""

    __slots__ = ()
    before_resume: Any = None
    before_read: Any = None

    def resume_writing(self) -> None:
        if _Hooked.before_resume is not None:
            _Hooked.before_resume()
        super().resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        if _Hooked.before_read is not None:
            _Hooked.before_read()
        return super().get_buffer(sizehint)


@pytest.fixture(autouse=True)
def _unhooked() -> Any:
    yield
    _Hooked.before_resume = _Hooked.before_read = None


def _close_now(stream: AsyncioSocketStream) -> None:
    """What another task's `aclose()` does before its first wait (mark closed, abort), run from
    a plain callback: the part that takes effect in the iteration the task runs in."""
    closing = stream.aclose()
    with contextlib.suppress(StopIteration):
        closing.send(None)
    closing.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_close_after_the_kernel_took_the_last_byte_does_not_undo_the_send() -> None:
    # The peer reads the whole flood; the moment the kernel took its last byte, a close is
    # queued ahead of the sender's wake-up (as another task's, woken earlier in the same
    # iteration, would be). Every byte was handed over and reaches the peer: the send must say
    # so, by returning or by `handed_over_when_interrupted`, not fail as if it never left.
    async with stream_pair() as (client, server):
        assert isinstance(client, AsyncioSocketStream)
        client._protocol.__class__ = _Hooked
        loop = asyncio.get_running_loop()
        _Hooked.before_resume = lambda: loop.call_soon(_close_now, client)
        received = 0
        outcome: list[object] = []

        async def read_all() -> None:
            nonlocal received
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    received += len(await server.receive(1 << 20))

        async def flood() -> None:
            try:
                await client.send(b"x" * FLOOD)
                outcome.append("returned")
            except Exception as exc:
                outcome.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all)
                await flood()
    assert received == FLOOD  # the kernel had every byte, and delivered it
    assert outcome == ["returned"] or client.handed_over_when_interrupted, outcome


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_reset_that_discards_unsent_bytes_under_a_cancelled_send_is_no_hand_over() -> None:
    # The send waits with bytes in asyncio's buffer; the caller's cancellation is requested just
    # before the read that meets the peer's reset, which throws those bytes away. They never
    # reached the kernel, so the send must not say it handed them over.
    async with stream_pair() as (client, server):
        assert isinstance(client, AsyncioSocketStream)
        client._protocol.__class__ = _Hooked
        scope = anyio.CancelScope()
        unsent: list[int] = []

        def cancel_before_the_read() -> None:
            if not unsent:
                unsent.append(client._transport.get_write_buffer_size())
                scope.cancel()

        async def flood() -> None:
            with scope:
                await client.send(b"x" * FLOOD)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(flood)
                await anyio.wait_all_tasks_blocked()
                _Hooked.before_read = cancel_before_the_read
                raw = server.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await server.aclose()
    assert scope.cancelled_caught
    assert len(unsent) == 1
    assert unsent[0] > 0  # bytes were still in asyncio's buffer when it broke
    assert not client.handed_over_when_interrupted
