"""The SMTP envelope: who the message is from and to (RFC 5321 §2.3.1), apart from its content.

An `Envelope` that exists is valid: its constructor checks every address (`_address`) and DSN
parameter (`_dsn`), so whichever way a message reaches `plan_transaction` (the pool's `send`,
`send_raw`, the low-level session), a caller's mistake is refused before a connection is asked
for, and never as a server's refusal after one was opened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._address import check_recipient, check_recipients, check_sender
from ._dsn import checked_envid, checked_notify, checked_orcpt, checked_ret
from ._errors import EnvelopeError

__all__ = ["Envelope", "PreparedMessage", "checked_envelope"]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class Envelope:
    """Reverse-path, forward-paths and the DSN parameters (RFC 3461), checked when built.

    `sender` is a mailbox, or "" for the null reverse-path (RFC 5321 §4.5.5). `recipients` are
    mailboxes or "postmaster" (§4.1.1.3); a single string is one recipient, a duplicate is kept
    once (some servers deliver a mailbox named twice twice), at least one is needed.
    `notify` applies to every recipient ("NEVER" alone, or any of "SUCCESS", "FAILURE", "DELAY";
    a string may hold several, comma-separated); `ret` is "FULL" or "HDRS"; `envid` is printable
    ASCII; `orcpt` adds ORCPT=rfc822;<recipient> to every RCPT (left out for a non-ASCII
    recipient, whose utf-8 address type, RFC 6533, is not implemented). The DSN values are kept
    upper-cased. A message that asks for DSN is refused with `DSNNotSupported` by a server that
    does not offer it.

    Raises `TypeError` for a value of the wrong type and `InvalidArgument` (`EnvelopeError` for
    no recipient at all) for a wrong value, naming the argument (`sender`, `recipients[3]`,
    `notify`) and the rule, never the address.
    """

    sender: str
    recipients: tuple[str, ...]
    ret: str | None = None
    envid: str | None = None
    notify: tuple[str, ...] | None = None
    orcpt: bool = False

    def __post_init__(self) -> None:
        _check_and_set(
            self, self.sender, self.recipients, self.ret, self.envid, self.notify, self.orcpt
        )

    @property
    def asks_for_dsn(self) -> bool:
        """Whether any DSN parameter is set: such a message needs a server that offers DSN."""
        return not (
            self.ret is None and self.envid is None and self.notify is None and not self.orcpt
        )


# The slots' own descriptors: what the frozen dataclass's __init__ reaches through
# object.__setattr__, called directly (the hot path builds one Envelope per message).
_set_sender = Envelope.__dict__["sender"].__set__
_set_recipients = Envelope.__dict__["recipients"].__set__
_set_ret = Envelope.__dict__["ret"].__set__
_set_envid = Envelope.__dict__["envid"].__set__
_set_notify = Envelope.__dict__["notify"].__set__
_set_orcpt = Envelope.__dict__["orcpt"].__set__


def checked_envelope(
    sender: str,
    recipients: str | Sequence[str],
    *,
    notify: str | Sequence[str] | None = None,
    ret: str | None = None,
    envid: str | None = None,
    orcpt: bool = False,
) -> Envelope:
    """An envelope for addresses the caller gave, checked before any connection is used.

    The rules are `Envelope`'s: a single string as `recipients` is one recipient, duplicates are
    sent once, every address must be a mailbox (the sender may be "", a recipient
    "postmaster"), and the DSN parameters are checked. Raises `TypeError`, `InvalidArgument`
    or `EnvelopeError` (no recipient) naming the argument, never the address.
    """
    if notify is None and ret is None and envid is None and orcpt is False and type(sender) is str:
        key = _key(sender, recipients)
        if key is not None:
            envelope = _envelopes.get(key)
            if envelope is None:
                envelope = make_envelope(sender, recipients, None, None, None, False)
                if len(_envelopes) >= _ENVELOPES_KEPT:
                    _envelopes.clear()
                _envelopes[key] = envelope
            return envelope
    return make_envelope(sender, recipients, ret, envid, notify, orcpt)


# Envelopes without DSN parameters already checked, by (sender, *recipients): applications send
# from the same sender to the same few recipients again and again, and an Envelope is immutable,
# so one is shared by every send that names them. Only exact `str` values are looked up (a str
# subclass, or another object that compares equal to a str, is checked as it is), so a hit is
# exactly the Envelope checking would build. Refusals are never remembered. Cleared when full.
_ENVELOPES_KEPT = 128
_envelopes: dict[tuple[str, ...], Envelope] = {}


def _key(sender: str, recipients: object) -> tuple[str, ...] | None:
    kind = type(recipients)
    if kind is str:
        # One recipient, as the same address alone in a list: the same Envelope.
        return (sender, recipients)  # type: ignore[return-value]
    if kind is not list and kind is not tuple:
        return None
    for recipient in recipients:  # type: ignore[attr-defined]
        if type(recipient) is not str:
            return None
    return (sender, *recipients)  # type: ignore[misc]


def make_envelope(
    sender: object,
    recipients: object,
    ret: object,
    envid: object,
    notify: object,
    orcpt: object,
    *,
    sender_argument: str = "sender",
    recipient_argument: Callable[[int], str] | None = None,
) -> Envelope:
    """`Envelope(...)` with the arguments named as the caller knows them, checked once.

    `sender_argument` names the sender and `recipient_argument(index)` a recipient in an error
    (for addresses taken from the headers: "From", "Cc[1]").
    """
    envelope: Envelope = object.__new__(Envelope)
    _check_and_set(
        envelope, sender, recipients, ret, envid, notify, orcpt, sender_argument, recipient_argument
    )
    return envelope


def _check_and_set(
    envelope: Envelope,
    sender: object,
    recipients: object,
    ret: object,
    envid: object,
    notify: object,
    orcpt: object,
    sender_argument: str = "sender",
    recipient_argument: Callable[[int], str] | None = None,
) -> None:
    """Check every field and set it on `envelope`, which is being built (a refusal discards it)."""
    # A str subclass is checked and kept as the exact str it holds: the commands are written
    # with "%s" and f-strings, which call its own __str__/__format__ (a (str, Enum) member
    # writes "Role.ADMIN"; a hostile one could write anything), not the text that was checked.
    if isinstance(sender, str) and type(sender) is not str:
        sender = str.__str__(sender)
    _set_sender(envelope, check_sender(sender, sender_argument))
    if isinstance(recipients, str):
        if type(recipients) is not str:
            recipients = str.__str__(recipients)
        _set_recipients(envelope, (check_recipient(recipients, "recipients"),))
    else:
        if (
            type(recipients) is not list
            and type(recipients) is not tuple
            and (
                isinstance(recipients, (bytes, bytearray, memoryview))
                or not isinstance(recipients, Sequence)
            )
        ):
            raise TypeError(
                f"recipients: expected a str or a sequence of str, got {type(recipients).__name__}"
            )
        if not recipients:
            raise EnvelopeError("at least one recipient is needed", "recipients")
        if not all(type(recipient) is str for recipient in recipients):
            recipients = [str.__str__(r) if isinstance(r, str) else r for r in recipients]
        check_recipients(recipients, recipient_argument or _recipient_index)
        # RCPT TO for the same mailbox twice would make some servers deliver twice.
        _set_recipients(
            envelope,
            tuple(recipients) if len(recipients) == 1 else tuple(dict.fromkeys(recipients)),
        )
    if ret is None and envid is None and notify is None and orcpt is False:
        _set_ret(envelope, None)
        _set_envid(envelope, None)
        _set_notify(envelope, None)
        _set_orcpt(envelope, False)
    else:
        _set_ret(envelope, checked_ret(ret))
        _set_envid(envelope, checked_envid(envid))
        _set_notify(envelope, checked_notify(notify))
        _set_orcpt(envelope, checked_orcpt(orcpt))


def _recipient_index(index: int) -> str:
    return f"recipients[{index}]"


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """An envelope and the message bytes, serialized once with CRLF line endings.

    `data` is the message as it will be transmitted before dot-stuffing: the terminator and any
    stuffing are added by the protocol machine. `message_id` is the message's Message-ID, when
    known (for logs: which message a send was about). The repr never shows the body.
    """

    envelope: Envelope
    data: bytes
    message_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"PreparedMessage(envelope={self.envelope!r}, data=<{len(self.data)} bytes>, "
            f"message_id={self.message_id!r})"
        )
