"""The header fields pooledmail may add, Date and Message-ID, and reading a Message-ID from bytes.

RFC 5322 §3.6 requires an origination date, and §3.6.4 says every message SHOULD have a
Message-ID; a server that adds them itself (RFC 6409 §8.2, §8.3) does so after the fact, so the
sender would not know the id. The core reads no clock and no random source: the driver passes the
date as text and a function that makes a new id, and the core checks what it is given.
"""

from __future__ import annotations

import re

from ._errors import InvalidArgument

__all__ = ["check_date", "check_message_id", "loggable", "message_id_of"]

# RFC 5322 §3.3 date-time, in the form every generator writes ("Mon, 23 Nov 2026 13:46:38
# +0000", email.utils.format_datetime): no comments, single spaces, no obsolete zones.
_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?"
    r"(?:0?[1-9]|[12][0-9]|3[01]) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::(?:[0-5][0-9]|60))? [+-][0-9]{4}",
    re.IGNORECASE,
)
# RFC 5322 §3.6.4 msg-id without CFWS: "<" dot-atom-text "@" (dot-atom-text / no-fold-literal)
# ">", with the UTF8-non-ascii of RFC 6532 §3.2 in atext and dtext.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\U0010ffff]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_MESSAGE_ID = re.compile(rf"<{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[!-Z^-~\x80-\U0010ffff]*\])>")
# RFC 5322 §2.1.1: a line is at most 998 characters without its CRLF.
_MAX_MESSAGE_ID = 998 - len("Message-ID: ")

# A "Message-ID:" field at the start of a header line (RFC 5322 §3.6.4; the field name is case
# insensitive, §1.2.2, and white space before the colon is the obsolete syntax of §4.5.4), with
# its folded continuation lines (§2.2.3).
_MESSAGE_ID_FIELD = re.compile(
    rb"^message-id[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.IGNORECASE | re.MULTILINE
)
_END_OF_HEADER = re.compile(rb"(?:^|\n)\r?\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def check_date(date: object) -> str:
    """`date` if it is an RFC 5322 date-time in the common form, else TypeError/InvalidArgument."""
    if not isinstance(date, str):
        raise TypeError(f"date: expected str, got {type(date).__name__}")
    if not _DATE.fullmatch(date):
        raise InvalidArgument(
            "must be an RFC 5322 date-time such as 'Mon, 23 Nov 2026 13:46:38 +0000' "
            "(email.utils.format_datetime)",
            "date",
        )
    return date


def check_message_id(message_id: object, utf8: bool) -> str:
    """A new Message-ID: an RFC 5322 msg-id, ASCII unless the message goes with SMTPUTF8."""
    if not isinstance(message_id, str):
        raise TypeError(
            f"new_message_id: expected it to return str, got {type(message_id).__name__}"
        )
    if (
        not _MESSAGE_ID.fullmatch(message_id)
        or not message_id.isprintable()
        or len(message_id.encode()) > _MAX_MESSAGE_ID
    ):
        raise InvalidArgument(
            "must return an RFC 5322 msg-id such as '<unique@example.com>'", "new_message_id"
        )
    if not (utf8 or message_id.isascii()):
        # RFC 6532 allows UTF-8 in header fields only when the message is sent with SMTPUTF8.
        raise InvalidArgument(
            "returned a non-ASCII msg-id for a message sent without SMTPUTF8", "new_message_id"
        )
    return message_id


def message_id_of(data: bytes) -> str | None:
    """The Message-ID in the header section of raw message bytes, or None.

    Looks only at the header section (up to the first empty line), finds the field whatever
    the case of its name, unfolds it and strips the white space around it. A value that is not
    UTF-8 is decoded with replacement characters, and control or other non-printable characters
    left in it are replaced by U+FFFD, so it can be logged as it is. An empty value is None.
    """
    end = _END_OF_HEADER.search(data)
    field = _MESSAGE_ID_FIELD.search(data, 0, len(data) if end is None else end.start())
    if field is None:
        return None
    return loggable(field.group(1).decode("utf-8", "replace"))


def loggable(value: str) -> str | None:
    """A header value unfolded and stripped, other non-printable characters replaced by U+FFFD.

    None when empty. The result holds no line break, so it can go into a log line as it is.
    """
    if not value.isprintable():
        value = _FOLD.sub("", value).replace("\t", " ").strip()
        value = "".join(char if char.isprintable() else "\ufffd" for char in value)
    return value.strip() or None
