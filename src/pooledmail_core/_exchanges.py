"""Exchanges: the small sans-I/O sub-machines the driver steps through.

An exchange runs one piece of the conversation (session setup, one mail transaction, a NOOP or
an RSET) on a `ClientSession`. The driver calls `next_step()` until it returns `DONE`:

* `Write(data)`: one flight; send it with one write, then call `next_step()` again;
* `NEED_DATA`: read from the connection, `session.receive_data(...)`, then `next_step()`;
* `StartTLS()`: run the TLS handshake, call `exchange.tls_established()`, then `next_step()`;
* `DONE`: `exchange.result` is ready.

Protocol errors propagate from `next_step()` as `RemoteProtocolError` (the session is then in
ERROR); calling `next_step()` after that raises `LocalProtocolError`.

Each exchange is written as a generator that yields steps, so the conversation reads top to
bottom; `_reply()` yields NEED_DATA until the session has the next reply.
"""

from __future__ import annotations

import abc
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from ._auth import Credentials, choose_mechanism
from ._classify import Stage
from ._config import TLSMode
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._reply import Reply
from ._replyparser import NEED_DATA, NeedData
from ._state import SessionState, Verb
from ._transaction import TransactionPlan

if TYPE_CHECKING:
    from ._session import ClientSession

__all__ = [
    "COALESCE_LIMIT",
    "DONE",
    "NEED_DATA",
    "Done",
    "Exchange",
    "ReplyExchange",
    "SetupExchange",
    "SetupResult",
    "StartTLS",
    "Step",
    "TransactionExchange",
    "TransactionOutcome",
    "Write",
]


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class Write:
    """One flight of bytes to hand to the transport in one write. The repr hides the bytes.

    `data` is a memoryview when it is a slice of a large message, which is never copied.
    """

    data: bytes | memoryview

    def __repr__(self) -> str:
        return f"Write(<{len(self.data)} bytes>)"


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class StartTLS:
    """Run the TLS handshake now, then call `tls_established()` on the exchange."""


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class Done:
    """The exchange is over; its `result` is ready."""


DONE: Final = Done()
_START_TLS: Final = StartTLS()

_new = object.__new__
_set = object.__setattr__
_STAGE_MAIL, _STAGE_RCPT, _STAGE_DATA = Stage.MAIL, Stage.RCPT, Stage.DATA
_STAGE_BODY, _STAGE_DATA_END = Stage.BODY, Stage.DATA_END

# The verbs each write carries, as `ClientSession._emit` takes them.
_EHLO, _HELO, _STARTTLS = (Verb.EHLO,), (Verb.HELO,), (Verb.STARTTLS,)
_AUTH, _AUTH_RESPONSE = (Verb.AUTH,), (Verb.AUTH_RESPONSE,)
_MAIL, _RCPT, _DATA, _END_OF_DATA = (Verb.MAIL,), (Verb.RCPT,), (Verb.DATA,), (Verb.END_OF_DATA,)
_BDAT, _BDAT_LAST, _RSET = (Verb.BDAT,), (Verb.BDAT_LAST,), (Verb.RSET,)

Step = Write | StartTLS | NeedData | Done

# Message data up to this size travels in the same write as the commands before it (and, for
# DATA, with the "." line after it): one system call per flight. Larger data gets writes of its
# own, so that it is never copied to be joined with a few bytes of commands, and the terminator
# leaves only after the whole body has been handed over.
COALESCE_LIMIT: Final = 1 << 16
_Steps = Generator[Write | StartTLS | NeedData, None, None]
_T = TypeVar("_T")


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class SetupResult:
    """How session setup ended.

    ok=True: `stage` is the last stage done (EHLO, TLS or AUTH) and `reply` its reply. ok=False:
    `stage` is the failing one (GREETING, EHLO, TLS, AUTH), `reply` the server's refusal if there
    was one, `reason` a short text without secrets.
    """

    ok: bool
    stage: Stage
    reply: Reply | None
    reason: str


# Don't subclass this.
@dataclass(frozen=True, slots=True)
class TransactionOutcome:
    """How a mail transaction ended.

    `failed_stage` None means the message was accepted for `accepted` (`refused` may still list
    recipients the server refused). Otherwise `reply` is the failing reply: for RCPT the first 4xx
    refusal if any, else the first refusal. `in_sync` says the session may carry another
    transaction (after the machine's own RSET where one was needed).
    """

    accepted: tuple[str, ...]
    refused: tuple[tuple[str, Reply], ...]
    reply: Reply | None
    failed_stage: Stage | None
    in_sync: bool


# The slots' own setters, for the objects built on every message (see `_write` and `_end`): what a
# frozen dataclass's __init__ reaches through object.__setattr__, called directly.
_set_write_data = Write.__dict__["data"].__set__
_set_accepted = TransactionOutcome.__dict__["accepted"].__set__
_set_refused = TransactionOutcome.__dict__["refused"].__set__
_set_reply = TransactionOutcome.__dict__["reply"].__set__
_set_failed_stage = TransactionOutcome.__dict__["failed_stage"].__set__
_set_in_sync = TransactionOutcome.__dict__["in_sync"].__set__


def _write(data: bytes | memoryview) -> Write:
    """`Write(data)`, without the dataclass's __init__ (one is built per flight)."""
    step: Write = _new(Write)
    _set_write_data(step, data)
    return step


class Exchange(abc.ABC):
    """Base of the exchanges: drives a generator of steps."""

    __slots__ = ("_failed", "_finished", "_halted", "_session", "_steps", "_tls_wait")

    def __init__(self, session: ClientSession) -> None:
        self._session = session
        self._steps = self._run()
        self._finished = False
        self._failed = False
        self._tls_wait = False
        # Any of the three above: the one flag next_step() reads on its hot path.
        self._halted = False

    @abc.abstractmethod
    def _run(self) -> _Steps:
        """The conversation, as a generator of steps."""

    def next_step(self) -> Step:
        """The next thing the driver must do."""
        if self._halted:
            return self._blocked()
        try:
            # The generator never yields None; None is its end, without a StopIteration to catch.
            step = next(self._steps, None)
        except ProtocolError as exc:
            self._failed = self._halted = True
            session = self._session
            session._finished(self)
            if isinstance(exc, RemoteProtocolError) and session.state is not SessionState.ERROR:
                session._fail(str(exc))  # raised outside the session (a bad SASL challenge)
            raise
        if step is None:
            self._finished = self._halted = True
            self._session._finished(self)
            return DONE
        return step

    def _blocked(self) -> Done:
        if self._finished:
            return DONE
        if self._failed:
            raise LocalProtocolError("this exchange failed earlier")
        self._failed = True
        raise self._session._misuse("next_step() before tls_established()")

    def _wait_for_tls(self) -> StartTLS:
        self._tls_wait = self._halted = True
        return _START_TLS

    def tls_established(self) -> None:
        """The TLS handshake the `StartTLS` step asked for is complete."""
        if not self._tls_wait:
            self._failed = self._halted = True
            raise self._session._misuse("tls_established() without a StartTLS step")
        self._tls_wait = False
        self._halted = self._failed
        try:
            self._session.tls_established()
        except ProtocolError:
            self._failed = self._halted = True
            self._session._finished(self)
            raise

    def _reply(self) -> Generator[NeedData, None, Reply]:
        next_event = self._session.next_event
        while (event := next_event()) is NEED_DATA:
            yield NEED_DATA
        return event

    def _ready(self, value: _T | None) -> _T:
        if value is None:
            raise LocalProtocolError("the exchange has no result yet")
        return value


class ReplyExchange(Exchange):
    """One command answered by one reply: NOOP or RSET."""

    __slots__ = ("_line", "_result", "_verbs")

    def __init__(self, session: ClientSession, verb: Verb, line: bytes) -> None:
        self._verbs = (verb,)
        self._line = line
        self._result: Reply | None = None
        super().__init__(session)

    @property
    def result(self) -> Reply:
        return self._ready(self._result)

    def _run(self) -> _Steps:
        next_event = self._session.next_event
        yield Write(self._session._emit(self._verbs, self._line))
        while (reply := next_event()) is NEED_DATA:
            yield NEED_DATA
        self._result = reply


class SetupExchange(Exchange):
    """Greeting, EHLO (HELO fallback), STARTTLS, EHLO again, AUTH (RFC 5321, 3207, 4954)."""

    __slots__ = (
        "_allow_plaintext",
        "_credentials",
        "_greeting",
        "_hostname",
        "_mechanism",
        "_mechanisms",
        "_result",
        "_stage",
        "_tls",
    )

    def __init__(
        self,
        session: ClientSession,
        hostname: bytes,
        tls: TLSMode,
        credentials: Credentials | None,
        mechanisms: tuple[str, ...] | None,
        allow_plaintext_auth: bool,
    ) -> None:
        self._hostname = hostname
        self._tls = tls
        self._credentials = credentials
        self._mechanisms = mechanisms
        self._allow_plaintext = allow_plaintext_auth
        self._result: SetupResult | None = None
        self._stage = Stage.GREETING
        self._greeting: Reply | None = None
        self._mechanism: str | None = None
        super().__init__(session)

    def __repr__(self) -> str:
        auth = self._credentials is not None
        return f"<SetupExchange {self._stage.name} tls={self._tls.name} auth={auth}>"

    @property
    def stage(self) -> Stage:
        """The stage under way (GREETING, EHLO, TLS, AUTH): where a transport failure struck."""
        return self._stage

    @property
    def result(self) -> SetupResult:
        return self._ready(self._result)

    @property
    def greeting(self) -> Reply | None:
        """The server's greeting, once it arrived (for diagnostics: `pooledmail probe`)."""
        return self._greeting

    @property
    def auth_mechanism(self) -> str | None:
        """The SASL mechanism AUTH used, once it was chosen; never a credential."""
        return self._mechanism

    def _end(self, ok: bool, stage: Stage, reply: Reply | None, reason: str) -> None:
        self._result = SetupResult(ok, stage, reply, reason)

    def _run(self) -> _Steps:
        session = self._session
        greeting = self._greeting = yield from self._reply()
        if not greeting.is_positive:
            return self._end(False, Stage.GREETING, greeting, "server refused the session")
        reply = yield from self._hello()
        if not reply.is_positive:
            return self._end(False, Stage.EHLO, reply, "server refused EHLO and HELO")
        stage = Stage.EHLO
        if self._tls in (TLSMode.STARTTLS, TLSMode.STARTTLS_IF_AVAILABLE) and not (
            session.tls_active
        ):
            if session.capabilities.starttls:
                self._stage = Stage.TLS
                yield Write(session._emit(_STARTTLS, b"STARTTLS\r\n"))
                reply = yield from self._reply()
                if not reply.is_positive:
                    return self._end(False, Stage.TLS, reply, "server refused STARTTLS")
                yield self._wait_for_tls()
                # RFC 3207 §4.2: everything learned before TLS is forgotten; greet again.
                reply = yield from self._hello()
                if not reply.is_positive:
                    return self._end(False, Stage.EHLO, reply, "server refused EHLO after TLS")
                stage = Stage.TLS
            elif self._tls is TLSMode.STARTTLS:
                return self._end(False, Stage.TLS, None, "server does not offer STARTTLS")
        credentials = self._credentials
        if credentials is not None:
            if not session.tls_active and not self._allow_plaintext:
                return self._end(
                    False, Stage.AUTH, None, "AUTH refused over a connection without TLS"
                )
            offered = session.capabilities.auth_mechanisms
            if not offered:
                return self._end(False, Stage.AUTH, None, "server does not offer AUTH")
            mechanism = choose_mechanism(offered, credentials, self._mechanisms)
            if mechanism is None:
                return self._end(False, Stage.AUTH, None, "no AUTH mechanism in common")
            self._stage = Stage.AUTH
            self._mechanism = mechanism.name
            yield Write(session._emit(_AUTH, mechanism.command()))
            reply = yield from self._reply()
            while reply.is_intermediate:
                challenge = reply.lines[0] if reply.lines else ""
                yield Write(session._emit(_AUTH_RESPONSE, mechanism.respond(challenge)))
                reply = yield from self._reply()
            if not reply.is_positive:
                return self._end(False, Stage.AUTH, reply, "authentication failed")
            stage = Stage.AUTH
        self._end(True, stage, reply, "ready")

    def _hello(self) -> Generator[Write | NeedData, None, Reply]:
        session = self._session
        self._stage = Stage.EHLO
        yield Write(session._emit(_EHLO, b"EHLO %s\r\n" % self._hostname))
        reply = yield from self._reply()
        # RFC 5321 §3.2: a server that does not know EHLO answers 5xx; fall back to HELO.
        if reply.is_permanent:
            yield Write(session._emit(_HELO, b"HELO %s\r\n" % self._hostname))
            reply = yield from self._reply()
        return reply


class TransactionExchange(Exchange):
    """One mail transaction: MAIL, RCPT..., then DATA and the data, or BDAT chunks."""

    __slots__ = (
        "_accepted",
        "_last_chunk_reply",
        "_plan",
        "_refused",
        "_result",
        "_stage",
        "_terminator_sent",
    )

    def __init__(self, session: ClientSession, plan: TransactionPlan) -> None:
        # Exchange.__init__ spelled out: one of these is built for every message.
        self._session = session
        self._plan = plan
        self._stage = _STAGE_MAIL
        self._finished = self._failed = self._tls_wait = self._halted = False
        self._terminator_sent = False
        self._last_chunk_reply: Reply | None = None
        self._accepted: list[str] = []
        self._refused: list[tuple[str, Reply]] = []
        self._result: TransactionOutcome | None = None
        self._steps = self._run()

    def __repr__(self) -> str:
        return f"<TransactionExchange {self._stage.name} terminator_sent={self._terminator_sent}>"

    @property
    def stage(self) -> Stage:
        """Where the transaction is: the command whose reply is awaited next, BODY while the data
        is being written, DATA_END once the terminator was handed to the transport."""
        return self._stage

    @property
    def terminator_sent(self) -> bool:
        """True once the message terminator (the "." line, or the whole `BDAT ... LAST` chunk)
        has been handed to the transport: from the first `next_step()` call after the driver
        finished the Write that carried it. A write that failed, or was cut short, leaves it
        False. The one place that decides whether a lost reply leaves the message's fate unknown
        (RFC 5321 §4.5.3.2, RFC 1047); `classify` is the only reader that turns it into a kind."""
        return self._terminator_sent

    @property
    def result(self) -> TransactionOutcome:
        return self._ready(self._result)

    def _end(self, reply: Reply | None, failed_stage: Stage | None, in_sync: bool) -> None:
        # TransactionOutcome(...) without its generated __init__ (five frozen-dataclass
        # assignments through object.__setattr__ anyway): one of these is built per message.
        outcome = _new(TransactionOutcome)
        _set_accepted(outcome, tuple(self._accepted))
        _set_refused(outcome, tuple(self._refused))
        _set_reply(outcome, reply)
        _set_failed_stage(outcome, failed_stage)
        _set_in_sync(outcome, in_sync)
        self._result = outcome

    def _closed(self, failure: tuple[Stage, Reply]) -> None:
        # A 421 closed the session (RFC 5321 §3.8). An earlier refusal still decides the
        # outcome, as it says more about the message than the 421 does.
        self._end(failure[1], failure[0], False)

    def _sort(self, recipient: str, reply: Reply) -> None:
        if reply.is_positive:
            self._accepted.append(recipient)
        else:
            self._refused.append((recipient, reply))

    def _rcpt_failure(self) -> Reply:
        for _, reply in self._refused:
            if reply.is_transient:
                return reply
        return self._refused[0][1]

    def _run(self) -> _Steps:
        return self._pipelined() if self._plan.pipelined else self._one_at_a_time()

    def _pipelined(self) -> _Steps:
        # RFC 2920: MAIL, every RCPT and DATA (or the BDAT chunks, RFC 3030 §4.2) in one flight;
        # replies come back in order.
        plan = self._plan
        emit = self._session._emit
        next_event = self._session.next_event
        chunks = plan.chunks
        if not chunks:
            yield _write(emit(plan.flight_verbs, plan.flight))
        else:
            # The data leaves before any reply is read: the stage says so until it is written.
            self._stage = _STAGE_BODY
            yield from self._bdat_chunks(plan.flight, plan.flight_verbs, wait=False)
            self._stage = _STAGE_MAIL
        while (mail := next_event()) is NEED_DATA:
            yield NEED_DATA
        if mail.code == 421:
            return self._end(mail, _STAGE_MAIL, False)
        self._stage = _STAGE_RCPT
        mail_ok = mail.code < 300
        accepted = self._accepted
        for recipient in plan.recipients:
            while (reply := next_event()) is NEED_DATA:
                yield NEED_DATA
            code = reply.code
            if code == 421:
                return self._end(reply, _STAGE_RCPT, False)
            if not mail_ok:
                continue
            if code < 300:
                accepted.append(recipient)
            else:
                self._refused.append((recipient, reply))
        failure: tuple[Stage, Reply] | None = None
        if not mail_ok:
            failure = _STAGE_MAIL, mail
        elif not self._accepted:
            failure = _STAGE_RCPT, self._rcpt_failure()
        if chunks:
            for index in range(len(chunks)):
                self._stage = _STAGE_DATA_END if index == len(chunks) - 1 else _STAGE_BODY
                while (reply := next_event()) is NEED_DATA:
                    yield NEED_DATA
                if reply.code == 421:
                    return self._closed(failure or (self._stage, reply))
                if failure is None and not reply.is_positive:
                    failure = self._stage, reply
                final: Reply = reply
            if failure is None:
                return self._end(final, None, True)
            return (yield from self._reset(*failure))
        self._stage = _STAGE_DATA
        while (data := next_event()) is NEED_DATA:
            yield NEED_DATA
        if data.code == 421:
            return self._closed(failure or (_STAGE_DATA, data))
        if data.code < 400:  # a 3xx: the table refuses a 2xx to DATA
            if failure is None:
                return (yield from self._send_data())
            # RFC 2920 §3.1: DATA was accepted although no recipient was; end it with a lone
            # "." (an empty message for nobody) before resetting.
            yield Write(emit(_END_OF_DATA, b".\r\n"))
            while (dot := next_event()) is NEED_DATA:
                yield NEED_DATA
            if dot.code == 421:
                return self._closed(failure)
        return (yield from self._reset(*(failure or (_STAGE_DATA, data))))

    def _one_at_a_time(self) -> _Steps:
        plan = self._plan
        emit = self._session._emit
        next_event = self._session.next_event
        lines = plan.lines
        yield Write(emit(_MAIL, lines[0]))
        while (reply := next_event()) is NEED_DATA:
            yield NEED_DATA
        if not reply.is_positive:
            return (yield from self._reset(_STAGE_MAIL, reply))
        self._stage = _STAGE_RCPT
        for recipient, line in zip(plan.recipients, lines[1:], strict=True):
            yield Write(emit(_RCPT, line))
            while (reply := next_event()) is NEED_DATA:
                yield NEED_DATA
            if reply.code == 421:
                return self._end(reply, _STAGE_RCPT, False)
            self._sort(recipient, reply)
        if not self._accepted:
            return (yield from self._reset(_STAGE_RCPT, self._rcpt_failure()))
        chunks = plan.chunks
        if not chunks:
            self._stage = _STAGE_DATA
            yield Write(emit(_DATA, b"DATA\r\n"))
            while (reply := next_event()) is NEED_DATA:
                yield NEED_DATA
            if not reply.is_intermediate:
                return (yield from self._reset(_STAGE_DATA, reply))
            return (yield from self._send_data())
        yield from self._bdat_chunks(b"", (), wait=True)
        if self._result is None:
            self._end(self._last_chunk_reply, None, True)

    def _bdat_chunks(self, flight: bytes, verbs: tuple[Verb, ...], *, wait: bool) -> _Steps:
        """Write the BDAT chunks (RFC 3030), the first after `flight`. With `wait`, read each
        chunk's reply before the next chunk and stop at a refusal (after RSET)."""
        emit = self._session._emit
        next_event = self._session.next_event
        chunks = self._plan.chunks
        last = len(chunks) - 1
        for index, (command, payload) in enumerate(chunks):
            self._stage = _STAGE_BODY
            chunk_verbs = verbs + (_BDAT_LAST if index == last else _BDAT)
            if len(payload) <= COALESCE_LIMIT:
                yield Write(emit(chunk_verbs, flight + command + payload))
            else:
                yield Write(emit(chunk_verbs, flight + command))
                yield Write(payload)
            flight, verbs = b"", ()
            if index == last:
                # Resumed only once the driver has handed the whole last chunk to the transport.
                self._terminator_sent = True
                self._stage = _STAGE_DATA_END
            if wait:
                while (reply := next_event()) is NEED_DATA:
                    yield NEED_DATA
                if not reply.is_positive:
                    return (yield from self._reset(self._stage, reply))
                self._last_chunk_reply = reply

    def _send_data(self) -> _Steps:
        # The body of DATA (RFC 5321 §4.1.1.4), then the "." line. Called once DATA got its 354.
        emit = self._session._emit
        next_event = self._session.next_event
        body = self._plan.body
        self._stage = _STAGE_BODY
        if len(body) <= COALESCE_LIMIT:
            yield _write(emit(_END_OF_DATA, body + b".\r\n"))
        else:
            yield _write(body)
            yield _write(emit(_END_OF_DATA, b".\r\n"))
        # Resumed only once the driver has handed the "." line to the transport.
        self._terminator_sent = True
        self._stage = _STAGE_DATA_END
        while (final := next_event()) is NEED_DATA:
            yield NEED_DATA
        # RFC 5321 §4.1.1.4: after the final reply, failed or not, the transaction is over.
        code = final.code
        self._end(final, None if code < 300 else _STAGE_DATA_END, code != 421)

    def _reset(self, stage: Stage, failure: Reply) -> _Steps:
        # A refusal ended the transaction; RSET (RFC 5321 §4.1.1.5) so that the session can
        # carry the next one. A 421 instead of a reply already closed the session.
        session = self._session
        next_event = session.next_event
        if failure.code == 421:
            return self._end(failure, stage, False)
        yield Write(session._emit(_RSET, b"RSET\r\n"))
        while (reply := next_event()) is NEED_DATA:
            yield NEED_DATA
        self._end(failure, stage, reply.is_positive)
