"""A local SMTP server for examples and for your own tests (needs `pooledmail[demo]`: aiosmtpd).

    with LocalSMTPServer() as server:
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")])
        ...
        assert server.messages[0].recipients == ("bob@example.com",)

It runs aiosmtpd on 127.0.0.1 in a thread of its own, so that it serves asyncio and trio callers
alike, and keeps every message it accepted. It offers no TLS and no AUTH: point a pool at it with
`tls="none"`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ._sink import free_port

__all__ = ["LocalSMTPServer", "ReceivedMessage"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the server accepted: its envelope and its bytes as they arrived."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


class _Keeper:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = ReceivedMessage(
            envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.original_content)
        )
        with self.lock:
            self.messages.append(message)
        return "250 2.0.0 OK: queued"


class LocalSMTPServer:
    """`with LocalSMTPServer() as server:` serves SMTP on 127.0.0.1:`server.port`."""

    def __init__(self) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "LocalSMTPServer needs aiosmtpd: pip install 'pooledmail[demo]'"
            ) from exc
        self._keeper = _Keeper()
        self.port = free_port()
        self._controller = Controller(self._keeper, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The messages accepted so far, in order."""
        with self._keeper.lock:
            return list(self._keeper.messages)

    def __enter__(self) -> LocalSMTPServer:
        self._controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._controller.stop()
