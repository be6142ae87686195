"""Delivery Status Notification parameters (RFC 3461): checked when the envelope is built.

NOTIFY and ORCPT go on every RCPT, RET and ENVID on MAIL (RFC 3461 §4.1-§4.4). They are checked
and normalised (upper case, a tuple for NOTIFY) when the `Envelope` is made, so a caller's
mistake is refused before a connection is asked for; whether the server offers DSN is only known
later, and `plan_transaction` refuses the message with `DSNNotSupported` when it does not.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._errors import InvalidArgument

__all__ = ["checked_envid", "checked_notify", "checked_orcpt", "checked_ret", "xtext"]

_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_NOTIFY_RULE = "must be NEVER alone, or one or more of SUCCESS, FAILURE and DELAY, each once"
# RFC 3461 §4.4: the ENVID value may be at most 100 characters; counted here after xtext
# encoding, as it goes on the wire, so no server's reading of the limit can refuse it.
_MAX_ENVID = 100


def xtext(value: str) -> str:
    """RFC 3461 §4: "+", "=" and every character outside "!".."~" written as "+XX"."""
    return "".join(
        char
        if "!" <= char <= "~" and char not in "+="
        else "".join(f"+{byte:02X}" for byte in char.encode())
        for char in value
    )


def checked_notify(notify: object) -> tuple[str, ...] | None:
    """NOTIFY as upper-case words: "NEVER", or any of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1).

    A string is one word or several separated by commas ("SUCCESS,FAILURE").
    """
    if notify is None:
        return None
    if isinstance(notify, str):
        notify = notify.split(",")
    elif isinstance(notify, (bytes, bytearray, memoryview)) or not isinstance(notify, Sequence):
        raise TypeError(f"notify: expected a str or a sequence of str, got {type(notify).__name__}")
    words: list[str] = []
    for word in notify:
        if not isinstance(word, str):
            raise TypeError(f"notify: expected a sequence of str, holding {type(word).__name__}")
        words.append(word.strip().upper())
    if not words or len(set(words)) != len(words):
        raise InvalidArgument(_NOTIFY_RULE, "notify")
    if words != ["NEVER"] and not _NOTIFY_WORDS.issuperset(words):
        raise InvalidArgument(_NOTIFY_RULE, "notify")
    return tuple(words)


def checked_ret(ret: object) -> str | None:
    """RET as "FULL" (the whole message in a failure report) or "HDRS" (RFC 3461 §4.3)."""
    if ret is None:
        return None
    if not isinstance(ret, str):
        raise TypeError(f"ret: expected str, got {type(ret).__name__}")
    upper = ret.upper()
    if upper not in ("FULL", "HDRS"):
        raise InvalidArgument('must be "FULL" or "HDRS"', "ret")
    return upper


def checked_envid(envid: object) -> str | None:
    """ENVID: printable ASCII, at most 100 characters once xtext-encoded (RFC 3461 §4.4)."""
    if envid is None:
        return None
    if not isinstance(envid, str):
        raise TypeError(f"envid: expected str, got {type(envid).__name__}")
    if not envid or not envid.isascii() or not envid.isprintable():
        raise InvalidArgument("must be non-empty printable ASCII", "envid")
    if len(xtext(envid)) > _MAX_ENVID:
        raise InvalidArgument(
            f"must be at most {_MAX_ENVID} characters once xtext-encoded", "envid"
        )
    return envid


def checked_orcpt(orcpt: object) -> bool:
    """ORCPT: True to send ORCPT=rfc822;<recipient> with every RCPT (RFC 3461 §4.2)."""
    if not isinstance(orcpt, bool):
        raise TypeError(f"orcpt: expected bool, got {type(orcpt).__name__}")
    return orcpt
