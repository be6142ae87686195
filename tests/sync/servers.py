"""Test servers for blocking callers: aiosmtpd with a full record, and the fault server in a thread.

Both keep their own record of what they stored, so tests judge outcomes by the server, never by
the client's return value alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from anyio.from_thread import start_blocking_portal

from pooledmail_anyio._ports import free_port
from tests.anyio.fakesmtp import FakeSMTPServer, Script


@dataclass(frozen=True)
class Delivery:
    """One message the server stored (it answered 250 to its terminator)."""

    session: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


class Recorder:
    """An aiosmtpd handler recording sessions (by EHLO/HELO), deliveries and QUITs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.quits = 0
        self._sessions: list[Any] = []  # kept alive: session ids must stay unique

    def _session_number(self, session: Any) -> int:
        with self.lock:
            for number, known in enumerate(self._sessions):
                if known is session:
                    return number
            self._sessions.append(session)
            return len(self._sessions) - 1

    @property
    def sessions(self) -> int:
        with self.lock:
            return len(self._sessions)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self._session_number(session)
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        delivery = Delivery(
            self._session_number(session),
            envelope.mail_from,
            tuple(envelope.rcpt_tos),
            bytes(envelope.original_content),
        )
        with self.lock:
            self.deliveries.append(delivery)
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.quits += 1
        return "221 2.0.0 Bye"


@contextlib.contextmanager
def smtpd(**options: Any) -> Iterator[tuple[int, Recorder]]:
    """aiosmtpd on 127.0.0.1 in its own thread: yields (port, recorder)."""
    from aiosmtpd.controller import Controller

    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield controller.port, recorder
    finally:
        controller.stop()


@contextlib.contextmanager
def fault_server(script_for: Callable[[int], Script] | Script) -> Iterator[FakeSMTPServer]:
    """The scriptable fault server (tests/anyio/fakesmtp.py) on its own loop in a thread."""
    server = FakeSMTPServer(script_for)
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(server.running()) as running,
    ):
        yield running
