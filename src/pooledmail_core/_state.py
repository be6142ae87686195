"""The SMTP client session's states and transitions, as data.

Theory of operation
-------------------

The client drives an SMTP session by sending commands and reading one reply per command, in
order (RFC 5321 §4.1). With PIPELINING (RFC 2920) several commands are written before their replies
are read, so the machine keeps a FIFO of the verbs whose replies it awaits and matches each reply
to the oldest one.

Two tables decide everything:

* `COMMAND_TRANSITIONS[(state, verb)]` is the state right after the command is produced. It is
  *optimistic*: sending MAIL enters TRANSACTION at once, so that RCPT and DATA may follow in the
  same flight. A missing key means the command is not allowed in that state: `LocalProtocolError`,
  before any byte is produced.
* `REPLY_TRANSITIONS[(verb, kind)]` is what a reply of kind POSITIVE (2xx), INTERMEDIATE (3xx) or
  FAILURE (4xx/5xx) to that verb does: a new state, or `KEEP` to stay where the optimistic
  transitions put the session. A missing key (for example a 2xx to DATA, or a 354 to MAIL) is a
  `RemoteProtocolError`. A 421 is not in the table: whatever it answers, the server is closing the
  channel (RFC 5321 §3.8), so the session becomes CLOSED and every other awaited reply is dropped.

Because optimistic transitions are undone by failure replies, the order of a flight matters:
RFC 2920 §3.1 lets only some verbs be followed by another command before their reply arrives.
`LAST_IN_GROUP` lists those that must end a flight (EHLO, DATA, NOOP, QUIT, ..., and the ones whose
reply changes the connection itself: STARTTLS, AUTH). Without PIPELINING every verb ends a flight.

The greeting is treated as the reply to a pseudo-verb GREETING that the machine awaits from the
start. ERROR is sticky: once a protocol error was raised, nothing is allowed.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "COMMAND_TRANSITIONS",
    "KEEP",
    "LAST_IN_GROUP",
    "REPLY_TRANSITIONS",
    "ReplyKind",
    "SessionState",
    "Verb",
]


class SessionState(enum.Enum):
    """Where the session is, as far as the client knows."""

    # Members are singletons: identity hashing is correct, and far cheaper than Enum's.
    __hash__ = object.__hash__

    AWAIT_GREETING = "await_greeting"
    GREETED = "greeted"  # 220 received (or TLS just established): EHLO/HELO next
    REJECTED = "rejected"  # the greeting refused the session: only QUIT makes sense
    READY = "ready"  # EHLO/HELO accepted, no mail transaction open
    TLS_HANDSHAKE = "tls_handshake"  # STARTTLS accepted, the TLS handshake is the driver's turn
    AUTH = "auth"  # an AUTH exchange is under way
    TRANSACTION = "transaction"  # MAIL sent, RCPT / DATA / BDAT / RSET may follow
    BODY = "body"  # DATA answered 354: the message data is expected
    CLOSING = "closing"  # QUIT sent
    CLOSED = "closed"
    ERROR = "error"


class Verb(enum.Enum):
    """What a command (or, for GREETING, the connection itself) asks of the server."""

    __hash__ = object.__hash__

    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    AUTH_RESPONSE = "auth_response"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "end_of_data"  # the message data and its "." line
    BDAT = "BDAT"
    BDAT_LAST = "BDAT_LAST"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


class ReplyKind(enum.Enum):
    __hash__ = object.__hash__
    POSITIVE = "2xx"
    INTERMEDIATE = "3xx"
    FAILURE = "4xx/5xx"


class _Keep(enum.Enum):
    __hash__ = object.__hash__
    KEEP = "keep"


KEEP: Final = _Keep.KEEP

S = SessionState
V = Verb
R = ReplyKind

COMMAND_TRANSITIONS: Final[dict[tuple[SessionState, Verb], SessionState]] = {
    (S.GREETED, V.EHLO): S.GREETED,
    (S.GREETED, V.HELO): S.GREETED,
    (S.GREETED, V.RSET): S.GREETED,
    (S.GREETED, V.NOOP): S.GREETED,
    (S.GREETED, V.QUIT): S.CLOSING,
    (S.REJECTED, V.QUIT): S.CLOSING,
    (S.READY, V.EHLO): S.READY,
    (S.READY, V.HELO): S.READY,
    (S.READY, V.STARTTLS): S.READY,
    (S.READY, V.AUTH): S.AUTH,
    (S.READY, V.MAIL): S.TRANSACTION,
    (S.READY, V.RSET): S.READY,
    (S.READY, V.NOOP): S.READY,
    (S.READY, V.QUIT): S.CLOSING,
    (S.AUTH, V.AUTH_RESPONSE): S.AUTH,
    (S.TRANSACTION, V.RCPT): S.TRANSACTION,
    (S.TRANSACTION, V.DATA): S.TRANSACTION,
    (S.TRANSACTION, V.BDAT): S.TRANSACTION,
    (S.TRANSACTION, V.BDAT_LAST): S.TRANSACTION,
    (S.TRANSACTION, V.RSET): S.READY,
    (S.TRANSACTION, V.NOOP): S.TRANSACTION,
    (S.TRANSACTION, V.QUIT): S.CLOSING,
    # RFC 5321 §4.1.4: whatever the final reply says, the transaction is over.
    (S.BODY, V.END_OF_DATA): S.READY,
}

_ANY_REPLY_KEEPS = (V.RCPT, V.RSET, V.NOOP, V.END_OF_DATA, V.BDAT)

REPLY_TRANSITIONS: Final[dict[tuple[Verb, ReplyKind], SessionState | _Keep]] = {
    (V.GREETING, R.POSITIVE): S.GREETED,
    # RFC 5321 §3.1: after a 554 greeting the client should send QUIT and nothing else.
    (V.GREETING, R.FAILURE): S.REJECTED,
    (V.EHLO, R.POSITIVE): S.READY,
    (V.EHLO, R.FAILURE): KEEP,
    (V.HELO, R.POSITIVE): S.READY,
    (V.HELO, R.FAILURE): KEEP,
    (V.STARTTLS, R.POSITIVE): S.TLS_HANDSHAKE,
    (V.STARTTLS, R.FAILURE): KEEP,
    (V.AUTH, R.POSITIVE): S.READY,
    (V.AUTH, R.INTERMEDIATE): KEEP,
    (V.AUTH, R.FAILURE): S.READY,
    (V.AUTH_RESPONSE, R.POSITIVE): S.READY,
    (V.AUTH_RESPONSE, R.INTERMEDIATE): KEEP,
    (V.AUTH_RESPONSE, R.FAILURE): S.READY,
    (V.MAIL, R.POSITIVE): KEEP,
    (V.MAIL, R.FAILURE): S.READY,
    (V.DATA, R.INTERMEDIATE): S.BODY,
    (V.DATA, R.FAILURE): KEEP,
    # RFC 3030 §4.2: a failed BDAT leaves the transaction for the client to RSET.
    (V.BDAT_LAST, R.POSITIVE): S.READY,
    (V.BDAT_LAST, R.FAILURE): KEEP,
    (V.QUIT, R.POSITIVE): S.CLOSED,
    (V.QUIT, R.FAILURE): S.CLOSED,
    **{(verb, kind): KEEP for verb in _ANY_REPLY_KEEPS for kind in (R.POSITIVE, R.FAILURE)},
}

# RFC 2920 §3.1 (EHLO, DATA, NOOP, QUIT), plus the verbs whose reply changes what may follow:
# STARTTLS (RFC 3207 §4 forbids pipelining past it), AUTH and its responses, the end of data
# and the last BDAT chunk. The greeting must arrive before the client says anything (§4.3.1).
LAST_IN_GROUP: Final = frozenset(
    {
        V.GREETING,
        V.EHLO,
        V.HELO,
        V.STARTTLS,
        V.AUTH,
        V.AUTH_RESPONSE,
        V.DATA,
        V.END_OF_DATA,
        V.BDAT_LAST,
        V.NOOP,
        V.QUIT,
    }
)

del S, V, R
