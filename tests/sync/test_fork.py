"""A real fork: the child gets its own pool, never the parent's thread or sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import anyio
from pooledmail_anyio import BlockingSMTPPool, Host, PoolConfig

from ..polling import eventually
from .servers import smtpd

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or not Path("/proc/self/fd").is_dir(),
    reason="needs fork() and /proc/self/fd",
)


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.com"
    msg["Subject"] = subject
    msg.set_content("Hello.\n")
    return msg


def connected_to(fd: int, port: int) -> bool:
    """Whether descriptor `fd` is a socket whose peer is 127.0.0.1:`port`."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        peer = probe.getpeername()
    except OSError:
        return False
    finally:
        probe.close()
    return isinstance(peer, tuple) and peer[1] == port


def sockets_to(port: int) -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd") if connected_to(int(name), port)}


def in_child(pool: BlockingSMTPPool, config: PoolConfig, backend: str, port: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "threads": threading.active_count(),
        "parent_sockets": len(sockets_to(port)),
        "shared_is_same": BlockingSMTPPool.shared(config, backend=backend) is pool,
        "created_before": pool.statistics().created_total,
    }
    result = pool.send(message("from the child"))
    report["accepted"] = list(result.accepted)
    report["created_after"] = pool.statistics().created_total
    report["own_sockets"] = len(sockets_to(port))
    pool.close()
    return report


def wait_for(pid: int) -> int:
    """The child's exit status; a child that hangs is killed (the test then fails)."""
    for _ in range(6000):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        threading.Event().wait(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def fork_and_report(
    child: Callable[[], dict[str, Any]], after_fork: Callable[[], object] = lambda: None
) -> tuple[int, dict[str, Any]]:
    """Fork; the child runs `child` and sends back what it returns (or its error) as JSON and
    leaves with os._exit. The parent runs `after_fork`, then returns the child's exit status
    (a child that hangs is killed) and its report."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which leaves with os._exit
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(child()).encode())
            code = 0
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    after_fork()
    exit_code = wait_for(pid)
    with os.fdopen(read_end, "rb") as pipe:
        return exit_code, json.loads(pipe.read() or b"{}")


def send_from_the_child(pool: BlockingSMTPPool) -> Callable[[], dict[str, Any]]:
    """For `fork_and_report`: one send on `pool` in the child, then close it."""

    def send() -> dict[str, Any]:  # pragma: no cover - runs in the child
        result = pool.send(message("from the child"))
        pool.close()
        return {"accepted": list(result.accepted)}

    return send


def test_a_forked_child_gets_its_own_pool(backend: str) -> None:
    with smtpd() as (port, recorder):
        config = PoolConfig([Host("127.0.0.1", port, tls="none")], max_size=2)
        pool = BlockingSMTPPool.shared(config, backend=backend)
        pool.send(message("from the parent, before"))
        parent_sockets = sockets_to(port)
        assert len(parent_sockets) == 1
        exit_code, report = fork_and_report(lambda: in_child(pool, config, backend, port))
        assert exit_code == 0, report
        # In the child: only the forking thread, none of the parent's sockets, a fresh pool in
        # the same shared object, which opened its own connection and closed it.
        assert report == {
            "threads": 1,
            "parent_sockets": 0,
            "shared_is_same": True,
            "created_before": 0,
            "accepted": ["bob@example.com"],
            "created_after": 1,
            "own_sockets": 1,
        }
        assert eventually(lambda: recorder.quits == 1)
        # The parent's connection was neither used nor closed by the child: it carries on.
        pool.send(message("from the parent, after"))
        assert pool.statistics().created_total == 1
        assert sockets_to(port) == parent_sockets
        pool.close()
        assert eventually(lambda: recorder.quits == 2)
        by_session: dict[int, list[bytes]] = {}
        for delivery in recorder.deliveries:
            by_session.setdefault(delivery.session, []).append(delivery.content)
        assert sorted(len(messages) for messages in by_session.values()) == [1, 2]


def test_a_fork_while_another_thread_starts_the_pool_leaves_the_child_a_fresh_pool(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread is inside the first start, past entering the SMTPPool, when this one forks:
    # the child must not inherit that half-started pool (it could never be entered again).
    from pooledmail_anyio import _blocking

    parent = os.getpid()
    entered, forked = threading.Event(), threading.Event()

    async def held_at_start(
        pool: Any, backend: str, *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        # `_hold_open`, held (in the parent only) between entering the pool and reporting it
        # started, until the other thread has forked.
        async with anyio.create_task_group() as task_group:
            calls = _blocking._Calls(task_group, backend)
            try:
                async with pool:
                    if os.getpid() == parent:
                        entered.set()
                        await anyio.to_thread.run_sync(forked.wait)
                    task_status.started(calls)
                    await calls.stop.wait()
            finally:
                calls.refuse_new()

    monkeypatch.setattr(_blocking, "_hold_open", held_at_start)
    with smtpd() as (port, recorder):
        config = PoolConfig([Host("127.0.0.1", port, tls="none")], max_size=2)
        pool = BlockingSMTPPool(config, backend=backend)
        starter = threading.Thread(target=pool.start)
        starter.start()
        assert entered.wait(10)
        exit_code, report = fork_and_report(send_from_the_child(pool), forked.set)
        starter.join(10)
        pool.send(message("from the parent"))
        pool.close()
        assert exit_code == 0, report
        assert report == {"accepted": ["bob@example.com"]}
        assert eventually(lambda: len(recorder.deliveries) == 2)


def connection_gauges(reader: Any) -> dict[str, float]:
    """The pool's observed connection counts by state, and its maximum, from `reader`."""
    found: dict[str, float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if metric.name == "pooledmail.connection.count":
                        state = str(point.attributes["pooledmail.connection.state"])
                        found[state] = found.get(state, 0) + point.value
                    elif metric.name == "pooledmail.connection.max":
                        found["max"] = found.get("max", 0) + point.value
    return found


def test_a_forked_child_reports_the_metrics_of_its_own_pool_only(backend: str) -> None:
    # Found by review: the child's copy of the parent's pool (kept, never run) still reported
    # through the shared instruments, so every forked worker added the parent's connections to
    # its own (1 idle connection before it had any, 2 after it opened one, max_size twice).
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with smtpd() as (port, recorder):
        config = PoolConfig([Host("127.0.0.1", port, tls="none")], max_size=2)
        pool = BlockingSMTPPool(config, backend=backend, meter_provider=provider)
        pool.send(message("from the parent"))
        assert connection_gauges(reader)["idle"] == 1

        def in_the_child() -> dict[str, Any]:  # pragma: no cover - runs in the child
            report: dict[str, Any] = {"before": connection_gauges(reader)}
            pool.send(message("from the child"))
            report["after"] = connection_gauges(reader)
            pool.close()
            return report

        exit_code, report = fork_and_report(in_the_child)
        parent_after = connection_gauges(reader)
        pool.close()
        provider.shutdown()
    assert exit_code == 0, report
    # Before its first use the child's pool has not started: nothing to report.
    assert report["before"] == {}
    assert report["after"]["idle"] == 1
    assert report["after"]["max"] == 2
    assert parent_after["idle"] == 1
    assert parent_after["max"] == 2
    assert len(recorder.deliveries) == 2


def test_a_fork_while_another_thread_holds_a_metrics_lock_does_not_hang_the_child(
    backend: str,
) -> None:
    # Found by review: the fork hook makes the child's fresh pools, which registers their
    # metrics under process-wide locks; a lock another thread held at the fork (a pool being
    # made, a metric reader collecting) is never released in the child, which hung in the hook.
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider

    from pooledmail_anyio import _metrics

    provider = MeterProvider()
    with smtpd() as (port, recorder):
        config = PoolConfig([Host("127.0.0.1", port, tls="none")], max_size=2)
        pool = BlockingSMTPPool(config, backend=backend, meter_provider=provider)
        pool.send(message("from the parent"))
        instruments = _metrics._instruments(provider)
        held, forked = threading.Event(), threading.Event()

        def hold_the_locks() -> None:
            with _metrics._registry_lock, instruments.lock:
                held.set()
                forked.wait(30)

        holder = threading.Thread(target=hold_the_locks)
        holder.start()
        assert held.wait(30)

        def release_the_holder() -> None:
            forked.set()
            holder.join(30)

        exit_code, report = fork_and_report(send_from_the_child(pool), release_the_holder)
        pool.close()
        provider.shutdown()
    assert exit_code == 0, report
    assert report == {"accepted": ["bob@example.com"]}
    assert len(recorder.deliveries) == 2
