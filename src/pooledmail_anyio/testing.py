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

from ._ports import free_port

__all__ = ["LocalSMTPServer", "ReceivedMessage"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the server accepted: its envelope and its bytes as they arrived."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


class _Keeper:
    def __init__(self, keep: bool) -> None:
        self.lock = threading.Lock()
        self.keep = keep
        self.messages: list[ReceivedMessage] = []
        self.received = 0
        self.recipients = 0
        self.bytes = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = ReceivedMessage(
            envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.original_content)
        )
        with self.lock:
            self.received += 1
            self.recipients += len(message.recipients)
            self.bytes += len(message.data)
            if self.keep:
                self.messages.append(message)
        return "250 2.0.0 OK: queued"


class LocalSMTPServer:
    """`with LocalSMTPServer() as server:` serves SMTP on 127.0.0.1:`server.port`.

    `keep_messages=False` only counts what arrives (`received`, `recipients`,
    `received_bytes`), for long runs such as `pooledmail demo`.
    """

    def __init__(self, *, keep_messages: bool = True) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "LocalSMTPServer needs aiosmtpd: pip install 'pooledmail[demo]'"
            ) from exc
        self._keeper = _Keeper(keep_messages)
        self.port = free_port()
        self._controller = Controller(self._keeper, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The messages accepted so far, in order (empty with `keep_messages=False`)."""
        with self._keeper.lock:
            return list(self._keeper.messages)

    @property
    def received(self) -> int:
        """How many messages the server accepted so far."""
        return self._keeper.received

    @property
    def recipients(self) -> int:
        """How many recipients those messages had, in all."""
        return self._keeper.recipients

    @property
    def received_bytes(self) -> int:
        """How many bytes of message data arrived, in all."""
        return self._keeper.bytes

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
