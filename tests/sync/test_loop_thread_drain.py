"""A blocking call on the pool's own loop thread while close() drains must not hang it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.anyio.fakesmtp import STALL, Script

from .servers import fault_server

ROOT = Path(__file__).resolve().parents[2]


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
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with fault_server(Script(data_end=STALL)) as server:
        done = subprocess.run(
            [sys.executable, "-c", script, str(server.port)],
            env=env,
            capture_output=True,
            timeout=90,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "OK" in out
    assert "returned" in out or "RuntimeError" in out, out
