"""Nothing outlives the pool: no socket and no task (the trio stream's watchdog included) after
`async with SMTPPool(...)` or `pool.check()` ends, whatever the server does at the end; and one
pool cannot be entered twice, even by two tasks at once."""

from __future__ import annotations

import os
from typing import Any

import pytest

import anyio
from pooledmail_anyio import Host, PoolConfig, SMTPPool

from .fakesmtp import FakeSMTPServer, Fault, Script

pytestmark = pytest.mark.anyio

# Greeting and EHLO answered; the third reply (QUIT, or check()'s NOOP) never comes.
STALL_THIRD_REPLY = Script(acts=[Fault("normal"), Fault("normal"), Fault("stall")])


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def config(server: FakeSMTPServer, **options: Any) -> PoolConfig:
    return PoolConfig([Host("127.0.0.1", server.port, tls="none")], **options)


def task_names() -> list[str]:
    try:
        import trio

        root = trio.lowlevel.current_root_task()
    except (ImportError, RuntimeError):
        import asyncio

        return [task.get_name() for task in asyncio.all_tasks()]
    names, stack = [], [root]
    while stack:
        task = stack.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


async def client_left(server: FakeSMTPServer) -> None:
    # The server's record of the connection is final once the client closed it.
    for _ in range(100):
        if server.connections[0].ended:
            return
        await anyio.sleep(0.01)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
async def test_a_server_that_stalls_on_quit_leaves_nothing_open() -> None:
    server = FakeSMTPServer(STALL_THIRD_REPLY)
    async with server.running():
        before = open_descriptors()
        async with SMTPPool(config(server, min_size=1)) as pool:
            for _ in range(500):  # min_size: one connection opens in the background
                if pool.statistics().idle:
                    break
                await anyio.sleep(0.01)
            assert pool.statistics().idle == 1
        await client_left(server)
        assert server.connections[0].commands[-1] == "QUIT"
        assert server.connections[0].closed_by_client
        assert open_descriptors() == before
        assert not [name for name in task_names() if "watchdog" in name]


async def test_entering_one_pool_from_two_tasks_at_once_is_refused() -> None:
    server = FakeSMTPServer(Script())
    errors: list[BaseException] = []
    async with server.running():
        pool = SMTPPool(config(server))

        async def use() -> None:
            try:
                async with pool:
                    await anyio.sleep(0.05)
            except RuntimeError as exc:
                errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(use)
                group.start_soon(use)
    assert len(errors) == 1, errors
    assert "entered only once" in str(errors[0])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
async def test_a_check_cancelled_during_its_noop_leaves_nothing_open() -> None:
    server = FakeSMTPServer(STALL_THIRD_REPLY)
    async with server.running():
        pool = SMTPPool(config(server))
        before = open_descriptors()
        with anyio.move_on_after(0.5) as waited:
            await pool.check()
        assert waited.cancelled_caught
        await client_left(server)
        assert server.connections[0].closed_by_client
        assert open_descriptors() == before
        assert not [name for name in task_names() if "watchdog" in name]
