"""From an `EmailMessage` to what SMTP transmits: the envelope and the message bytes.

The envelope is derived from the headers the way the standard library's
`smtplib.SMTP.send_message` derives it, unless the caller gives it: the reverse-path from Sender
or From (RFC 5322 §3.6.2), the forward-paths from To, Cc and Bcc, or from the Resent- fields when
the message carries one Resent- block (RFC 5322 §3.6.6). Bcc and Resent-Bcc never reach the wire.

The bytes are produced once, with CRLF line endings, by the standard library's generator. Two
things differ from a plain `msg.as_bytes(policy=email.policy.SMTP)`:

* Bcc and Resent-Bcc are skipped while the top-level headers are written, so the caller's message
  is neither copied nor changed.
* A header object whose folded form is its own text on one line (the common case: short, ASCII,
  no line breaks) is written directly. The standard library re-folds every header through its
  full RFC 5322 folding algorithm, which is most of its cost; for a header that fits on one line
  that algorithm returns exactly "Name: text" + CRLF, so the shortcut gives identical bytes.
  Every other header goes through the policy's own `fold_binary`.
* Body text gets its CRLF line endings in one pass instead of two writes per line.

Date and Message-ID (RFC 5322 §3.6.1, §3.6.4) are added when the message has none and the caller
passes a date (text) or a function that makes a new id; the core reads no clock and no random
source. They are written after the message's own header fields, so trace fields (§3.6.7) and
Resent- blocks (§3.6.6) keep their place at the top.

SMTPUTF8 (RFC 6531) is only chosen when it is needed: when an envelope address, or the address
part of an address header, is not ASCII. Everything else that is not ASCII (a display name, a
subject) is encoded as RFC 2047 encoded-words, which every server accepts.
"""

from __future__ import annotations

import email.policy
import re
import sys
from collections.abc import Callable, Sequence
from email import errors, headerregistry
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.policy import EmailPolicy, Policy
from email.utils import getaddresses
from io import BytesIO
from typing import Any

from ._address import domain_of
from ._envelope import PreparedMessage, checked_envelope, make_envelope
from ._errors import EnvelopeError, InvalidArgument
from ._header_fields import check_date, check_message_id, loggable

# `checked_envelope` and `EnvelopeError` are also importable from here, where they used to live.
__all__ = ["EnvelopeError", "checked_envelope", "prepare_message"]


# The stock policies are resolved to their SMTP forms once, at import.
_SMTP = email.policy.SMTP
_SMTPUTF8 = email.policy.SMTPUTF8
_STOCK_POLICIES = (email.policy.default, email.policy.SMTP, email.policy.SMTPUTF8)

# Header fields whose value is an address list (RFC 5322 §3.6.2, §3.6.3, §3.6.6).
_ADDRESS_FIELDS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
    }
)
# Header classes whose value is `str(parse tree)` (see `_one_line_header`).
_TEXT_IS_TREE = (
    headerregistry.UnstructuredHeader,
    headerregistry.MIMEVersionHeader,
    headerregistry.ParameterizedMIMEHeader,
    headerregistry.ContentTransferEncodingHeader,
    headerregistry.MessageIDHeader,
)
# The top-level fields the generator acts on, by lower-cased name: Bcc recipients are not shown
# to the others (RFC 5322 §3.6.3); Date and Message-ID are noted, so as to add them when missing.
_BLIND, _DATE, _MESSAGE_ID = "blind", "date", "message-id"
_NOTED_FIELDS = {"bcc": _BLIND, "resent-bcc": _BLIND, "date": _DATE, "message-id": _MESSAGE_ID}

# Header injection check (the standard library added the same check to its own generator in
# later patch releases): a folded header may only break a line when the next line starts with
# whitespace (RFC 5322 §2.2.3).
_BARE_LINE_BREAK = re.compile(rb"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n")


# The characters of body text converted and encoded at a time (see `_write_lines`).
_LINES_SLICE = 1 << 20


class _SMTPGenerator(BytesGenerator):
    """`BytesGenerator` that skips blind-copy fields and writes faster, with identical bytes.

    Only the instance made by `prepare_message` skips Bcc and adds Date and Message-ID: the
    generators the standard library clones for sub-parts (attachments, forwarded messages) keep
    their headers untouched.
    """

    _top_level: bool = False
    # What to add when the message lacks it (see `prepare_message`), set only when asked for.
    _date: str | None = None
    _new_message_id: Callable[[str | None], str] | None = None
    _sender: str = ""
    _utf8: bool = False
    # The message's own Message-ID, or the one added.
    message_id: str | None = None

    def _write_headers(self, msg: Message[Any, Any]) -> None:
        policy: Any = self.policy
        linesep: str = policy.linesep
        maxlen: int = policy.max_line_length or sys.maxsize
        encoding = "utf-8" if getattr(policy, "utf8", False) else "ascii"
        write = self._fp.write  # type: ignore[attr-defined]
        top_level = self._top_level
        has_date = has_message_id = False
        for name, value in msg.raw_items():
            if top_level:
                noted = _NOTED_FIELDS.get(name.lower())
                if noted is _BLIND:
                    continue
                if noted is _DATE:
                    has_date = True
                elif noted is _MESSAGE_ID and not has_message_id:
                    has_message_id = True
                    self.message_id = loggable(str(value))
            folded = _one_line_header(value, maxlen, linesep, encoding)
            if folded is None:
                try:
                    folded = policy.fold_binary(name, value)
                except errors.HeaderParseError:
                    # compat32's folding refuses a value with a field after a line break
                    # itself, in a message that quotes the value (which may be private).
                    raise InvalidArgument(
                        f"header {name!r} would break the header section"
                    ) from None
                end = len(folded) - 2
                if not folded.endswith(b"\r\n") or _BARE_LINE_BREAK.search(folded, 0, end):
                    raise InvalidArgument(f"header {name!r} would break the header section")
            write(folded)
        if top_level:
            if not has_date and self._date is not None:
                write(f"Date: {self._date}{linesep}".encode("ascii"))
            if not has_message_id and self._new_message_id is not None:
                message_id = check_message_id(
                    self._new_message_id(domain_of(self._sender)), self._utf8
                )
                write(f"Message-ID: {message_id}{linesep}".encode())
                self.message_id = message_id
        write(b"\r\n")

    def _write_lines(self, lines: str) -> None:
        # The standard library writes body text line by line, two writes per line; the output
        # is the same text with every CR, LF or CRLF turned into CRLF (RFC 5321 §2.3.8), which
        # one replacement and one write produce. A long text goes in slices that each end just
        # after a line feed (so no CR is parted from its LF): the converted and encoded copies
        # are then a slice each, not the whole body twice over next to the output being built.
        size = len(lines)
        if size <= _LINES_SLICE:
            self._write_crlf(lines)
            return
        start = 0
        while start < size:
            cut = lines.find("\n", start + _LINES_SLICE)
            end = size if cut < 0 else cut + 1
            self._write_crlf(lines[start:end])
            start = end

    def _write_crlf(self, lines: str) -> None:
        if "\r" in lines:
            lines = lines.replace("\r\n", "\n").replace("\r", "\n")
        self.write(lines.replace("\n", "\r\n"))


def _one_line_header(value: object, maxlen: int, linesep: str, encoding: str) -> bytes | None:
    """The folded bytes of a header object that fits on one line, or None.

    Mirrors what `email.headerregistry.BaseHeader.fold` produces when its parse tree's text is
    encodable in the policy's charset, contains no line break and fits in `maxlen`: the name,
    ": " (":" alone for an empty value), the text, `linesep`.
    """
    name = getattr(value, "name", None)
    tree = getattr(value, "_parse_tree", None)
    if name is None or tree is None:
        return None
    text = str(value)
    if not (isinstance(value, _TEXT_IS_TREE) and text.isascii()):
        # Only these header classes store their parse tree's text as their own value (a tree
        # holding undecodable bytes is stored sanitized, and then never as ASCII); for the
        # others, walk the tree.
        text = str(tree)
    line = f"{name}: {text}" if tree else f"{name}:"
    if len(line) > maxlen or "\r" in line or "\n" in line:
        return None
    try:
        return (line + linesep).encode(encoding)
    except UnicodeEncodeError:
        return None


def prepare_message(
    msg: EmailMessage,
    *,
    sender: str | None = None,
    recipients: str | Sequence[str] | None = None,
    notify: str | Sequence[str] | None = None,
    ret: str | None = None,
    envid: str | None = None,
    orcpt: bool = False,
    date: str | None = None,
    new_message_id: Callable[[str | None], str] | None = None,
) -> PreparedMessage:
    """The envelope and the bytes to transmit for `msg`.

    `sender` ("" is the null reverse-path) and `recipients` override what the headers say;
    either may be given alone. A single string as `recipients` is one recipient. Duplicate
    recipients are sent once. `notify`, `ret`, `envid` and `orcpt` are the DSN parameters
    (RFC 3461), as for `checked_envelope`.

    When the message has no Date field and `date` is given (an RFC 5322 date-time, as
    `email.utils.format_datetime` writes it), "Date: <date>" is added. When it has no Message-ID
    and `new_message_id` is given, it is called with the domain of the envelope sender (None for
    the null sender) and must return a msg-id ("<unique@domain>"), added as "Message-ID:". The
    result's `message_id` is the message's own Message-ID or the new one.

    The caller's message is neither copied nor changed (except that, exactly as in
    `msg.as_bytes()`, a multipart part without a boundary gets one).

    Raises `TypeError` for an argument of the wrong type; `EnvelopeError` when the envelope
    cannot be derived from the headers; `InvalidArgument` for an address that is not a mailbox,
    a wrong DSN parameter, date or new Message-ID, or a header that would inject a line break.
    Errors name the argument (`sender`, `recipients[2]`, or for an address taken from the
    headers its field: `From`, `Cc[1]`), never the address.
    """
    if not isinstance(msg, Message):
        raise TypeError(f"msg: expected an email.message.EmailMessage, got {type(msg).__name__}")
    if date is not None:
        check_date(date)
    if new_message_id is not None and not callable(new_message_id):
        raise TypeError(f"new_message_id: expected a callable, got {type(new_message_id).__name__}")
    sender_argument = "sender"
    recipient_argument: Callable[[int], str] | None = None
    if sender is None or recipients is None:
        prefix = _resent_prefix(msg)
        if sender is None:
            sender, sender_argument = _sender_from_headers(msg, prefix)
        if recipients is None:
            recipients = _recipients_from_headers(msg, prefix)

            def recipient_argument(index: int) -> str:
                return _header_position(msg, prefix, index)

    envelope = make_envelope(
        sender,
        recipients,
        ret,
        envid,
        notify,
        orcpt,
        sender_argument=sender_argument,
        recipient_argument=recipient_argument,
    )
    needs_utf8 = not (
        envelope.sender.isascii() and all(r.isascii() for r in envelope.recipients)
    ) or _headers_need_utf8(msg)
    buffer = BytesIO()
    generator = _SMTPGenerator(buffer, mangle_from_=False, policy=_policy_for(msg, needs_utf8))
    generator._top_level = True
    if date is not None:
        generator._date = date
    if new_message_id is not None:
        generator._new_message_id = new_message_id
        generator._sender = envelope.sender
        generator._utf8 = needs_utf8
    try:
        generator.flatten(msg)
    except UnicodeEncodeError:
        # A compat32 part holding non-ASCII text with no charset to encode it: the standard
        # library's own error would quote the text, which may be the body.
        raise InvalidArgument(
            "the message holds non-ASCII text that it gives no charset for (give the part a "
            "charset, or build it with EmailMessage.set_content())"
        ) from None
    return PreparedMessage(envelope, buffer.getvalue(), generator.message_id)


def _resent_prefix(msg: Message[Any, Any]) -> str:
    # Every Resent- block has a Resent-Date and a Resent-From (RFC 5322 §3.6.6); either one
    # counts, so a block missing one of them is still seen.
    blocks = max(len(msg.get_all("Resent-Date", ())), len(msg.get_all("Resent-From", ())))
    if blocks == 0:
        return ""
    if blocks == 1:
        return "Resent-"
    raise EnvelopeError(
        f"the message has {blocks} Resent- blocks and the newest cannot be told reliably; "
        "pass sender and recipients explicitly"
    )


# The standard library's words (email._header_value_parser) for the two ways it reads an address
# field other than as written.
_UNREADABLE_ADDRESS_DEFECTS = frozenset(
    {
        "invalid address in address-list",
        "local-part is not dot-atom, quoted-string, or obs-local-part",
    }
)


def _addresses(msg: Message[Any, Any], field: str) -> list[str]:
    found: list[str] = []
    for value in msg.get_all(field, ()):
        # The parser stops an address list at the first thing it cannot read ("a@x; b@y",
        # "a@x b@y"): the rest would stay in the header for all to see and get no RCPT. A local
        # part that is not RFC 5322 §3.4.1 syntax ("Bob Smith bob@x", a display name without
        # its angle brackets) it quotes into an address nobody wrote ('"Bob Smith bob"@x').
        if any(
            isinstance(defect, errors.InvalidHeaderDefect)
            and str(defect) in _UNREADABLE_ADDRESS_DEFECTS
            for defect in getattr(value, "defects", ())
        ):
            instead = "sender" if field.endswith(("From", "Sender")) else "recipients"
            raise EnvelopeError(
                f"the {field} field is not a valid address list (RFC 5322 \u00a73.4); "
                f"correct it or pass {instead}"
            )
        found.extend(_mailboxes(value))
    return found


def _mailboxes(value: object) -> list[str]:
    """The addr-specs in one address field, skipping empty ones.

    An `email.headerregistry` address header was parsed when it was set: its `addresses` are
    used as they are (the cheap path, and the same parse the message itself uses). A plain
    string (a `compat32` message) is parsed with `email.utils.getaddresses`. Either way, group
    syntax without members ("undisclosed-recipients:;") and "<>" name no mailbox.
    """
    addresses = getattr(value, "addresses", None)
    if addresses is not None:
        return [a.addr_spec for a in addresses if a.username or a.domain]
    return [address for _, address in getaddresses([str(value)]) if address]


def _sender_from_headers(msg: Message[Any, Any], prefix: str) -> tuple[str, str]:
    """The sender, and the field it came from (to name it in an error)."""
    # RFC 5322 §3.6.2: Sender names the mailbox of the agent responsible for the transmission,
    # and is required when From names more than one mailbox.
    field = f"{prefix}Sender"
    mailboxes = _addresses(msg, field)
    if not mailboxes and msg.get(field) is None:
        field = f"{prefix}From"
        mailboxes = _addresses(msg, field)
    if len(mailboxes) == 1:
        return mailboxes[0], field
    if not mailboxes:
        raise EnvelopeError(f"no sender: the message has no address in {field}")
    raise EnvelopeError(
        f"{field} names {len(mailboxes)} mailboxes; add a {prefix}Sender field or pass sender"
    )


_RECIPIENT_FIELDS = ("To", "Cc", "Bcc")


def _recipients_from_headers(msg: Message[Any, Any], prefix: str) -> list[str]:
    found: list[str] = []
    for field in _RECIPIENT_FIELDS:
        found.extend(_addresses(msg, prefix + field))
    if not found:
        raise EnvelopeError(f"no recipients: the message has no address in {prefix}To/Cc/Bcc")
    return found


def _header_position(msg: Message[Any, Any], prefix: str, index: int) -> str:
    """Where recipient `index` of `_recipients_from_headers` came from: "Cc[1]"."""
    positions = [
        f"{prefix}{field}[{position}]"
        for field in _RECIPIENT_FIELDS
        for position in range(len(_addresses(msg, prefix + field)))
    ]
    return positions[index]


def _headers_need_utf8(msg: Message[Any, Any]) -> bool:
    # A non-ASCII display name or subject can be written as RFC 2047 encoded-words; a non-ASCII
    # address cannot (RFC 2047 §5 forbids encoded-words in an addr-spec), so it needs SMTPUTF8
    # and raw UTF-8 headers (RFC 6532).
    for name, value in msg.raw_items():
        if (
            not str(value).isascii()
            and name.lower() in _ADDRESS_FIELDS
            and not all(address.isascii() for address in _mailboxes(value))
        ):
            return True
    return False


def _policy_for(msg: Message[Any, Any], utf8: bool) -> Policy[Any]:
    policy = msg.policy
    if any(policy is stock for stock in _STOCK_POLICIES):
        return _SMTPUTF8 if utf8 else _SMTP
    # The caller chose a policy of their own (line length, 7bit ...): keep it, only with
    # CRLF line endings (RFC 5321 §2.3.8) and the utf8 setting decided here.
    if isinstance(policy, EmailPolicy):
        return policy.clone(linesep="\r\n", utf8=utf8)
    return policy.clone(linesep="\r\n")
