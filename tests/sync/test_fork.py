"""A real fork: the child gets its own pool, never the parent's thread or sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from pooledmail_anyio import BlockingSMTPPool, Host, PoolConfig

from .servers import eventually, smtpd

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


def test_a_forked_child_gets_its_own_pool(backend: str) -> None:
    with smtpd() as (port, recorder):
        config = PoolConfig([Host("127.0.0.1", port, tls="none")], max_size=2)
        pool = BlockingSMTPPool.shared(config, backend=backend)
        pool.send(message("from the parent, before"))
        parent_sockets = sockets_to(port)
        assert len(parent_sockets) == 1
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which leaves with os._exit
            code = 1
            try:
                os.close(read_end)
                report = in_child(pool, config, backend, port)
                os.write(write_end, json.dumps(report).encode())
                code = 0
            except BaseException as exc:
                os.write(write_end, json.dumps({"error": repr(exc)}).encode())
            finally:
                os._exit(code)
        os.close(write_end)
        exit_code = wait_for(pid)
        with os.fdopen(read_end, "rb") as pipe:
            report = json.loads(pipe.read() or b"{}")
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
