"""A connected pair of streams on 127.0.0.1 for the byte-stream tests: the client from the
driver's `connect_tcp`, the server the listener's accepted anyio stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio.abc

import anyio
from pooledmail_anyio._stream import DeadlineSocketStream, connect_tcp


@contextlib.asynccontextmanager
async def stream_pair(
    read_limit: int | None = None,
) -> AsyncIterator[tuple[DeadlineSocketStream, anyio.abc.SocketStream]]:
    """(client, server); `read_limit` is handed to `connect_tcp` when given."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        if read_limit is None:
            client = await connect_tcp("127.0.0.1", port)
        else:
            client = await connect_tcp("127.0.0.1", port, read_limit=read_limit)
        socket_listener = listener.listeners[0]
        assert isinstance(socket_listener, anyio.abc.SocketListener)
        server = await socket_listener.accept()
        try:
            yield client, server
        finally:
            await client.aclose()
            await server.aclose()
