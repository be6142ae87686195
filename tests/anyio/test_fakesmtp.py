"""The fake server's record of what it received is what the verdicts are judged against
(verdicts.py), so it must hold every byte a client handed over, however the server ends a session.
"""

from __future__ import annotations

import pytest

import anyio

from .fakesmtp import FakeSMTPServer, Script

pytestmark = pytest.mark.anyio


async def _greeted(port: int) -> anyio.abc.SocketStream:
    client = await anyio.connect_tcp("127.0.0.1", port)
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        greeting += await client.receive()
    assert greeting.startswith(b"220")
    return client


async def _until_end_of_stream(client: anyio.abc.SocketStream) -> None:
    with anyio.fail_after(5):
        while True:
            try:
                await client.receive()
            except anyio.EndOfStream:
                return


@pytest.mark.parametrize("how", ["stop", "cut"])
async def test_bytes_a_client_sends_after_the_server_dropped_it_are_still_recorded(
    how: str,
) -> None:
    # A client cannot tell whether bytes it handed over just before it saw the server go were
    # read: its verdict may be UNKNOWN_AFTER_DATA, and then the record must show them arrived.
    server = FakeSMTPServer(Script())
    stopping, stopped = anyio.Event(), anyio.Event()

    async def run_server(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        async with server.running():
            task_status.started(server.port)
            await stopping.wait()
            if how == "cut":
                server.cut()
                await stopped.wait()
        stopped.set()

    async with anyio.create_task_group() as tg:
        port = await tg.start(run_server)
        client = await _greeted(port)
        stopping.set()
        await _until_end_of_stream(client)  # the server is gone: a FIN, no reply
        await client.send(b"MAIL FROM:<late@example.com>\r\n")
        await anyio.sleep(0.05)
        await client.aclose()
        if how == "cut":
            with anyio.fail_after(5):
                while not server.connections[0].ended:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            stopped.set()
    assert server.connections[0].ended
    assert b"MAIL FROM:<late@example.com>\r\n" in server.connections[0].received_bytes


async def test_a_stopped_server_refuses_new_connections() -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        port = server.port
        client = await _greeted(port)
    await _until_end_of_stream(client)
    await client.aclose()
    with pytest.raises(OSError, match=r"(?i)refused|connection attempts failed"):
        await anyio.connect_tcp("127.0.0.1", port)
