"""The SMTP client session: bytes in, replies out, commands out as bytes (sans-I/O).

Two layers share one state machine (`_state`):

* the low-level API, h11 style: `send(command) -> bytes`, `receive_data(bytes)`,
  `next_event() -> Reply | NEED_DATA`;
* exchanges (`setup()`, `transaction()`, `noop()`, `rset()`), small sub-machines built on it that
  the driver steps with `next_step()` (see `_exchanges`).

Errors: `LocalProtocolError` for a command the state does not allow, raised before any byte;
`RemoteProtocolError` for anything the server got wrong. Either leaves the session in ERROR, for
good. The refusals of `transaction()` that concern only the message (`MessageTooLarge`,
`SMTPUTF8NotSupported`, `EightBitNotSupported`, `DSNNotSupported`) are the exception: they are
raised before anything is planned and leave the session usable, as the connection is fine. (A
wrong address or DSN parameter never gets this far: the `Envelope` refuses it when it is built.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ._auth import Credentials
from ._capabilities import Capabilities
from ._commands import Command, check_hostname
from ._config import TLSMode
from ._envelope import PreparedMessage
from ._errors import LocalProtocolError, RemoteProtocolError
from ._exchanges import (
    ReplyExchange,
    SetupExchange,
    TransactionExchange,
)
from ._limits import Limits
from ._reply import Reply
from ._replyparser import NEED_DATA, NeedData, ReplyParser
from ._state import (
    COMMAND_TRANSITIONS,
    KEEP,
    LAST_IN_GROUP,
    REPLY_TRANSITIONS,
    ReplyKind,
    SessionState,
    Verb,
    _Keep,
)
from ._transaction import plan_transaction

__all__ = ["NEED_DATA", "ClientSession", "NeedData"]

_NO_CAPABILITIES = Capabilities()
_DEFAULT_LIMITS = Limits()
_CLASSES = {ReplyKind.POSITIVE: (2,), ReplyKind.INTERMEDIATE: (3,), ReplyKind.FAILURE: (4, 5)}


def _reply_row(verb: Verb) -> tuple[SessionState | _Keep | None, ...]:
    """REPLY_TRANSITIONS for `verb`, indexed by the reply code's first digit (None: invalid)."""
    row: list[SessionState | _Keep | None] = [None] * 6
    for (row_verb, kind), target in REPLY_TRANSITIONS.items():
        if row_verb is verb:
            for digit in _CLASSES[kind]:
                row[digit] = target
    return tuple(row)


# One row per verb: a reply costs a dict lookup and an index, with no key to build.
_REPLY_TABLE = {verb: _reply_row(verb) for verb in Verb}
_QUIT = (Verb.QUIT,), b"QUIT\r\n"
_LEARNS = frozenset({Verb.EHLO, Verb.HELO, Verb.STARTTLS})
_STARTTLS = Verb.STARTTLS
_ERROR, _CLOSED, _CLOSING = SessionState.ERROR, SessionState.CLOSED, SessionState.CLOSING
_TLS_HANDSHAKE, _READY = SessionState.TLS_HANDSHAKE, SessionState.READY
# (state, last awaited verb, PIPELINING, TLS active, the flight's verbs) -> the state after a
# flight that `_check_flight` allowed; shared by every session, cleared when full.
_FLIGHTS_KEPT = 256
_allowed_flights: dict[
    tuple[SessionState, Verb | None, bool, bool, tuple[Verb, ...]], SessionState
] = {}


class ClientSession:
    """One SMTP client session over one connection."""

    __slots__ = (
        "_active",
        "_capabilities",
        "_closed_by_server",
        "_error",
        "_local_hostname",
        "_parser",
        "_pending",
        "_replies",
        "_shapes",
        "_state",
        "_tls_active",
        "limits",
    )

    def __init__(
        self,
        local_hostname: str = "localhost",
        limits: Limits = _DEFAULT_LIMITS,
        *,
        tls_active: bool = False,
    ) -> None:
        self._local_hostname = check_hostname(local_hostname).encode("utf-8")
        self.limits = limits
        self._parser = ReplyParser(limits)
        # The parser's queue of complete replies: the hot path pops from it directly.
        self._replies = self._parser.replies
        self._state = SessionState.AWAIT_GREETING
        self._pending: deque[Verb] = deque((Verb.GREETING,))
        self._capabilities = _NO_CAPABILITIES
        # Transaction templates for these capabilities (see plan_transaction), forgotten with them.
        self._shapes: dict[tuple[int, bool, bool], tuple[str, tuple[Verb, ...]]] = {}
        self._tls_active = tls_active
        self._closed_by_server: Reply | None = None
        self._error = ""
        self._active: object = None

    def __repr__(self) -> str:
        return f"<ClientSession {self._state.name} tls={self._tls_active}>"

    # --- what the session knows ---------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def capabilities(self) -> Capabilities:
        """What the last EHLO advertised; empty before EHLO, after HELO and after STARTTLS."""
        return self._capabilities

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def closed_by_server(self) -> Reply | None:
        """The 421 with which the server closed the session, if it did (RFC 5321 §3.8)."""
        return self._closed_by_server

    @property
    def has_unread(self) -> bool:
        """Whether anything the server sent is still unconsumed: bytes, a complete reply nobody
        asked for, or the end of the stream.

        Between exchanges a session in step with its server has nothing unread (RFC 5321 §4.2:
        one reply per command; RFC 2920 §3.1). Anything else means the next reply read would be
        judged against the wrong command, so the connection must not carry another transaction.
        """
        parser = self._parser
        # `parser.buffered`, without adding up how much.
        return bool(
            parser._buffer
            or parser.replies
            or parser._partial_size
            or parser.eof
            or self._state is _ERROR
        )

    @property
    def awaiting(self) -> tuple[Verb, ...]:
        """The verbs whose replies are still expected, oldest first."""
        return tuple(self._pending)

    # --- low-level API -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the server; b"" means the server closed its side.

        Never raises: a violation found here (too many bytes, bytes between the STARTTLS 220
        and the TLS handshake) puts the session in ERROR, and the next `next_event()` raises.
        """
        state = self._state
        if state is _ERROR or state is _CLOSED:
            return
        if state is _TLS_HANDSHAKE and data:
            # RFC 3207 §4.2 / CVE-2011-0411: plaintext after the 220 must not reach the TLS layer.
            self._fail("bytes received before the TLS handshake")
            return
        parser = self._parser
        if (
            data
            and not (parser._buffer or parser.replies or parser._partial_size or parser.eof)
            and len(data) <= parser._max_buffered
        ):
            # `parser.feed(data)` when it holds nothing: the usual read, a flight's replies.
            parser._buffer = data
            return
        try:
            parser.feed(data)
        except RemoteProtocolError as exc:
            self._fail(str(exc))

    def next_event(self) -> Reply | NeedData:
        """The next complete reply, or NEED_DATA.

        A 421 answers the oldest awaited command (or arrives unprompted while nothing is awaited):
        either way the session becomes CLOSED and the reply is returned. Any other reply while
        nothing is awaited is a RemoteProtocolError. After the server closed an idle session
        (end of stream, nothing awaited) the state is CLOSED and this returns NEED_DATA.
        """
        replies = self._replies
        state = self._state
        if replies:
            if state is _ERROR:
                raise RemoteProtocolError(self._error)
            if state is _CLOSED:
                return NEED_DATA
            reply = replies.popleft()
        else:
            parser = self._parser
            if not (parser._buffer or parser.eof or parser._broken) and state is not _ERROR:
                # Nothing received and nothing wrong: the usual answer right after a write.
                return NEED_DATA
            if state is _ERROR:
                raise RemoteProtocolError(self._error)
            if state is _CLOSED:
                return NEED_DATA
            try:
                parsed = parser.next_reply()
            except RemoteProtocolError as exc:
                raise self._fail(str(exc)) from None
            if parsed is None:
                if parser.eof:
                    if self._pending and state is not _CLOSING:
                        raise self._fail("connection closed while a reply was awaited")
                    self._close()
                return NEED_DATA
            reply = parsed
        code = reply.code
        if code == 421:
            self._closed_by_server = reply
            self._close()
            return reply
        pending = self._pending
        if not pending:
            raise self._fail(f"unsolicited {code} reply")
        verb = pending.popleft()
        target = _REPLY_TABLE[verb][code // 100]
        if target is None:
            raise self._fail(f"{code} is not a valid reply to {verb.value}")
        if target is not KEEP:
            self._state = target
        if code < 300 and verb in _LEARNS:
            self._learn(verb, reply)
        return reply

    def _learn(self, verb: Verb, reply: Reply) -> None:
        self._shapes = {}
        if verb is Verb.EHLO:
            self._capabilities = Capabilities.from_ehlo(reply)
            return
        self._capabilities = _NO_CAPABILITIES
        if verb is Verb.STARTTLS and self._parser.buffered:
            # RFC 3207 §4.2, the response-injection class (CVE-2011-0411): nothing the server sent
            # in plaintext after its 220 may be taken as said inside TLS.
            raise self._fail("bytes received after the STARTTLS 220 reply")

    def send(self, command: Command) -> bytes:
        """The bytes of `command`, to be written as they are; records the reply it awaits."""
        if not isinstance(command, Command):
            raise self._misuse("send() takes a Command")
        return self._emit((command.expects(),), command.to_bytes())

    def tls_established(self) -> None:
        """The driver finished the TLS handshake after STARTTLS: greet again (RFC 3207 §4.2).

        Raises RemoteProtocolError if plaintext bytes arrived during the hand-off.
        """
        if self._state is SessionState.ERROR:
            raise RemoteProtocolError(self._error)
        if self._state is not SessionState.TLS_HANDSHAKE:
            raise self._misuse("tls_established() outside a STARTTLS hand-off")
        self._tls_active = True
        self._state = SessionState.GREETED

    def quit(self) -> bytes:
        """The bytes of QUIT; the session is then CLOSING (CLOSED once a reply or EOF arrives)."""
        self._active = None
        return self._emit(*_QUIT)

    # --- exchanges -----------------------------------------------------------------------------

    def setup(
        self,
        tls: TLSMode = TLSMode.STARTTLS,
        tls_active: bool = False,
        username: str | None = None,
        password: str | None = None,
        oauth2_token: str | None = None,
        mechanisms: Sequence[str] | None = None,
        allow_plaintext_auth: bool = False,
    ) -> SetupExchange:
        """Greeting, EHLO (HELO fallback), STARTTLS per `tls`, EHLO again, AUTH if credentials."""
        credentials = None
        if username is not None or password is not None or oauth2_token is not None:
            credentials = Credentials(username, password, oauth2_token)
        if not isinstance(tls, TLSMode):
            raise LocalProtocolError("tls must be a TLSMode")
        self._begin(SessionState.AWAIT_GREETING, Verb.GREETING)
        self._tls_active = self._tls_active or tls_active
        exchange = SetupExchange(
            self,
            self._local_hostname,
            tls,
            credentials,
            None if mechanisms is None else tuple(mechanisms),
            allow_plaintext_auth,
        )
        self._active = exchange
        return exchange

    def transaction(self, message: PreparedMessage) -> TransactionExchange:
        """One mail transaction for `message`; local refusals are raised here, before any byte."""
        if self._active is not None or self._state is not _READY or self._pending:
            self._begin(_READY, Verb.MAIL)  # raises the precise LocalProtocolError
        plan = plan_transaction(
            message, self._capabilities, self.limits.bdat_chunk_size, self._shapes
        )
        exchange = TransactionExchange(self, plan)
        self._active = exchange
        return exchange

    def noop(self) -> ReplyExchange:
        """NOOP, to probe an idle session; `result` is the reply (a 421 leaves it CLOSED)."""
        self._begin(self._state, Verb.NOOP)
        exchange = ReplyExchange(self, Verb.NOOP, b"NOOP\r\n")
        self._active = exchange
        return exchange

    def rset(self) -> ReplyExchange:
        """RSET; `result` is the reply."""
        self._begin(self._state, Verb.RSET)
        exchange = ReplyExchange(self, Verb.RSET, b"RSET\r\n")
        self._active = exchange
        return exchange

    # --- internals shared with the exchanges ---------------------------------------------------

    def _begin(self, state: SessionState, verb: Verb) -> None:
        if self._active is not None:
            raise self._misuse("another exchange is still running on this session")
        if self._state is not state:
            raise self._misuse(f"this exchange cannot start in state {self._state.name}")
        if verb is Verb.GREETING:
            return
        if self._pending or (state, verb) not in COMMAND_TRANSITIONS:
            raise self._misuse(f"{verb.value} is not allowed in state {state.name}")

    def _finished(self, exchange: object) -> None:
        if self._active is exchange:
            self._active = None

    def _emit(self, verbs: tuple[Verb, ...], data: bytes) -> bytes:
        """`data`, once the commands it carries (`verbs`, in order) are checked and recorded."""
        pending = self._pending
        # The check depends on nothing else, and a session repeats the same few flights: its
        # outcome (when the flight is allowed) is remembered.
        key = (
            self._state,
            pending[-1] if pending else None,
            self._capabilities.pipelining,
            self._tls_active,
            verbs,
        )
        state = _allowed_flights.get(key)
        if state is None:
            state = self._check_flight(verbs)
            if len(_allowed_flights) >= _FLIGHTS_KEPT:
                _allowed_flights.clear()
            _allowed_flights[key] = state
        pending.extend(verbs)
        self._state = state
        return data

    def _check_flight(self, verbs: tuple[Verb, ...]) -> SessionState:
        """The state after `verbs` are sent in one flight, or the misuse they are."""
        state = self._state
        pending = self._pending
        previous = pending[-1] if pending else None
        pipelining = self._capabilities.pipelining
        for verb in verbs:
            target = COMMAND_TRANSITIONS.get((state, verb))
            if target is None:
                raise self._misuse(f"{verb.value} is not allowed in state {state.name}")
            if previous is not None and (previous in LAST_IN_GROUP or not pipelining):
                raise self._misuse(f"{verb.value} cannot follow {previous.value} in one flight")
            if verb is _STARTTLS and self._tls_active:
                raise self._misuse("STARTTLS on a session that already uses TLS")
            previous = verb
            state = target
        return state

    def _close(self) -> None:
        self._state = SessionState.CLOSED
        self._pending.clear()
        self._parser.discard()

    def _fail(self, reason: str) -> RemoteProtocolError:
        self._state = SessionState.ERROR
        self._error = reason
        self._pending.clear()
        self._parser.discard()
        return RemoteProtocolError(reason)

    def _misuse(self, reason: str) -> LocalProtocolError:
        if self._state is not SessionState.CLOSED:
            self._state = SessionState.ERROR
            self._error = f"session failed earlier: {reason}"
            self._pending.clear()
        return LocalProtocolError(reason)
