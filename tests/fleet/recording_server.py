"""An SMTP server in a thread that records what a fleet of processes does to it.

It records, on its own clock, the number of sessions open at once (the most ever), and for each
message it stored: its Message-ID and when its MAIL command arrived. A message is recorded only
once the server has answered its terminator with 250, so "stored" means what it says. It speaks
just enough ESMTP for pooledmail (EHLO with PIPELINING, MAIL, RCPT, DATA, RSET, NOOP, QUIT),
answers commands in order (pipelined flights included), and can hold each final reply for a while
so that sends overlap.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field

__all__ = ["RecordingServer"]

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


@dataclass
class Stored:
    message_id: str
    mail_at: float


@dataclass
class _Record:
    lock: threading.Lock = field(default_factory=threading.Lock)
    open_sessions: int = 0
    most_sessions: int = 0
    sessions_total: int = 0
    stored: list[Stored] = field(default_factory=list)


class RecordingServer:
    """`with RecordingServer(final_reply_delay=0.02) as server:` on 127.0.0.1:`server.port`."""

    def __init__(self, *, final_reply_delay: float = 0.0) -> None:
        self.final_reply_delay = final_reply_delay
        self.record = _Record()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    # -- what tests read -------------------------------------------------------------------

    @property
    def most_sessions(self) -> int:
        with self.record.lock:
            return self.record.most_sessions

    @property
    def open_sessions(self) -> int:
        with self.record.lock:
            return self.record.open_sessions

    def stored(self) -> list[Stored]:
        with self.record.lock:
            return list(self.record.stored)

    # -- running ---------------------------------------------------------------------------

    def __enter__(self) -> RecordingServer:
        self._thread = threading.Thread(target=self._run, name="recording-smtp", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the recording server did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = self.record
        with record.lock:
            record.open_sessions += 1
            record.sessions_total += 1
            record.most_sessions = max(record.most_sessions, record.open_sessions)
        counted = [True]
        try:
            await self._converse(reader, writer, counted)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._session_ended(counted)
            writer.close()

    def _session_ended(self, counted: list[bool]) -> None:
        if counted[0]:
            counted[0] = False
            with self.record.lock:
                self.record.open_sessions -= 1

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counted: list[bool]
    ) -> None:
        writer.write(b"220 recording.test ESMTP\r\n")
        mail_at = 0.0
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-recording.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                mail_at = time.monotonic()
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                writer.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                body = await reader.readuntil(b"\r\n.\r\n")
                if self.final_reply_delay:
                    await asyncio.sleep(self.final_reply_delay)
                found = _MESSAGE_ID.search(body)
                message_id = found.group(1).decode() if found else ""
                with self.record.lock:
                    self.record.stored.append(Stored(message_id, mail_at))
                writer.write(b"250 2.0.0 stored\r\n")
            elif verb in (b"RSET", b"NOOP"):
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                # The session ends here for the count, before the client can learn it from the
                # 221 and give its lease back.
                self._session_ended(counted)
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.1 not implemented\r\n")
            await writer.drain()
