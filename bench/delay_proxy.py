"""A TCP proxy on loopback that holds every byte for a fixed time in each direction, in order.

    python bench/delay_proxy.py --target 127.0.0.1:2525 --delay 0.005

It listens on a free port of 127.0.0.1, prints "127.0.0.1:<port>" on stdout once it accepts
connections, and runs until it is terminated. Each accepted connection gets one connection of its
own to the target. Bytes read from either side are written to the other side `delay` seconds after
they were read, never earlier and never out of order, so a round trip through the proxy costs
twice `delay` more than without it (plus the event loop's timer granularity, about a millisecond:
`bench/harness.py` measures the real round trip and prints it). An end of stream (FIN) and a
closed connection are passed on with the same delay, after the bytes that came before them.

Flow control: when the kernel buffer towards one side fills up, the proxy stops reading the other
side until it drains. The bytes held for their delay are not counted against that limit; at the
rates a benchmark runs that is a few hundred kilobytes at most.

This is the benchmark's stand-in for a distant server: asyncio only, no TLS of its own (TLS passes
through it as bytes), loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import sys
from typing import Final

__all__ = ["start_delay_proxy"]


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# What may be queued towards a side besides bytes: its peer's end of stream, or its peer's close.
_END_OF_STREAM: Final = _Marker("END_OF_STREAM")
_CLOSE: Final = _Marker("CLOSE")


class _Side(asyncio.Protocol):
    """One socket of a proxied connection, and the queue of what is due to be written to it.

    Items are appended with their due time, and due times never decrease (the loop's clock is
    monotonic), so writing the head of the queue whenever it is due keeps the order.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self._due: collections.deque[tuple[float, bytes | _Marker]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._end_of_stream_received = False
        self._end_of_stream_sent = False

    # -- what arrives on this side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.deliver_later(data)

    def eof_received(self) -> bool:
        self._end_of_stream_received = True
        if self.peer is not None:
            self.peer.deliver_later(_END_OF_STREAM)
        if self._end_of_stream_sent and self.transport is not None:
            self.transport.close()
        # True keeps the transport open for the other direction (a half-closed connection).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
        if self.peer is not None:
            self.peer.deliver_later(_CLOSE)

    # Flow control: this side's transport buffer is full, so stop reading what fills it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    # -- what is due to be written to this side ------------------------------------------------

    def deliver_later(self, item: bytes | _Marker) -> None:
        self._due.append((self._loop.time() + self._delay, item))
        if self._timer is None:
            self._timer = self._loop.call_at(self._due[0][0], self._write_due)

    def _write_due(self) -> None:
        self._timer = None
        now = self._loop.time()
        transport = self.transport
        while self._due and self._due[0][0] <= now:
            _, item = self._due.popleft()
            if transport is None or transport.is_closing():
                self._due.clear()
                return
            if item is _CLOSE:
                transport.close()
                self._due.clear()
                return
            if item is _END_OF_STREAM:
                self._end_of_stream_sent = True
                if self._end_of_stream_received or not transport.can_write_eof():
                    transport.close()
                    self._due.clear()
                    return
                transport.write_eof()
            else:
                assert isinstance(item, bytes)
                transport.write(item)
        if self._due:
            self._timer = self._loop.call_at(self._due[0][0], self._write_due)


class _ClientSide(_Side):
    """The accepted socket: nothing is read from it until its connection to the target is up."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        target: tuple[str, int],
        connecting: set[asyncio.Task[None]],
    ) -> None:
        super().__init__(loop, delay)
        self._target = target
        self._connecting = connecting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        task = self._loop.create_task(self._connect_target())
        # The loop keeps only weak references to tasks.
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect_target(self) -> None:
        assert self.transport is not None
        host, port = self._target
        try:
            _, server = await self._loop.create_connection(
                lambda: _Side(self._loop, self._delay), host, port
            )
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():
            assert server.transport is not None
            server.transport.close()
            return
        self.peer, server.peer = server, self
        self.transport.resume_reading()


async def start_delay_proxy(
    target_host: str, target_port: int, delay: float, *, listen_host: str = "127.0.0.1"
) -> asyncio.Server:
    """Start the proxy on a free port of `listen_host`; the caller closes the returned server."""
    if delay < 0:
        raise ValueError("delay: must not be negative")
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()
    target = (target_host, target_port)
    return await loop.create_server(
        lambda: _ClientSide(loop, delay, target, connecting), listen_host, 0
    )


async def _serve(target_host: str, target_port: int, delay: float) -> None:
    server = await start_delay_proxy(target_host, target_port, delay)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument(
        "--delay", type=float, default=0.005, help="seconds added in each direction"
    )
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, int(port), args.delay))
    sys.exit(0)


if __name__ == "__main__":
    main()
