"""Incremental parser of SMTP replies (RFC 5321 §4.2), bounded by `Limits`.

Every complete line in the buffer is parsed in one pass (`bytes.split`), never byte by byte in
Python; a reply in progress keeps its parsed lines between calls, so a reply fed byte by byte is
never parsed twice.

Decisions (see docs/internals/protocol.md):

* A line ends at LF; a CR before it is dropped. RFC 5321 asks for CRLF, but a reply is data the
  client only reads, and tolerating a bare LF there cannot smuggle anything.
* Text is decoded as UTF-8 with replacement (RFC 6531 servers may send UTF-8 text).
* An enhanced status code (RFC 3463) is recognised on the first line, whether or not the server
  advertised ENHANCEDSTATUSCODES (RFC 2034), when it has the exact `class.subject.detail` shape and
  its class equals the first digit of the reply code. That code is removed from the start of every
  line that carries it, leaving the human text in `Reply.lines`.
"""

from __future__ import annotations

import enum
import functools
import re
from collections import deque
from typing import Final, Literal

from ._errors import RemoteProtocolError
from ._limits import Limits
from ._reply import Reply

__all__ = ["NEED_DATA", "NeedData", "ReplyParser", "one_line_replies"]


class _NeedDataType(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedDataType.NEED_DATA
"""Returned instead of an event when more bytes from the server are needed."""
NeedData = Literal[_NeedDataType.NEED_DATA]

_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")


@functools.lru_cache(maxsize=256)
def _enhanced_status(word: str) -> tuple[int, int, int] | None:
    """(class, subject, detail) when `word` is an RFC 3463 status code; memoised, as servers
    use a few dozen of them."""
    match = _ENHANCED.fullmatch(word)
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


# Every valid reply code, so that one dict lookup both checks the three digits and converts them.
_CODES: Final = {str(code).encode(): code for code in range(200, 600)}


# Replies are immutable and a reply line always parses to the same `Reply`, whichever session
# reads it, so two memos are shared by every parser: one reply line -> its Reply, and one whole
# read made only of one-line replies (a pipelined flight's answers: "250 2.1.0 Ok", "250 2.1.5
# Ok", "354 ...", the same for every message) -> its Replies. Each is cleared when full, so a
# server that sends a new line every time (a queue id) costs one insertion and no memory.
_LINES_KEPT: Final = 256
_READS_KEPT: Final = 64
_line_replies: dict[bytes, Reply] = {}
_read_replies: dict[bytes, tuple[Reply, ...]] = {}
# What the character after the code says: True for the last line of a reply (RFC 5321 §4.2.1;
# a bare code with nothing after it is taken as a last line too).
_LAST_LINE: Final = {b" ": True, b"": True, b"-": False}
_new = object.__new__
_set = object.__setattr__


def _one_line(raw: bytes) -> Reply | None:
    """The reply that the complete line `raw` (without its LF) is on its own, or None when it is
    not a well-formed last line (malformed, or the first line of a multi-line reply). Remembered
    in the line memo. The one place a one-line reply is parsed: `ReplyParser._parse` and
    `one_line_replies` both come here."""
    line = raw[:-1] if raw[-1:] == b"\r" else raw
    code = _CODES.get(line[:3])
    if code is None or _LAST_LINE.get(line[3:4]) is not True:
        return None
    text = line[4:].decode("utf-8", "replace")
    enhanced = None
    if text[1:2] == ".":
        status, _, rest = text.partition(" ")
        # At most "5.999.999": longer words never reach (and fill) the memo.
        enhanced = _enhanced_status(status) if len(status) <= 9 else None
        if enhanced is not None:
            if enhanced[0] != code // 100:
                enhanced = None
            else:
                text = rest
    # Built without Reply.__init__, whose checks hold here by construction (a code from _CODES,
    # a tuple of lines).
    reply: Reply = _new(Reply)
    _set(reply, "code", code)
    _set(reply, "lines", (text,))
    _set(reply, "enhanced", enhanced)
    cache = _line_replies
    if len(cache) >= _LINES_KEPT:
        cache.clear()
    cache[raw] = reply
    return reply


def one_line_replies(data: bytes, count: int) -> tuple[Reply, ...] | None:
    """The replies a parser holding nothing makes of `data`, when `data` is exactly `count`
    complete one-line replies and nothing else; None when it is anything else (fewer or more
    replies, a partial line, a multi-line reply, a malformed line): then feed it to the parser.

    The caller checks first that `data` is no longer than the line limit, so that no line in it
    can be over that limit (and the parser would take it whole, in one `_parse`).
    """
    if count > 1:
        known = _read_replies.get(data)
        if known is not None:
            return known if len(known) == count else None
    raws = data.split(b"\n")
    if len(raws) != count + 1 or raws[count]:
        return None
    cache = _line_replies
    replies = []
    for index in range(count):
        raw = raws[index]
        reply = cache.get(raw)
        if reply is None:
            reply = _one_line(raw)
            if reply is None:
                return None
        replies.append(reply)
    found = tuple(replies)
    if count > 1:
        # As `_parse` remembers a read of several one-line replies.
        if len(_read_replies) >= _READS_KEPT:
            _read_replies.clear()
        _read_replies[data] = found
    return found


class ReplyParser:
    """Turns server bytes into `Reply` objects.

    `next_reply()` parses every complete line in the buffer at once (one `split`) and queues the
    replies they complete; later calls only pop from that queue.
    """

    __slots__ = (
        "_broken",
        "_buffer",
        "_code",
        "_enhanced",
        "_lines",
        "_max_buffered",
        "_max_line",
        "_max_lines",
        "_partial_size",
        "_prefix",
        "_queued_bytes",
        "eof",
        "replies",
    )

    def __init__(self, limits: Limits) -> None:
        self._max_line = limits.max_line_length
        self._max_lines = limits.max_reply_lines
        self._max_buffered = limits.max_buffered_bytes
        self._buffer = b""
        self.eof = False  # the server closed its side
        self._code = 0
        self._lines: list[str] = []
        self._enhanced: tuple[int, int, int] | None = None
        self._prefix = ""
        # Complete replies not yet taken; the session pops from it directly on its hot path.
        self.replies: deque[Reply] = deque()
        self._queued_bytes = 0
        self._partial_size = 0
        self._broken: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a complete reply."""
        queued = self._queued_bytes if self.replies else 0
        return len(self._buffer) + queued + self._partial_size

    def feed(self, data: bytes) -> None:
        """Buffer `data`; b"" records the end of the stream.

        Raises RemoteProtocolError when the bytes not yet returned as replies would exceed the
        buffer limit; everything buffered is then dropped, so memory stays bounded whatever the
        server sends.
        """
        if not data:
            self.eof = True
            return
        if self.eof:
            raise RemoteProtocolError("data received after the end of the stream")
        buffer = self._buffer
        queued = self._queued_bytes if self.replies else 0
        if len(buffer) + queued + self._partial_size + len(data) > self._max_buffered:
            self.discard()
            raise RemoteProtocolError("server sent more than the buffered-bytes limit")
        self._buffer = buffer + data

    def discard(self) -> None:
        """Forget every buffered byte, queued reply and reply in progress."""
        self._buffer = b""
        self._lines = []
        self.replies.clear()
        self._queued_bytes = 0
        self._partial_size = 0

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None when more bytes are needed.

        Raises RemoteProtocolError on a malformed line, a line or reply over the limits, or the
        end of the stream inside a reply.
        """
        queued = self.replies
        if not queued:
            if not self._buffer and not self.eof and self._broken is None:
                return None
            if self._broken is not None:
                raise self._broken
            try:
                self._parse()
            except RemoteProtocolError as exc:
                # Replies completed before the bad line are still returned first, so the events
                # do not depend on how the bytes were split.
                self._broken = exc
                self._buffer = b""
            if not queued:
                if self._broken is not None:
                    raise self._broken
                if self.eof and (self._lines or self._buffer):
                    raise RemoteProtocolError("connection closed in the middle of a reply")
                return None
        return queued.popleft()

    def _parse(self) -> None:
        buffer = self._buffer
        max_line = self._max_line
        lines = self._lines
        queued = self.replies  # empty: parsing only happens once every reply was taken
        # A buffer shorter than the line limit cannot hold a line over it.
        check_length = len(buffer) > max_line
        if not lines and not check_length:
            known = _read_replies.get(buffer)
            if known is not None:
                queued.extend(known)
                self._queued_bytes = len(buffer)
                self._buffer = b""
                return
        # One split; the last piece is the partial line after the last LF (b"" if none).
        raw_lines = buffer.split(b"\n")
        partial = self._buffer = raw_lines.pop()
        if len(partial) >= max_line:
            raise RemoteProtocolError("reply line longer than the line-length limit")
        codes = _CODES
        cache = _line_replies
        # Bytes of the reply still in progress (its lines so far), before and after this buffer:
        # every other byte consumed belongs to a complete, queued reply.
        started_with = size = self._partial_size
        try:
            for raw in raw_lines:
                if check_length and len(raw) >= max_line:
                    raise RemoteProtocolError("reply line longer than the line-length limit")
                if not lines:
                    reply = cache.get(raw)
                    if reply is None:
                        reply = _one_line(raw)
                    if reply is not None:
                        queued.append(reply)
                        continue
                # A malformed line, a continuation line, or the first line of a multi-line reply.
                line = raw[:-1] if raw[-1:] == b"\r" else raw
                code = codes.get(line[:3])
                last = _LAST_LINE.get(line[3:4])
                if code is None or last is None:
                    raise RemoteProtocolError("malformed reply line")
                text = line[4:].decode("utf-8", "replace")
                if lines:
                    if code != self._code:
                        raise RemoteProtocolError("reply lines carry different reply codes")
                    if len(lines) >= self._max_lines:
                        raise RemoteProtocolError("reply has more lines than the lines limit")
                    prefix = self._prefix
                    if prefix and text.startswith(prefix):
                        text = text[len(prefix) :]
                    lines.append(text)
                    if last:
                        queued.append(Reply(code, tuple(lines), self._enhanced))
                        size = 0
                        lines = self._lines = []
                    else:
                        size += len(raw) + 1
                    continue
                # The first line of a multi-line reply (a last line was a one-line reply).
                enhanced = None
                if text[1:2] == ".":
                    status, _, rest = text.partition(" ")
                    # At most "5.999.999": longer words never reach (and fill) the memo.
                    enhanced = _enhanced_status(status) if len(status) <= 9 else None
                    if enhanced is not None:
                        if enhanced[0] != code // 100:
                            enhanced = None
                        else:
                            self._prefix = status + " "
                            text = rest
                if enhanced is None:
                    self._prefix = ""
                self._code = code
                self._enhanced = enhanced
                lines.append(text)
                size = len(raw) + 1
        except RemoteProtocolError:
            # What was queued before the bad line is still returned first; its exact size no
            # longer matters (the session fails at the bad line).
            self._queued_bytes = len(buffer)
            raise
        self._partial_size = size
        self._queued_bytes = started_with + len(buffer) - len(partial) - size
        if (
            not started_with
            and not partial
            and not size
            and len(queued) == len(raw_lines) > 1
            and len(buffer) <= max_line
        ):
            # Several one-line replies read at once, and nothing else: remember the whole read.
            if len(_read_replies) >= _READS_KEPT:
                _read_replies.clear()
            _read_replies[buffer] = tuple(queued)
