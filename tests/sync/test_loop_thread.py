"""A blocking call made on the pool's own loop thread, at any time and during close()'s drain
too, must not hang the pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.anyio.fakesmtp import DISCONNECT, STALL, Script

from .servers import fault_server

ROOT = Path(__file__).resolve().parents[2]


def in_a_child(script: str, server_script: Script) -> str:
    """Run `script` in a fresh interpreter against a fault server (its port as argv[1]); what
    it printed, once it exited 0. A child, so that a hang is ended by its own watchdog."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with fault_server(server_script) as server:
        done = subprocess.run(
            [sys.executable, "-c", script, str(server.port)],
            env=env,
            capture_output=True,
            timeout=90,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    return out


def test_a_send_from_a_log_handler_on_the_loop_thread_fails_instead_of_hanging(
    backend: str,
) -> None:
    # A logging handler that mails an alert (as Django's AdminEmailHandler does) runs on the
    # thread that logs: for the pool's own records, its loop thread.
    script = textwrap.dedent(
        f"""
        import logging, os, sys, threading
        from email.message import EmailMessage
        from pooledmail_anyio import BlockingSMTPPool, Host, PoolConfig, SendFailed

        pool = BlockingSMTPPool(
            PoolConfig([Host("127.0.0.1", int(sys.argv[1]), tls="none")]), backend={backend!r}
        )

        def msg(subject):
            m = EmailMessage()
            m["From"], m["To"], m["Subject"] = "a@example.com", "b@example.com", subject
            m.set_content("x")
            return m

        inner = []

        class Alert(logging.Handler):
            def emit(self, record):
                if inner:
                    return
                try:
                    pool.send(msg("alert"))
                    inner.append("sent")
                except BaseException as exc:
                    inner.append(type(exc).__name__)
                try:
                    pool.close()
                    inner.append("close:returned")
                except BaseException as exc:
                    inner.append("close:" + type(exc).__name__)

        logging.getLogger("pooledmail").addHandler(Alert(logging.WARNING))
        outer = []

        def main():
            try:
                pool.send(msg("first"))
            except SendFailed as failure:
                outer.append(failure.kind.name)

        worker = threading.Thread(target=main, daemon=True)
        worker.start()
        worker.join(20)
        if worker.is_alive():
            print("HUNG", inner, flush=True)
            os._exit(3)
        print("OK", outer, inner, flush=True)
        pool.close()
        """
    )
    out = in_a_child(script, Script(data_end=DISCONNECT))
    # The outer send gets its own verdict; the call on the loop thread is refused at once.
    assert "UNKNOWN_AFTER_DATA" in out
    assert "'RuntimeError', 'close:RuntimeError'" in out
    # ... and neither call changed the pool: the main thread's close() afterwards works.
    assert "OK" in out


@pytest.mark.parametrize("call", ["statistics", "send_statistics", "close"])
def test_a_call_from_the_loop_thread_during_the_drain_fails_instead_of_hanging(
    backend: str, call: str
) -> None:
    script = textwrap.dedent(
        f"""
        import logging, os, sys, threading
        from email.message import EmailMessage
        from pooledmail_anyio import BlockingSMTPPool, Host, PoolConfig, SendFailed

        pool = BlockingSMTPPool(
            PoolConfig(
                [Host("127.0.0.1", int(sys.argv[1]), tls="none")], command_timeout=2.0
            ),
            backend={backend!r},
        )
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = "a@example.com", "b@example.com", "s"
        m.set_content("x")
        opened = threading.Event()
        inner = []

        class Probe(logging.Handler):
            def emit(self, record):
                if "opened" in record.getMessage():
                    opened.set()
                # The send's failure, logged on the loop thread while close() drains.
                if inner or record.levelno < logging.WARNING or not pool.closed:
                    return
                try:
                    getattr(pool, {call!r})()
                    inner.append("returned")
                except BaseException as exc:
                    inner.append(type(exc).__name__)

        logger = logging.getLogger("pooledmail")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(Probe())

        def send():
            try:
                pool.send(m)
            except SendFailed:
                pass

        threading.Thread(target=send, daemon=True).start()
        opened.wait(20)
        closer = threading.Thread(target=pool.close, daemon=True)
        closer.start()
        closer.join(25)
        if closer.is_alive():
            print("HUNG", inner, flush=True)
            os._exit(3)
        print("OK", inner, flush=True)
        """
    )
    out = in_a_child(script, Script(data_end=STALL))
    # Statistics are read directly on the loop thread; close() from there is refused.
    expected = "RuntimeError" if call == "close" else "returned"
    assert f"OK ['{expected}']" in out, out
