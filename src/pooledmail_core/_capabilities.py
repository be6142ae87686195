"""What the server said it supports in its EHLO reply (RFC 5321 §4.1.1.1)."""

from __future__ import annotations

from dataclasses import dataclass

from ._reply import Reply

__all__ = ["Capabilities"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class Capabilities:
    """The service extensions the machine uses, parsed from a 250 reply to EHLO.

    `size` is None when SIZE was not advertised and 0 when it was advertised without a fixed limit
    (RFC 1870 §4); `auth_mechanisms` holds upper-case SASL names (RFC 4954). `esmtp` is False
    before EHLO succeeded and after a HELO fallback. The whole object is forgotten after STARTTLS
    (RFC 3207 §4.2) and learned again from the next EHLO.
    """

    esmtp: bool = False
    size: int | None = None
    pipelining: bool = False
    eight_bit_mime: bool = False
    smtputf8: bool = False
    chunking: bool = False
    starttls: bool = False
    auth_mechanisms: frozenset[str] = frozenset()
    enhanced_status_codes: bool = False
    dsn: bool = False

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        """Parse the keyword lines of an EHLO reply (the first line is the server's greeting)."""
        keywords: set[str] = set()
        size: int | None = None
        mechanisms: set[str] = set()
        for line in reply.lines[1:]:
            words = line.upper().split()
            if not words:
                continue
            keyword = words[0]
            # Some servers still send the pre-standard "AUTH=LOGIN PLAIN" form as well.
            if keyword.startswith("AUTH="):
                words = ["AUTH", keyword[5:], *words[1:]]
                keyword = "AUTH"
            if keyword == "SIZE":
                size = 0
                # At most 20 digits: int() refuses more than 4300 (a ValueError), and no message
                # comes near 10**20 bytes, so a longer number is as good as no fixed limit.
                if len(words) > 1 and words[1].isascii() and words[1].isdigit():
                    size = int(words[1]) if len(words[1]) <= 20 else 0
            elif keyword == "AUTH":
                mechanisms.update(word for word in words[1:] if word)
            else:
                keywords.add(keyword)
        return cls(
            esmtp=True,
            size=size,
            pipelining="PIPELINING" in keywords,
            eight_bit_mime="8BITMIME" in keywords,
            smtputf8="SMTPUTF8" in keywords,
            chunking="CHUNKING" in keywords,
            starttls="STARTTLS" in keywords,
            auth_mechanisms=frozenset(mechanisms),
            enhanced_status_codes="ENHANCEDSTATUSCODES" in keywords,
            dsn="DSN" in keywords,
        )
