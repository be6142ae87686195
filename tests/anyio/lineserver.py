"""The plumbing of the small single-purpose SMTP servers the tests write (authecho, tokenserver):
a listener on 127.0.0.1 that serves each connection with the subclass's `session()`, and a
connection read a CRLF line at a time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio.abc

import anyio

_Server = TypeVar("_Server", bound="LineServer")


class Lines:
    """One connection, read a line at a time (without its CRLF) and written a reply at a time."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self._buffer = b""

    async def until(self, marker: bytes) -> bytes:
        """The bytes before the next `marker`, which is consumed too."""
        while marker not in self._buffer:
            self._buffer += await self.stream.receive()
        found, _, self._buffer = self._buffer.partition(marker)
        return found

    async def line(self) -> str:
        return (await self.until(b"\r\n")).decode()

    async def say(self, text: str) -> None:
        await self.stream.send(text.encode() + b"\r\n")


class LineServer:
    """Listens on 127.0.0.1 while `running()`; each connection gets `session()` until it returns
    or the client leaves."""

    port = 0

    @contextlib.asynccontextmanager
    async def running(self: _Server) -> AsyncIterator[_Server]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, self._serve)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def _serve(self, stream: anyio.abc.ByteStream) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            await self.session(Lines(stream))

    async def session(self, lines: Lines) -> None:
        raise NotImplementedError
