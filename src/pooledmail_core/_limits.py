"""Explicit bounds on what a server may make the protocol machine buffer."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import ConfigError

__all__ = ["Limits"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class Limits:
    """How much a server may send before the machine calls it a `RemoteProtocolError`.

    RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets, but real MTAs send longer ones (up to about
    1000 in the field), so the default line limit leaves room. `max_line_length` counts the line
    with its CRLF; `max_reply_lines` counts the lines of one reply (an EHLO reply is the longest in
    practice); `max_buffered_bytes` bounds every byte received and not yet consumed, so no server
    can grow memory without bound. `bdat_chunk_size` is the largest BDAT chunk the machine sends
    (RFC 3030): a message up to that size goes in a single `BDAT <n> LAST`.
    """

    max_line_length: int = 2048
    max_reply_lines: int = 200
    max_buffered_bytes: int = 1 << 20
    bdat_chunk_size: int = 1 << 20

    def __post_init__(self) -> None:
        # bool is an int subclass; `bdat_chunk_size=True` is a mistake, not 1.
        for option in (
            "max_line_length",
            "max_reply_lines",
            "max_buffered_bytes",
            "bdat_chunk_size",
        ):
            if isinstance(getattr(self, option), bool):
                raise ConfigError(option, "must be an int, not True or False")
        if not isinstance(self.max_line_length, int) or self.max_line_length < 8:
            raise ConfigError("max_line_length", "must be an int of at least 8")
        if not isinstance(self.max_reply_lines, int) or self.max_reply_lines < 1:
            raise ConfigError("max_reply_lines", "must be a positive int")
        if (
            not isinstance(self.max_buffered_bytes, int)
            or self.max_buffered_bytes < self.max_line_length
        ):
            raise ConfigError("max_buffered_bytes", "must be an int >= max_line_length")
        if not isinstance(self.bdat_chunk_size, int) or self.bdat_chunk_size < 1:
            raise ConfigError("bdat_chunk_size", "must be a positive int")
