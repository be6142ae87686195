"""Planning one mail transaction: validation, MAIL/RCPT parameters and the data on the wire.

Everything that can refuse a message locally happens here, before the machine produces a byte,
and everything the hot path can compute once is computed here.

Decisions (see docs/protocol.md):

* 8-bit content is never re-encoded. A body with 8-bit bytes is sent with BODY=8BITMIME when the
  server offers 8BITMIME (RFC 6152), else with SMTPUTF8 when offered (RFC 6531 §3.1 servers take
  8-bit data); with neither it is refused with `EightBitNotSupported`.
* SMTPUTF8 is requested only when an address or a header field has a non-ASCII character.
* SIZE=<n> (RFC 1870) is sent whenever SIZE is offered; n is the size after CRLF normalisation and
  before dot-stuffing. An advertised limit of 0 means "no fixed limit".
* DSN parameters (RFC 3461) are validated always and sent only when DSN is offered. ORCPT is left
  out for a non-ASCII recipient (its utf-8 address type, RFC 6533, is not implemented).
* When the server offers CHUNKING, BDAT is used (RFC 3030): no dot-stuffing, and with PIPELINING
  the whole transaction is one write. Data up to `Limits.bdat_chunk_size` goes in one `BDAT n LAST`.
"""

from __future__ import annotations

from ._body import dot_stuffed, normalise_line_endings
from ._capabilities import Capabilities
from ._commands import check_address
from ._envelope import PreparedMessage
from ._errors import (
    EightBitNotSupported,
    InvalidArgument,
    MessageTooLarge,
    SMTPUTF8NotSupported,
)
from ._state import Verb

__all__ = ["TransactionPlan", "plan_transaction"]

_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_MAIL, _RCPT, _DATA = Verb.MAIL, Verb.RCPT, Verb.DATA


def _xtext(value: str) -> str:
    # RFC 3461 §4: "+", "=" and every byte outside "!".."~" are written as "+XX".
    return "".join(
        char
        if "!" <= char <= "~" and char not in "+="
        else "".join(f"+{byte:02X}" for byte in char.encode())
        for char in value
    )


class TransactionPlan:
    """The lines and data of one transaction, ready to be written."""

    __slots__ = ("body", "chunks", "flight", "flight_verbs", "lines", "pipelined", "recipients")

    def __init__(
        self,
        recipients: tuple[str, ...],
        pipelined: bool,
        flight: bytes,
        flight_verbs: tuple[Verb, ...],
        lines: tuple[bytes, ...],
        body: bytes,
        chunks: tuple[tuple[bytes, bytes | memoryview], ...],
    ) -> None:
        self.recipients = recipients
        self.pipelined = pipelined
        # With PIPELINING: MAIL, every RCPT and (unless BDAT is used) DATA, as one write, and
        # the verbs it carries. Without: `lines` holds the MAIL line, then each RCPT line.
        self.flight = flight
        self.flight_verbs = flight_verbs
        self.lines = lines
        # DATA: the dot-stuffed data, without its "." line; BDAT: each chunk's BDAT command line
        # and its data.
        self.body = body
        self.chunks = chunks

    def __repr__(self) -> str:
        return f"<TransactionPlan for {len(self.recipients)} recipient(s)>"


def plan_transaction(
    message: PreparedMessage, capabilities: Capabilities, chunk_size: int
) -> TransactionPlan:
    """Validate `message` against `capabilities` and lay out its transaction.

    Raises InvalidArgument, MessageTooLarge, SMTPUTF8NotSupported or EightBitNotSupported.
    """
    envelope = message.envelope
    sender = check_address(envelope.sender, "sender")
    recipients = envelope.recipients
    if not recipients:
        raise InvalidArgument("a message needs at least one recipient")
    for recipient in recipients:
        if not check_address(recipient, "recipient"):
            raise InvalidArgument("a recipient address must not be empty")
    data = message.data
    if not isinstance(data, bytes):
        data = bytes(data)
    data = normalise_line_endings(data)
    caps = capabilities
    params: list[str] = []
    if caps.size is not None:
        if caps.size and len(data) > caps.size:
            raise MessageTooLarge(len(data), caps.size)
        params.append(f"SIZE={len(data)}")

    # Addresses were checked printable: joining them cannot hide a non-ASCII character.
    needs_utf8 = not (sender.isascii() and "".join(recipients).isascii())
    eight_bit = not data.isascii()
    if eight_bit and not needs_utf8:
        end = data.find(b"\r\n\r\n")
        needs_utf8 = not (data if end < 0 else data[:end]).isascii()
    if needs_utf8 and not caps.smtputf8:
        raise SMTPUTF8NotSupported("non-ASCII addresses or headers, and the server lacks SMTPUTF8")
    if eight_bit:
        if caps.eight_bit_mime:
            params.append("BODY=8BITMIME")
        elif caps.smtputf8:
            needs_utf8 = True
        else:
            raise EightBitNotSupported(
                "8-bit data, and the server offers neither 8BITMIME nor SMTPUTF8"
            )
    if needs_utf8:
        params.append("SMTPUTF8")

    rcpt_params = None
    if envelope.ret is not None or envelope.envid is not None or envelope.notify is not None:
        rcpt_params = _dsn_parameters(message, params, caps.dsn)
    elif envelope.orcpt and caps.dsn:
        rcpt_params = ""
    tail = (" " + " ".join(params)) if params else ""
    if rcpt_params is None:
        # The common case, no RCPT parameter: one join writes every RCPT line.
        rcpt = "RCPT TO:<" + ">\r\nRCPT TO:<".join(recipients) + ">\r\n"
    else:
        rcpt = "".join(
            [
                f"RCPT TO:<{recipient}>{rcpt_params}{_orcpt(recipient, envelope.orcpt)}\r\n"
                for recipient in recipients
            ]
        )
    commands = f"MAIL FROM:<{sender}>{tail}\r\n{rcpt}"
    pipelined = caps.pipelining
    chunking = caps.chunking
    flight = b""
    flight_verbs: tuple[Verb, ...] = ()
    lines: tuple[bytes, ...] = ()
    if pipelined:
        flight_verbs = (_MAIL,) + (_RCPT,) * len(recipients)
        if chunking:
            flight = commands.encode()
        else:
            flight = (commands + "DATA\r\n").encode()
            flight_verbs += (_DATA,)
    else:
        # The addresses and parameters were checked printable, so each CRLF ends one command.
        lines = tuple(commands.encode().splitlines(keepends=True))

    if not chunking:
        body = dot_stuffed(data)
        return TransactionPlan(recipients, pipelined, flight, flight_verbs, lines, body, ())
    if len(data) <= chunk_size:
        chunks: tuple[tuple[bytes, bytes | memoryview], ...] = (
            (b"BDAT %d LAST\r\n" % len(data), data),
        )
    else:
        # Slices of one memoryview: the chunks share the message's buffer instead of copying it.
        view = memoryview(data)
        starts = range(0, len(data), chunk_size)
        chunks = tuple(
            (
                b"BDAT %d%s\r\n"
                % (len(view[start : start + chunk_size]), b" LAST" if start == starts[-1] else b""),
                view[start : start + chunk_size],
            )
            for start in starts
        )
    return TransactionPlan(recipients, pipelined, flight, flight_verbs, lines, b"", chunks)


def _orcpt(recipient: str, wanted: bool) -> str:
    return f" ORCPT=rfc822;{_xtext(recipient)}" if wanted and recipient.isascii() else ""


def _dsn_parameters(message: PreparedMessage, mail_params: list[str], offered: bool) -> str | None:
    """Validate the DSN fields; append MAIL's to `mail_params`; return RCPT's common tail.

    None means no DSN parameter at all for RCPT (the common, fast case).
    """
    envelope = message.envelope
    ret, envid, notify = envelope.ret, envelope.envid, envelope.notify
    if ret is not None and (not isinstance(ret, str) or ret.upper() not in ("FULL", "HDRS")):
        raise InvalidArgument('RET must be "FULL" or "HDRS"')
    if envid is not None and (
        not isinstance(envid, str) or not envid or not envid.isascii() or not envid.isprintable()
    ):
        raise InvalidArgument("ENVID must be non-empty printable ASCII")
    if notify is not None:
        words = [word.upper() for word in notify if isinstance(word, str)]
        if len(words) != len(notify) or not words or len(set(words)) != len(words):
            raise InvalidArgument("NOTIFY must be NEVER or distinct SUCCESS, FAILURE, DELAY")
        if words != ["NEVER"] and not _NOTIFY_WORDS.issuperset(words):
            raise InvalidArgument("NOTIFY must be NEVER or distinct SUCCESS, FAILURE, DELAY")
    if not offered:
        return None
    if ret is not None:
        mail_params.append(f"RET={ret.upper()}")
    if envid is not None:
        mail_params.append(f"ENVID={_xtext(envid)}")
    if notify is None and not envelope.orcpt:
        return None
    return f" NOTIFY={','.join(word.upper() for word in notify)}" if notify is not None else ""
