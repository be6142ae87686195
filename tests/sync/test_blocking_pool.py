"""`BlockingSMTPPool` from plain threads, on both event loop backends."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import anyio
from pooledmail_anyio import (
    BlockingSMTPPool,
    ConfigError,
    EnvelopeError,
    FailureKind,
    Host,
    InvalidArgument,
    PoolConfig,
    SendFailed,
    SMTPPool,
    Stage,
)
from pooledmail_anyio._ports import free_port
from tests.anyio.fakesmtp import DISCONNECT, STALL, Script

from ..polling import eventually
from .servers import Recorder, fault_server, smtpd

ROOT = Path(__file__).resolve().parents[2]


def message(subject: str = "hello", to: str = "bob@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hello.\n")
    return msg


def config(port: int, **options: Any) -> PoolConfig:
    return PoolConfig([Host("127.0.0.1", port, tls="none")], **options)


def run_threads(count: int, target: Any) -> list[BaseException]:
    """Run `target(i)` in `count` threads; return what they raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a sender never returned"
    return errors


def test_threads_share_one_pool_and_each_message_is_stored_once(backend: str) -> None:
    with smtpd() as (port, recorder):
        pool = BlockingSMTPPool(
            config(port, max_size=4, max_messages_per_connection=None), backend=backend
        )
        results: dict[str, tuple[str, ...]] = {}

        def sender(i: int) -> None:
            for n in range(8):
                subject = f"thread {i} message {n}"
                results[subject] = pool.send(message(subject)).accepted

        errors = run_threads(32, sender)
        stats = pool.statistics()
        pool.close()
        assert errors == []
        subjects = [
            line.split(b": ", 1)[1].decode()
            for d in recorder.deliveries
            for line in d.content.split(b"\r\n")
            if line.startswith(b"Subject: ")
        ]
        assert sorted(subjects) == sorted(results)
        assert len(subjects) == 32 * 8
        assert set(results.values()) == {("bob@example.com",)}
        assert recorder.sessions <= 4
        assert stats.created_total == recorder.sessions
        assert eventually(lambda: recorder.quits == recorder.sessions)


def test_check_reports_each_host_from_a_plain_thread(backend: str) -> None:
    from pooledmail_anyio._ports import free_port

    dead = free_port()
    with smtpd() as (port, recorder):
        hosts = [Host("127.0.0.1", port, tls="none"), Host("127.0.0.1", dead, tls="none")]
        with BlockingSMTPPool(PoolConfig(hosts), backend=backend) as pool:
            report = pool.check()
    assert [found.ok for found in report.hosts] == [True, False]
    assert report.hosts[1].kind is FailureKind.CONNECT_FAILED
    assert recorder.deliveries == []
    assert eventually(lambda: recorder.quits == 1), recorder.quits


def test_a_refused_recipient_arrives_as_send_failed(backend: str) -> None:
    with fault_server(Script(rcpt="550 5.1.1 no such user")) as server:
        with (
            BlockingSMTPPool(config(server.port), backend=backend) as pool,
            pytest.raises(SendFailed) as caught,
        ):
            pool.send(message())
        failure = caught.value
        assert type(failure) is SendFailed
        assert failure.kind is FailureKind.PERMANENT
        assert failure.stage is Stage.RCPT
        assert failure.reply is not None
        assert failure.reply.code == 550
        assert failure.definitely_not_accepted
        assert server.messages == []
        assert pickle.loads(pickle.dumps(failure)).kind is FailureKind.PERMANENT


def test_a_disconnect_after_the_terminator_is_unknown_and_the_server_has_it(
    backend: str,
) -> None:
    with fault_server(Script(data_end=DISCONNECT)) as server:
        with (
            BlockingSMTPPool(config(server.port), backend=backend) as pool,
            pytest.raises(SendFailed) as caught,
        ):
            pool.send(message())
        assert caught.value.kind is FailureKind.UNKNOWN_AFTER_DATA
        assert not caught.value.definitely_not_accepted
        # The server read the whole message: "maybe delivered" was the truth.
        assert len(server.messages) == 1


def test_retry_unknown_is_passed_to_the_pool(backend: str) -> None:
    # The first connection stores the message and drops instead of answering; the next accepts.
    def script_for(n: int) -> Script:
        return Script(data_end=DISCONNECT) if n == 0 else Script()

    with fault_server(script_for) as server:
        with BlockingSMTPPool(config(server.port, retry_base_delay=0), backend=backend) as pool:
            result = pool.send(message(), retry_unknown=True)
            raw = pool.send_raw(
                b"Subject: raw\r\n\r\nx\r\n",
                sender="a@example.com",
                recipients=["b@example.com"],
                retry_unknown=True,
            )
        # Sent twice, as the caller allowed: the server has both copies.
        assert len(server.messages) == 3
    assert result.attempts == 2
    assert raw.attempts == 1


def test_dsn_parameters_are_passed_to_the_pool(backend: str) -> None:
    script = Script(extensions=("PIPELINING", "8BITMIME", "DSN"))
    with fault_server(script) as server:
        with BlockingSMTPPool(config(server.port), backend=backend) as pool:
            result = pool.send(message(), notify=["FAILURE", "DELAY"], ret="HDRS", envid="e-1")
            pool.send_raw(
                b"Subject: raw\r\n\r\nx\r\n",
                sender="a@example.com",
                recipients="b@example.com",
                notify="NEVER",
                orcpt=True,
            )
        commands = server.connections[0].commands
    assert result.message_id is not None
    assert any(
        c.startswith("MAIL FROM:") and "RET=HDRS" in c and "ENVID=e-1" in c for c in commands
    )
    assert any(c.startswith("RCPT TO:") and "NOTIFY=FAILURE,DELAY" in c for c in commands)
    assert any(c.startswith("RCPT TO:") and "NOTIFY=NEVER" in c and "ORCPT=" in c for c in commands)
    assert len(server.messages) == 2


def test_caller_mistakes_arrive_as_themselves_before_any_connection(backend: str) -> None:
    with smtpd() as (port, recorder):
        with BlockingSMTPPool(config(port), backend=backend) as pool:
            nobody = message()
            del nobody["To"]
            with pytest.raises(EnvelopeError):
                pool.send(nobody)
            with pytest.raises(TypeError):
                pool.send_raw("not bytes", sender="a@example.com", recipients=["b@example.com"])  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument):
                pool.send_raw(b"x", sender="a@example.com", recipients=["b@example.com\r\nX"])
            assert pool.statistics().created_total == 0
        assert recorder.sessions == 0


def test_a_stalled_server_is_bounded_by_the_pools_timeouts(backend: str) -> None:
    with fault_server(Script(data_end=STALL)) as server:
        # The final reply never comes and command_timeout ends the wait for it. It bounds every
        # command before it too: 1 s, not less, so that a stalled test process does not expire it
        # before the terminator went out (the send would then fail as something else).
        pool = BlockingSMTPPool(
            config(server.port, command_timeout=1.0, send_timeout=2.0), backend=backend
        )
        outcome: list[BaseException] = run_threads(1, lambda _i: pool.send(message()))
        pool.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], SendFailed)
    assert outcome[0].kind is FailureKind.UNKNOWN_AFTER_DATA


class GatedRecorder(Recorder):
    """Holds each final reply until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self.gate = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.arrived.set()
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
        return await super().handle_DATA(server, session, envelope)


def test_close_drains_a_send_in_flight_and_refuses_new_ones(backend: str) -> None:
    from aiosmtpd.controller import Controller

    from pooledmail_anyio._ports import free_port

    recorder = GatedRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        pool = BlockingSMTPPool(config(controller.port), backend=backend)
        in_flight: list[Any] = []
        sender = threading.Thread(target=lambda: in_flight.append(pool.send(message())))
        sender.start()
        assert recorder.arrived.wait(30)
        closer = threading.Thread(target=pool.close)
        closer.start()
        while not pool.closed:
            threading.Event().wait(0.01)
        with pytest.raises(SendFailed) as refused:
            pool.send(message("too late"))
        assert refused.value.kind is FailureKind.POOL_CLOSED
        # While the drain waits for the send, a snapshot is still taken on the pool's loop (the
        # only thread that changes the pool), never read from this thread under its feet.
        read_on: list[int] = []
        take = pool._draining.pool.statistics  # type: ignore[union-attr]

        def snapshot() -> Any:
            read_on.append(threading.get_ident())
            return take()

        pool._draining.pool.statistics = snapshot  # type: ignore[union-attr, method-assign]
        during = pool.statistics()
        assert during.leased == 1
        assert read_on
        assert threading.get_ident() not in read_on
        recorder.gate.set()
        sender.join(30)
        closer.join(30)
        assert not sender.is_alive()
        assert not closer.is_alive()
        assert eventually(lambda: recorder.quits == 1)
    finally:
        recorder.gate.set()
        controller.stop()
    assert in_flight[0].accepted == ("bob@example.com",)
    assert len(recorder.deliveries) == 1


def test_a_send_on_a_closed_pool_fails_as_on_the_async_pool(backend: str) -> None:
    # sync.md: what the async pool raises is what the thread gets. No attempt was made.
    async def async_failure() -> SendFailed:
        async with SMTPPool(config(free_port())) as pool:
            pass
        with pytest.raises(SendFailed) as caught:
            await pool.send(message())
        return caught.value

    expected = anyio.run(async_failure, backend=backend)
    assert expected.attempts == 0
    never_started = BlockingSMTPPool(config(free_port()), backend=backend)
    started = BlockingSMTPPool(config(free_port()), backend=backend)
    started.start()
    for pool in (never_started, started):
        pool.close()
        with pytest.raises(SendFailed) as caught:
            pool.send(message())
        failure = caught.value
        assert (failure.kind, failure.stage, failure.attempts, failure.host) == (
            expected.kind,
            expected.stage,
            expected.attempts,
            expected.host,
        )
        assert str(failure) == str(expected)


def test_sends_refused_after_close_are_counted_as_on_the_async_pool(backend: str) -> None:
    # The async pool counts a send on a closed pool in send_statistics().failed (POOL_CLOSED);
    # so does the blocking pool, whose own layer refuses it once closed.
    async def async_counts() -> dict[str, int]:
        async with SMTPPool(config(free_port())) as pool:
            pass
        with pytest.raises(SendFailed):
            await pool.send(message())
        return dict(pool.send_statistics().failed)

    assert anyio.run(async_counts, backend=backend) == {"pool_closed": 1}
    never_started = BlockingSMTPPool(config(free_port()), backend=backend)
    started = BlockingSMTPPool(config(free_port()), backend=backend)
    started.start()
    for pool in (never_started, started):
        pool.close()
        with pytest.raises(SendFailed):
            pool.send(message())
        with pytest.raises(SendFailed):
            pool.send_raw(b"Subject: x\r\n\r\nx\r\n", sender="a@example.com", recipients="b@x")
        # A check is no send: refused (its loop is gone, docs/guide/sync.md), not counted.
        with pytest.raises(SendFailed) as refused_check:
            pool.check()
        assert refused_check.value.kind is FailureKind.POOL_CLOSED
        stats = pool.send_statistics()
        assert dict(stats.failed) == {"pool_closed": 2}
        assert (stats.accepted, stats.retries) == (0, 0)


def test_close_quits_and_the_pool_stays_closed(backend: str) -> None:
    with smtpd() as (port, recorder):
        pool = BlockingSMTPPool(config(port), backend=backend)
        pool.send(message())
        pool.close()
        pool.close()
        assert eventually(lambda: recorder.quits == 1)
        with pytest.raises(SendFailed) as caught:
            pool.send(message())
        assert caught.value.kind is FailureKind.POOL_CLOSED
        with pytest.raises(RuntimeError):
            pool.start()
        assert pool.statistics().live == 0
        assert len(recorder.deliveries) == 1


def test_the_pool_starts_on_first_use_only(backend: str) -> None:
    before = threading.active_count()
    with smtpd() as (port, _recorder):
        started_server = threading.active_count()
        pool = BlockingSMTPPool(config(port), backend=backend)
        assert threading.active_count() == started_server
        assert pool.statistics().created_total == 0
        assert threading.active_count() == started_server
        pool.send(message())
        assert threading.active_count() == started_server + 1
        pool.close()
        assert threading.active_count() == started_server
        # A pool closed before it started never starts.
        BlockingSMTPPool(config(port), backend=backend).close()
        assert threading.active_count() == started_server
    assert threading.active_count() == before


def test_an_exception_in_the_with_block_leaves_as_itself(backend: str) -> None:
    def body(pool: BlockingSMTPPool) -> None:
        pool.send(message())
        raise ValueError("mine")

    with smtpd() as (port, recorder):
        pool = BlockingSMTPPool(config(port), backend=backend)
        with pytest.raises(ValueError, match="mine"), pool:
            body(pool)
        assert pool.closed
        assert eventually(lambda: recorder.quits == 1)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"backend": "curio"}, "backend"),
        ({"ssl_context": "verify please"}, "ssl_context"),
        ({"random": object()}, "random"),
        ({"limits": {"max_line_length": 100}}, "limits"),
    ],
)
def test_a_wrong_option_fails_at_construction_with_its_name(
    options: dict[str, Any], option: str
) -> None:
    before = threading.active_count()
    with pytest.raises(ConfigError) as caught:
        BlockingSMTPPool(config(25), **options)
    assert caught.value.option == option
    assert threading.active_count() == before


def test_config_must_be_a_pool_config() -> None:
    with pytest.raises(TypeError, match="config"):
        BlockingSMTPPool({"hosts": []})  # type: ignore[arg-type]


def test_shared_gives_one_pool_per_configuration(backend: str) -> None:
    first = BlockingSMTPPool.shared(config(2525), backend=backend)
    assert BlockingSMTPPool.shared(config(2525), backend=backend) is first
    assert BlockingSMTPPool.shared(config(2526), backend=backend) is not first
    other = "trio" if backend == "asyncio" else "asyncio"
    assert BlockingSMTPPool.shared(config(2525), backend=other) is not first
    first.close()
    replacement = BlockingSMTPPool.shared(config(2525), backend=backend)
    assert replacement is not first
    assert not replacement.closed
    replacement.close()


def test_open_pools_are_closed_at_interpreter_exit(backend: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from email.message import EmailMessage
        from pooledmail_anyio import BlockingSMTPPool, Host, PoolConfig

        pool = BlockingSMTPPool(
            PoolConfig([Host("127.0.0.1", int(sys.argv[1]), tls="none")]), backend={backend!r}
        )
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.com", "exit"
        msg.set_content("bye")
        pool.send(msg)
        # No close(): the interpreter's exit closes the pool.
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with smtpd() as (port, recorder):
        done = subprocess.run(
            [sys.executable, "-c", script, str(port)],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert len(recorder.deliveries) == 1
        assert eventually(lambda: recorder.quits == 1)


class Interrupted(BaseException):
    """What the test's SIGINT handler raises in the main thread, as KeyboardInterrupt would."""


def test_an_interrupted_caller_cancels_its_send(backend: str) -> None:
    reached_rcpt = threading.Event()

    def rcpt(line: str) -> str:
        reached_rcpt.set()
        return STALL

    def interrupt(_signal: int, _frame: object) -> None:
        raise Interrupted

    def press_ctrl_c() -> None:
        if reached_rcpt.wait(30):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with fault_server(Script(rcpt=rcpt)) as server:
            # Long timeouts: only the cancellation can end this send soon.
            pool = BlockingSMTPPool(
                config(server.port, command_timeout=120, send_timeout=240), backend=backend
            )
            presser = threading.Thread(target=press_ctrl_c)
            presser.start()
            with pytest.raises(Interrupted):
                pool.send(message())
            presser.join()
            # The send was cancelled on the loop: its connection is given back (and dropped,
            # as an exchange cut in the middle leaves the session out of sync).
            assert eventually(lambda: pool.statistics().live == 0)
            stats = pool.statistics()
            pool.close()
        assert stats.closed_total.get("broken", 0) == 1
        assert server.messages == []
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_send_its_caller_gave_up_on_before_it_began_writes_nothing(backend: str) -> None:
    # Found by review: a call cancelled by the waiting thread (as an interrupt does) while the
    # loop was busy still ran when its turn came, and a warm pool wrote the whole message
    # (CHUNKING) before the cancellation arrived at its first read.
    with fault_server(Script(extensions=("PIPELINING", "CHUNKING", "8BITMIME"))) as server:
        pool = BlockingSMTPPool(config(server.port), backend=backend)
        pool.send(message("warm"))
        running = pool._ensure_running()
        loop_held = threading.Event()
        loop_free = threading.Event()

        async def hold_the_loop() -> None:
            loop_held.set()
            loop_free.wait(30)  # blocks the loop thread: the next call queues behind it

        holder = running.calls.submit(hold_the_loop)
        # Only once the loop is held is the next call sure to begin after the cancellation (trio
        # may run two tasks spawned in one batch in either order).
        assert loop_held.wait(30)
        future = running.calls.submit(lambda: pool._pool.send(message("given up")))
        future.cancel()  # what `_call` does when the waiting thread is interrupted
        loop_free.set()
        holder.result(30)
        pool.send(message("after"))
        send_stats = pool.send_statistics()
        stats = pool.statistics()
        pool.close()
    subjects = [m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in server.messages]
    assert subjects == [b"warm", b"after"]
    assert send_stats.cancelled_after_terminator == 0
    assert stats.created_total == 1


def test_observing_options_reach_the_pool_and_are_checked_at_construction() -> None:
    pool = BlockingSMTPPool(config(25), name="billing", metrics=False, log_recipients=True)
    assert pool._pool._observer.name == "billing"
    with pytest.raises(ConfigError) as caught:
        BlockingSMTPPool(config(25), name="")
    assert caught.value.option == "name"
    pool.close()


def test_send_and_budget_statistics_are_read_as_the_async_pool_gives_them(backend: str) -> None:
    # The counts a blocking user needs to reconcile (an UNKNOWN_AFTER_DATA here) are there too.
    with fault_server(Script(data_end=lambda n: DISCONNECT if n == 0 else "250 ok")) as server:
        pool = BlockingSMTPPool(config(server.port, max_retries=0), backend=backend)
        before = pool.send_statistics()
        with pytest.raises(SendFailed) as failed:
            pool.send(message("maybe"))
        pool.send(message("surely"))
        during = pool.send_statistics()
        budgets = pool.budget_statistics()
        pool.close()
        after = pool.send_statistics()
    assert failed.value.kind is FailureKind.UNKNOWN_AFTER_DATA
    assert (before.accepted, dict(before.failed)) == (0, {})
    assert during.accepted == 1
    assert dict(during.failed) == {FailureKind.UNKNOWN_AFTER_DATA.value: 1}
    assert after == during
    assert budgets == {}
