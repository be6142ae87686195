"""Message bytes on the wire: CRLF normalisation and dot-stuffing (RFC 5321 §2.3.8, §4.5.2).

A bare CR or LF is never emitted: each CR, LF or CRLF becomes one CRLF. That closes the
SMTP-smuggling class of bugs, where a receiver and a relay disagree on whether "\\n.\\n" ends the
data. The common case (already CRLF, no line starting with ".") costs three `bytes.count` scans and
no copy beyond the terminator.
"""

from __future__ import annotations

__all__ = ["dot_stuffed", "normalise_line_endings", "stuffed_with_terminator"]


def normalise_line_endings(data: bytes) -> bytes:
    """`data` with CRLF line endings, ending with CRLF unless empty."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def dot_stuffed(normalised: bytes) -> bytes:
    """Dot-stuffed `normalised` data (RFC 5321 §4.5.2), without the end-of-data line.

    The same object comes back when no line starts with ".", so a large body is not copied.
    """
    if b"\r\n." in normalised:
        normalised = normalised.replace(b"\r\n.", b"\r\n..")
    if normalised[:1] == b".":
        normalised = b"." + normalised
    return normalised


def stuffed_with_terminator(normalised: bytes) -> bytes:
    """Dot-stuffed `normalised` data followed by the end-of-data line ".\\r\\n"."""
    return dot_stuffed(normalised) + b".\r\n"
