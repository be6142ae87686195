"""An embedded SMTP sink on 127.0.0.1 for the demo: aiosmtpd in its own thread, counting mail."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

__all__ = ["LoopbackSink", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _CountingHandler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages = 0
        self.recipients = 0
        self.bytes = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages += 1
            self.recipients += len(envelope.rcpt_tos)
            self.bytes += len(envelope.content or b"")
        return "250 2.0.0 OK: queued"


class LoopbackSink:
    """`with LoopbackSink() as sink:` runs an aiosmtpd server on 127.0.0.1:`sink.port`."""

    def __init__(self) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "the demo's embedded server needs aiosmtpd: pip install 'pooledmail[demo]'"
            ) from exc
        self.handler = _CountingHandler()
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> LoopbackSink:
        self._controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._controller.stop()
