"""Verdicts that must hold across attempts and interruptions: a retry after an attempt whose
outcome is unknown (`retry_unknown=True`), a cancellation during that retry, and a cancellation
that reaches the sender just as the kernel took the last byte of its terminator (asyncio).
Judged against the fake server's record of what it stored.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

import anyio
from pooledmail_anyio import Host, PoolConfig, SendFailed, SMTPPool, _stream

from ..polling import until
from .fakesmtp import STALL, FakeSMTPServer, Fault, Script
from .verdicts import settled

pytestmark = pytest.mark.anyio


async def send_once(pool: SMTPPool) -> None:
    """One small message, retried even after an unknown outcome (retry_unknown=True)."""
    await pool.send_raw(
        b"Subject: once\r\n\r\nhello\r\n",
        sender="a@example.com",
        recipients=["b@example.com"],
        retry_unknown=True,
    )


def config(server: FakeSMTPServer, **options: Any) -> PoolConfig:
    options = {"max_retries": 0, "command_timeout": 5.0, **options}
    return PoolConfig([Host("127.0.0.1", server.port, tls="none")], **options)


# asyncio only: trio's stream returns from send() right after the sock.send() that took the last
# byte, with no checkpoint in between, so it has no such window.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancel_landing_as_the_paused_terminator_write_drains_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The data and its "." line (under 64 KiB: one write) do not fit the kernel at once, so the
    # write pauses. The transport then hands the rest to the kernel and resumes the writer; in the
    # same loop iteration, the caller's asyncio.timeout fires (task.cancel()). The whole message
    # reached the server, which stores it; the pool must count the cancellation.
    server = FakeSMTPServer(Script(), receive_buffer=4096)
    sender: list[asyncio.Task[Any]] = []
    paused: list[bool] = []
    original_pause = _stream._Protocol.pause_writing
    original_resume = _stream._Protocol.resume_writing

    def pause_writing(self: Any) -> None:
        paused.append(True)
        original_pause(self)

    def resume_writing(self: Any) -> None:
        original_resume(self)  # the waiter is done: every byte was handed to the kernel
        if sender and not sender[0].done():
            sender[0].cancel()  # what a timer due in this same iteration does

    original_made = _stream._Protocol.connection_made

    def connection_made(self: Any, transport: Any) -> None:
        # A small send buffer: 62 KiB cannot all go to the kernel at once.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        original_made(self, transport)

    monkeypatch.setattr(_stream._Protocol, "connection_made", connection_made)
    monkeypatch.setattr(_stream._Protocol, "pause_writing", pause_writing)
    monkeypatch.setattr(_stream._Protocol, "resume_writing", resume_writing)
    data = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * 800  # ~62 KiB
    async with server.running(), SMTPPool(config(server)) as pool:
        task = asyncio.ensure_future(
            pool.send_raw(data, sender="a@example.com", recipients=["b@example.com"])
        )
        sender.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        # The server's record is final once the connection ended (the pool aborted it).
        assert await settled(server)
        stats = pool.send_statistics()
    assert paused  # the terminator's write really waited for the kernel
    assert len(server.messages) == 1  # stored: the caller saw only its cancellation
    assert stats.cancelled_after_terminator == 1


# -- retry_unknown=True: a later attempt's verdict forgets that an earlier one may have delivered


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("second", ["550 5.7.1 sender refused", "451 4.3.0 try again later"])
async def test_a_retry_after_unknown_never_ends_definitely_not_accepted(second: str) -> None:
    # Attempt 1: the server stores the message and drops the connection before its final reply
    # (UNKNOWN_AFTER_DATA, retried because the caller opted in). Attempt 2 is refused at MAIL.
    # The message is stored once, so "definitely not accepted" would be false.
    def script(n: int) -> Script:
        if n == 0:
            return Script(fault=Fault("disconnect", "data_end"))
        return Script(mail=second)

    server = FakeSMTPServer(script)
    options = {"max_retries": 1, "retry_base_delay": 0.01}
    async with server.running(), SMTPPool(config(server, **options)) as pool:
        with pytest.raises(SendFailed) as failed:
            await send_once(pool)
    assert len(server.messages) == 1  # attempt 1 was stored
    assert failed.value.attempts == 2
    assert not failed.value.definitely_not_accepted


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_send_cancelled_while_retrying_an_unknown_attempt_is_counted() -> None:
    # Attempt 1 stored and unanswered; the caller cancels during the retry delay. The caller sees
    # only its cancellation, although the message may have been (here: was) delivered.
    server = FakeSMTPServer(lambda n: Script(fault=Fault("disconnect", "data_end")))
    options = {"max_retries": 3, "retry_base_delay": 30.0, "send_timeout": 600.0}
    async with server.running(), SMTPPool(config(server, **options)) as pool:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send_once, pool)
            # The retry is counted just before its delay begins, with no await in between.
            await until(lambda: pool.send_statistics().retries == 1, what="the retry delay")
            tg.cancel_scope.cancel()
        stats = pool.send_statistics()
    assert len(server.messages) == 1
    assert stats.retries == 1
    assert stats.cancelled_after_terminator == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_cancel_during_a_retry_on_another_host_names_the_host_that_has_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Attempt 1 on host A: stored, then the connection drops before the final reply. A then
    # refuses new sessions (it cools down) and the retry goes to host B, which never answers
    # MAIL; the caller cancels there. The message may have been delivered by A, never by B: the
    # record and the metric of the cancelled send must name A.
    first = FakeSMTPServer(
        lambda n: (
            Script(fault=Fault("disconnect", "data_end"))
            if n == 0
            else Script(greeting="554 5.3.2 no service here")
        )
    )
    second = FakeSMTPServer(Script(mail=STALL))
    caplog.set_level(logging.WARNING, logger="pooledmail.send")
    async with first.running(), second.running():
        hosts = [
            Host("127.0.0.1", first.port, tls="none"),
            Host("127.0.0.1", second.port, tls="none", priority=1),
        ]
        options = {"max_retries": 3, "retry_base_delay": 0.01, "command_timeout": 60.0}
        async with SMTPPool(PoolConfig(hosts, **options)) as pool:
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_once, pool)
                await until(
                    lambda: any(
                        command.startswith("MAIL")
                        for connection in second.connections
                        for command in connection.commands
                    ),
                    what="the retry waiting for MAIL's reply on host B",
                )
                tg.cancel_scope.cancel()
            stats = pool.send_statistics()
    assert len(first.messages) == 1
    assert second.messages == []
    assert stats.cancelled_after_terminator == 1
    (record,) = [r for r in caplog.records if "may have been delivered" in r.getMessage()]
    assert record.host == hosts[0].key  # type: ignore[attr-defined]
    assert hosts[1].key not in record.getMessage()
