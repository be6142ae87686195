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

SMTPUTF8 (RFC 6531) is only chosen when it is needed: when an envelope address, or the address
part of an address header, is not ASCII. Everything else that is not ASCII (a display name, a
subject) is encoded as RFC 2047 encoded-words, which every server accepts.
"""

from __future__ import annotations

import email.policy
import re
import sys
from collections.abc import Sequence
from email import headerregistry
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.policy import EmailPolicy, Policy
from email.utils import getaddresses
from io import BytesIO
from typing import Any

from ._envelope import Envelope, PreparedMessage
from ._errors import InvalidArgument, LocalProtocolError

__all__ = ["EnvelopeError", "checked_envelope", "prepare_message"]


class EnvelopeError(LocalProtocolError, ValueError):
    """The envelope cannot be derived from the message's headers.

    Raised when there is no sender or no recipient to be found, when From names several
    mailboxes without a Sender, or when there is more than one Resent- block (there is no
    reliable way to tell which is the newest). Passing `sender` and `recipients` explicitly
    avoids the derivation. A `ValueError` too, as `smtplib` raises for the same causes.
    """


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
# RFC 5322 §3.6.3: Bcc recipients are not shown to the others.
_BLIND_FIELDS = frozenset({"bcc", "resent-bcc"})

# A control character in an address would end or split an SMTP command line (CR, LF) or be
# truncated by C servers (NUL); no valid address contains one (RFC 5321 §4.1.2).
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

# Header injection check (the standard library added the same check to its own generator in
# later patch releases): a folded header may only break a line when the next line starts with
# whitespace (RFC 5322 §2.2.3).
_BARE_LINE_BREAK = re.compile(rb"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n")


class _SMTPGenerator(BytesGenerator):
    """`BytesGenerator` that skips blind-copy fields and writes faster, with identical bytes.

    Only the instance made by `_serialize` skips Bcc: the generators the standard library clones
    for sub-parts (attachments, forwarded messages) keep their headers untouched.
    """

    _skip_blind_copies: bool = False

    def _write_headers(self, msg: Message[Any, Any]) -> None:
        policy: Any = self.policy
        linesep: str = policy.linesep
        maxlen: int = policy.max_line_length or sys.maxsize
        encoding = "utf-8" if getattr(policy, "utf8", False) else "ascii"
        write = self._fp.write  # type: ignore[attr-defined]
        for name, value in msg.raw_items():
            if self._skip_blind_copies and name.lower() in _BLIND_FIELDS:
                continue
            folded = _one_line_header(value, maxlen, linesep, encoding)
            if folded is None:
                folded = policy.fold_binary(name, value)
                end = len(folded) - 2
                if not folded.endswith(b"\r\n") or _BARE_LINE_BREAK.search(folded, 0, end):
                    raise InvalidArgument(f"header {name!r} would break the header section")
            write(folded)
        write(b"\r\n")

    def _write_lines(self, lines: str) -> None:
        # The standard library writes body text line by line, two writes per line; the output
        # is the same text with every CR, LF or CRLF turned into CRLF (RFC 5321 §2.3.8), which
        # one replacement and one write produce.
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
    recipients: Sequence[str] | None = None,
) -> PreparedMessage:
    """The envelope and the bytes to transmit for `msg`.

    `sender` ("" is the null reverse-path) and `recipients` override what the headers say;
    either may be given alone. A single string as `recipients` is one recipient. Duplicate
    recipients are sent once. The caller's message is not changed (except that, exactly as in
    `msg.as_bytes()`, a multipart part without a boundary gets one).

    Raises `EnvelopeError` when the envelope cannot be derived from the headers,
    `InvalidArgument` for an address holding a control character (CR, LF, NUL ...) or an empty
    recipient, or a header that would inject a line break.
    """
    if sender is None or recipients is None:
        prefix = _resent_prefix(msg)
        if sender is None:
            sender = _sender_from_headers(msg, prefix)
        if recipients is None:
            recipients = _recipients_from_headers(msg, prefix)
    envelope = checked_envelope(sender, recipients)
    needs_utf8 = not (
        envelope.sender.isascii() and all(r.isascii() for r in envelope.recipients)
    ) or _headers_need_utf8(msg)
    return PreparedMessage(envelope, _serialize(msg, _policy_for(msg, needs_utf8)))


def checked_envelope(sender: str, recipients: Sequence[str]) -> Envelope:
    """An envelope for addresses the caller gave, checked before any connection is used.

    The same rules as `prepare_message`: a single string as `recipients` is one recipient,
    duplicates are sent once, and an address holding a control character (CR, LF, NUL ...) or an
    empty recipient raises `InvalidArgument`; no recipient at all raises `EnvelopeError`.
    """
    if isinstance(recipients, str):
        recipients = (recipients,)
    return Envelope(_checked_sender(sender), _checked_recipients(recipients))


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


def _addresses(msg: Message[Any, Any], field: str) -> list[str]:
    found: list[str] = []
    for value in msg.get_all(field, ()):
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


def _sender_from_headers(msg: Message[Any, Any], prefix: str) -> str:
    # RFC 5322 §3.6.2: Sender names the mailbox of the agent responsible for the transmission,
    # and is required when From names more than one mailbox.
    field = f"{prefix}Sender"
    mailboxes = _addresses(msg, field)
    if not mailboxes and msg.get(field) is None:
        field = f"{prefix}From"
        mailboxes = _addresses(msg, field)
    if len(mailboxes) == 1:
        return mailboxes[0]
    if not mailboxes:
        raise EnvelopeError(f"no sender: the message has no address in {field}")
    raise EnvelopeError(
        f"{field} names {len(mailboxes)} mailboxes; add a {prefix}Sender field or pass sender"
    )


def _recipients_from_headers(msg: Message[Any, Any], prefix: str) -> list[str]:
    found: list[str] = []
    for field in ("To", "Cc", "Bcc"):
        found.extend(_addresses(msg, prefix + field))
    if not found:
        raise EnvelopeError(f"no recipients: the message has no address in {prefix}To/Cc/Bcc")
    return found


def _checked_sender(sender: str) -> str:
    if _CONTROL_CHARACTER.search(sender):
        raise InvalidArgument("the sender address contains a control character (CR, LF, NUL)")
    return sender


def _checked_recipients(recipients: Sequence[str]) -> tuple[str, ...]:
    if not recipients:
        raise EnvelopeError("no recipients")
    for index, recipient in enumerate(recipients):
        if not recipient:
            raise InvalidArgument(f"recipient {index} is empty")
        if _CONTROL_CHARACTER.search(recipient):
            raise InvalidArgument(f"recipient {index} contains a control character (CR, LF, NUL)")
    # RCPT TO for the same mailbox twice would make some servers deliver twice.
    return tuple(dict.fromkeys(recipients))


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


def _serialize(msg: Message[Any, Any], policy: Policy[Any]) -> bytes:
    buffer = BytesIO()
    generator = _SMTPGenerator(buffer, mangle_from_=False, policy=policy)
    generator._skip_blind_copies = True
    generator.flatten(msg)
    return buffer.getvalue()
