"""Planning one mail transaction: validation, MAIL/RCPT parameters and the data on the wire.

Everything that can refuse a message locally happens here, before the machine produces a byte,
and everything the hot path can compute once is computed here.

Decisions (see docs/internals/protocol.md):

* 8-bit content is never re-encoded. A body with 8-bit bytes is sent with BODY=8BITMIME when the
  server offers 8BITMIME (RFC 6152), else with SMTPUTF8 when offered (RFC 6531 §3.1 servers take
  8-bit data); with neither it is refused with `EightBitNotSupported`.
* SMTPUTF8 is requested only when an address or a header field has a non-ASCII character.
* SIZE=<n> (RFC 1870) is sent whenever SIZE is offered; n is the size after CRLF normalisation and
  before dot-stuffing. An advertised limit of 0 means "no fixed limit".
* The addresses and DSN parameters were checked when the `Envelope` was built (an Envelope that
  exists is valid), so they are not checked again per attempt.
* DSN parameters (RFC 3461) are sent only when DSN is offered (RFC 3461 §4: a client must not use
  them otherwise). A message that asks for DSN from a server that does not offer it is refused
  with `DSNNotSupported` instead of being sent without: the caller relies on the notifications it
  asked for (or asked not to get). ORCPT is left out for a non-ASCII recipient (its utf-8 address
  type, RFC 6533, is not implemented).
* When the server offers CHUNKING, BDAT is used (RFC 3030): no dot-stuffing, and with PIPELINING
  the whole transaction is one write. Data up to `Limits.bdat_chunk_size` goes in one `BDAT n LAST`.
"""

from __future__ import annotations

from ._body import dot_stuffed, normalise_line_endings
from ._capabilities import Capabilities
from ._dsn import xtext
from ._envelope import Envelope, PreparedMessage
from ._errors import (
    DSNNotSupported,
    EightBitNotSupported,
    MessageTooLarge,
    SMTPUTF8NotSupported,
)
from ._state import Verb

__all__ = ["SHAPES_KEPT", "TransactionPlan", "plan_transaction"]

_MAIL, _RCPT, _DATA = Verb.MAIL, Verb.RCPT, Verb.DATA


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


# How many transaction shapes (see `plan_transaction`) a session remembers.
SHAPES_KEPT = 16


def plan_transaction(
    message: PreparedMessage,
    capabilities: Capabilities,
    chunk_size: int,
    shapes: dict[tuple[int, bool, bool], tuple[str, tuple[Verb, ...]]] | None = None,
) -> TransactionPlan:
    """Validate `message` against `capabilities` and lay out its transaction.

    `shapes` is the session's memo of command templates, valid for `capabilities` only: the
    MAIL and RCPT lines of a message without DSN parameters depend on the message only through
    its addresses, its size, and whether it needs 8BITMIME or SMTPUTF8, so they are written from
    a template made once per number of recipients and those two flags.

    Raises MessageTooLarge, SMTPUTF8NotSupported, EightBitNotSupported or DSNNotSupported.
    """
    envelope = message.envelope
    sender = envelope.sender
    recipients = envelope.recipients
    data = message.data
    if type(data) is not bytes:
        data = bytes(data)
    data = normalise_line_endings(data)
    size = len(data)
    caps = capabilities
    if caps.size and size > caps.size:
        raise MessageTooLarge(size, caps.size)

    # Addresses were checked printable: joining them cannot hide a non-ASCII character.
    needs_utf8 = not (
        sender.isascii()
        and (recipients[0].isascii() if len(recipients) == 1 else "".join(recipients).isascii())
    )
    eight_bit = not data.isascii()
    if eight_bit and not needs_utf8:
        end = data.find(b"\r\n\r\n")
        needs_utf8 = not (data if end < 0 else data[:end]).isascii()
    if needs_utf8 and not caps.smtputf8:
        raise SMTPUTF8NotSupported("non-ASCII addresses or headers, and the server lacks SMTPUTF8")
    if eight_bit and not caps.eight_bit_mime:
        if not caps.smtputf8:
            raise EightBitNotSupported(
                "8-bit data, and the server offers neither 8BITMIME nor SMTPUTF8"
            )
        needs_utf8 = True
    pipelined = caps.pipelining
    chunking = caps.chunking
    if (
        envelope.ret is None
        and envelope.envid is None
        and envelope.notify is None
        and not envelope.orcpt
    ):
        key = (len(recipients), eight_bit, needs_utf8)
        shape = shapes.get(key) if shapes is not None else None
        if shape is None:
            shape = _shape(caps, len(recipients), eight_bit, needs_utf8)
            if shapes is not None:
                if len(shapes) >= SHAPES_KEPT:
                    shapes.clear()
                shapes[key] = shape
        template, flight_verbs = shape
        if caps.size is None:
            commands = template % ((sender, *recipients))
        else:
            commands = template % ((sender, size, *recipients))
    else:
        if not caps.dsn:
            raise DSNNotSupported(
                "the message asks for delivery status notifications (NOTIFY, RET, ENVID or "
                "ORCPT) and the server does not offer DSN (RFC 3461)"
            )
        commands, flight_verbs = _commands(envelope, caps, size, eight_bit, needs_utf8)
    flight = b""
    lines: tuple[bytes, ...] = ()
    if pipelined:
        flight = commands.encode()
    else:
        # The addresses and parameters were checked printable, so each CRLF ends one command.
        lines = tuple(commands.encode().splitlines(keepends=True))
        flight_verbs = ()

    if not chunking:
        body = dot_stuffed(data)
        return TransactionPlan(recipients, pipelined, flight, flight_verbs, lines, body, ())
    if size <= chunk_size:
        chunks: tuple[tuple[bytes, bytes | memoryview], ...] = ((b"BDAT %d LAST\r\n" % size, data),)
    else:
        # Slices of one memoryview: the chunks share the message's buffer instead of copying it.
        view = memoryview(data)
        starts = range(0, size, chunk_size)
        chunks = tuple(
            (
                b"BDAT %d%s\r\n"
                % (len(view[start : start + chunk_size]), b" LAST" if start == starts[-1] else b""),
                view[start : start + chunk_size],
            )
            for start in starts
        )
    return TransactionPlan(recipients, pipelined, flight, flight_verbs, lines, b"", chunks)


def _mail_parameters(caps: Capabilities, eight_bit: bool, needs_utf8: bool) -> list[str]:
    """MAIL's parameters other than DSN's, in order; SIZE's value as `%d` (RFC 1870)."""
    params: list[str] = []
    if caps.size is not None:
        params.append("SIZE=%d")
    if eight_bit and caps.eight_bit_mime:
        params.append("BODY=8BITMIME")
    if needs_utf8:
        params.append("SMTPUTF8")
    return params


def _shape(
    caps: Capabilities, recipients: int, eight_bit: bool, needs_utf8: bool
) -> tuple[str, tuple[Verb, ...]]:
    """The commands of a transaction without DSN parameters as a %-template (the sender, SIZE's
    value if offered, then each recipient), and the verbs of the pipelined flight."""
    params = _mail_parameters(caps, eight_bit, needs_utf8)
    tail = (" " + " ".join(params)) if params else ""
    template = f"MAIL FROM:<%s>{tail}\r\n" + "RCPT TO:<%s>\r\n" * recipients
    verbs = (_MAIL,) + (_RCPT,) * recipients
    if caps.pipelining and not caps.chunking:
        template += "DATA\r\n"
        verbs += (_DATA,)
    return template, verbs


def _commands(
    envelope: Envelope, caps: Capabilities, size: int, eight_bit: bool, needs_utf8: bool
) -> tuple[str, tuple[Verb, ...]]:
    """The commands of a transaction with DSN parameters, and the verbs of the pipelined flight.

    Also what the template of `_shape` must write for any envelope without them (a test holds
    the two to each other)."""
    params = [
        param % size if param.startswith("SIZE") else param
        for param in _mail_parameters(caps, eight_bit, needs_utf8)
    ]
    recipients = envelope.recipients
    rcpt_params = None
    if not (
        envelope.ret is None
        and envelope.envid is None
        and envelope.notify is None
        and not envelope.orcpt
    ):
        rcpt_params = _dsn_parameters(envelope, params)
    tail = (" " + " ".join(params)) if params else ""
    if rcpt_params is None:
        rcpt = "RCPT TO:<" + ">\r\nRCPT TO:<".join(recipients) + ">\r\n"
    else:
        rcpt = "".join(
            [
                f"RCPT TO:<{recipient}>{rcpt_params}{_orcpt(recipient, envelope.orcpt)}\r\n"
                for recipient in recipients
            ]
        )
    commands = f"MAIL FROM:<{envelope.sender}>{tail}\r\n{rcpt}"
    verbs = (_MAIL,) + (_RCPT,) * len(recipients)
    if caps.pipelining and not caps.chunking:
        commands += "DATA\r\n"
        verbs += (_DATA,)
    return commands, verbs


def _orcpt(recipient: str, wanted: bool) -> str:
    return f" ORCPT=rfc822;{xtext(recipient)}" if wanted and recipient.isascii() else ""


def _dsn_parameters(envelope: Envelope, mail_params: list[str]) -> str:
    """Append MAIL's DSN parameters to `mail_params`; return RCPT's common tail."""
    # The values were checked and upper-cased when the Envelope was built.
    if envelope.ret is not None:
        mail_params.append(f"RET={envelope.ret}")
    if envelope.envid is not None:
        mail_params.append(f"ENVID={xtext(envelope.envid)}")
    notify = envelope.notify
    return "" if notify is None else f" NOTIFY={','.join(notify)}"
