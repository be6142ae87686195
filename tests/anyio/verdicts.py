"""Judging a send's outcome against what the fake server stored (shared by the reliability tests).

Every message a test sends carries a unique tag in its first line, so the server's record can be
searched for it. A verdict is true when:

* accepted: the server stored the message;
* definitely not accepted (every `SendFailed` but UNKNOWN_AFTER_DATA): the server did not store it;
* UNKNOWN_AFTER_DATA: the server really received the whole terminator (the "." line, or the
  whole `BDAT ... LAST` chunk), whether it stored the message or not;

and, for every message, the server stored it at most once.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import anyio
from pooledmail_anyio import FailureKind, SendFailed, SendResult

from .fakesmtp import FakeSMTPServer

_TAG = re.compile(rb"^Subject: (m-[^\r\n]+)")


def message(tag: str, size: int = 0) -> bytes:
    """A message whose first and last lines carry `tag` (so that its terminator on the wire is
    its own); at least `size` bytes long."""
    line = b"y" * 70 + b"\r\n"
    body = line * (size // len(line) + 1)
    return b"Subject: m-%s\r\nFrom: a@example.com\r\n\r\n%send of %s\r\n" % (
        tag.encode(),
        body,
        tag.encode(),
    )


def tag_of(data: bytes) -> str | None:
    found = _TAG.match(data)
    return found.group(1).decode()[2:] if found else None


def stored(server: FakeSMTPServer) -> Counter[str]:
    """How many times the server stored each tagged message."""
    return Counter(t for t in map(tag_of, server.messages) if t is not None)


def terminator_wire(data: bytes, *, bdat: bool, chunk_size: int) -> bytes:
    """The bytes that end `data`'s transfer on the wire (what must have reached the server for
    the message to count as handed over): on DATA the dot-stuffed last line and the "." line; on
    BDAT the `BDAT <n> LAST` command and its whole chunk."""
    if bdat:
        last = data[((len(data) - 1) // chunk_size) * chunk_size :]
        return b"BDAT %d LAST\r\n" % len(last) + last
    tail = data[data.rfind(b"\r\n", 0, len(data) - 2) + 2 :]
    if tail.startswith(b"."):
        tail = b"." + tail
    return tail + b".\r\n"


async def settled(server: FakeSMTPServer, seconds: float = 3.0) -> bool:
    """Wait until the server's record of what it received is final: every session has ended or
    stopped reading for good. (Bytes the client handed over before closing may still be on
    their way when its send returns.)"""
    for _ in range(int(seconds / 0.005)):
        if all(c.ended or c.frozen for c in server.connections):
            return True
        await anyio.sleep(0.005)
    return False


def got_terminator(server: FakeSMTPServer, wire: bytes) -> bool:
    return any(wire in connection.received_bytes for connection in server.connections)


@dataclass(frozen=True)
class Sent:
    """One send and how it ended: a `SendResult`, a `SendFailed`, or None (cancelled)."""

    tag: str
    data: bytes
    outcome: SendResult | SendFailed | None


def judge(
    server: FakeSMTPServer,
    sends: list[Sent],
    *,
    bdat: bool,
    chunk_size: int,
    lenient: frozenset[str] = frozenset(),
) -> list[str]:
    """Every way the verdicts in `sends` disagree with the server's record, in words.

    Tags in `lenient` went through a connection whose server lied about which reply answers which
    command (see fakesmtp.DESYNC): for them only "stored at most once" and "UNKNOWN_AFTER_DATA
    only after the terminator reached the server" can hold, and only those are checked.
    """
    record = stored(server)
    wrong = [f"{tag} stored {count} times" for tag, count in record.items() if count > 1]
    for sent in sends:
        outcome, tag = sent.outcome, sent.tag
        if isinstance(outcome, SendFailed) and outcome.kind is FailureKind.UNKNOWN_AFTER_DATA:
            if outcome.definitely_not_accepted:
                wrong.append(f"{tag}: UNKNOWN_AFTER_DATA yet definitely_not_accepted")
            wire = terminator_wire(sent.data, bdat=bdat, chunk_size=chunk_size)
            if not got_terminator(server, wire):
                wrong.append(f"{tag}: UNKNOWN_AFTER_DATA but the terminator never reached it")
            continue
        if tag in lenient:
            continue
        if isinstance(outcome, SendResult) and not record[tag]:
            wrong.append(f"{tag}: reported accepted, not stored")
        if isinstance(outcome, SendFailed):
            if not outcome.definitely_not_accepted:
                wrong.append(f"{tag}: {outcome.kind.name} not definitely_not_accepted")
            elif record[tag]:
                wrong.append(f"{tag}: {outcome.kind.name} (definitely not accepted) but stored")
    return wrong
