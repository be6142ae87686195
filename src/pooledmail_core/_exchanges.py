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
from ._replyparser import NEED_DATA, NeedData, one_line_replies
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
_READY, _TRANSACTION = SessionState.READY, SessionState.TRANSACTION
_VERB_END_OF_DATA = Verb.END_OF_DATA
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

    def data_received(self, data: bytes) -> Step:
        """`session.receive_data(data)` then `next_step()`, in one call: what the driver does
        with each read. `TransactionExchange` judges a whole read at once here when it can."""
        self._session.receive_data(data)
        return self.next_step()

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
            # A refusal may quote the credentials back; it is shown to people from here on,
            # and so is the session's record of a 421 that closed it.
            redacted = mechanism.redact(reply)
            if session._closed_by_server is reply:
                session._closed_by_server = redacted
            reply = redacted
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


# The phases of a transaction's fused path (see `TransactionExchange`); 0 is the general path.
_GENERAL, _FLIGHT, _FLIGHT_SENT, _REPLIES, _DATA_SENT, _FINAL = range(6)


class TransactionExchange(Exchange):
    """One mail transaction: MAIL, RCPT..., then DATA and the data, or BDAT chunks.

    The fused path. The usual transaction is pipelined and small: one flight (MAIL, every RCPT
    and DATA), one read of its replies, one write of the data and its "." line, one read of the
    final reply; or, with CHUNKING, one flight that ends with the whole `BDAT n LAST` chunk and
    one read of every reply. For those two shapes the exchange does not step its generator
    reply by reply: `next_step()` and `data_received()` walk five phases, and each read is judged
    whole, when it is exactly the replies awaited, each a one-line reply, all of them the ones
    that let the transaction go on (2xx to MAIL and RCPT, 3xx to DATA; a final 2xx, 4xx or 5xx
    other than 421 after the data, a 2xx after BDAT). Anything else (a refusal, a multi-line or
    malformed reply, a read that holds fewer or more replies, the end of the stream, a 421, bytes
    the session held before, a session the caller used in between) hands the read to the
    session and the rest of the transaction to the general generator, from the very point the
    fused path reached: `_pipelined_replies()` after the flight, `_final_reply()` after the data.

    So the two paths cannot differ in what they decide: the fused one only ever takes the
    branches the generator would take for the same replies, and sets what the generator would set
    at the same point (the session's state and awaited verbs, the stage, `terminator_sent`, the
    outcome). `tests/core/test_protocol_fused.py` holds them equal for random replies split into
    random reads.
    """

    __slots__ = (
        "_accepted",
        "_last_chunk_reply",
        "_phase",
        "_plan",
        "_refusal",
        "_refused",
        "_result",
        "_stage",
        "_terminator_sent",
    )

    def __init__(
        self, session: ClientSession, plan: TransactionPlan, *, fused: bool = True
    ) -> None:
        # Exchange.__init__ spelled out: one of these is built for every message.
        self._session = session
        self._plan = plan
        self._stage = _STAGE_MAIL
        self._finished = self._failed = self._tls_wait = self._halted = False
        self._terminator_sent = False
        self._last_chunk_reply: Reply | None = None
        self._accepted: list[str] = []
        self._refused: list[tuple[str, Reply]] = []
        self._refusal: tuple[Stage, Reply] | None = None
        self._result: TransactionOutcome | None = None
        self._phase = _GENERAL
        if fused and plan.pipelined:
            chunks = plan.chunks
            if not chunks:
                if len(plan.body) <= COALESCE_LIMIT:
                    self._phase = _FLIGHT
            elif len(chunks) == 1 and len(chunks[0][1]) <= COALESCE_LIMIT:
                self._phase = _FLIGHT
        if not self._phase:
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
    def refusal(self) -> tuple[Stage, Reply] | None:
        """The stage and reply of the refusal that decided the message, from the moment it was
        read: before the rest of a pipelined flight's replies, and before the RSET (or the lone
        "." line) that follows it only to tidy the session. If the connection then fails, the
        message was still refused: the server said so, the terminator sent or not. None until
        the server refused anything, and on the fused path, which hands every refusal to the
        general one."""
        return self._refusal

    @property
    def result(self) -> TransactionOutcome:
        return self._ready(self._result)

    # --- the fused path ------------------------------------------------------------------------

    def next_step(self) -> Step:
        phase = self._phase
        if phase == _FLIGHT_SENT:
            # The flight was handed to the transport.
            self._phase = _REPLIES
            if self._plan.chunks:
                # It carried the whole last chunk (RFC 3030 §2): as `_bdat_chunks` says then.
                self._terminator_sent = True
                self._stage = _STAGE_MAIL
            if self._holds_nothing():
                return NEED_DATA
            # Bytes came in through the session already (or it failed): read them as usual.
            return self._general(self._pipelined_replies())
        if phase == _DATA_SENT:
            # The data and its "." line were handed to the transport: as `_send_data` says then.
            self._terminator_sent = True
            self._stage = _STAGE_DATA_END
            self._phase = _FINAL
            if self._holds_nothing():
                return NEED_DATA
            return self._general(self._final_reply())
        if phase == _FLIGHT:
            return self._flight()
        if phase == _REPLIES:
            # Read through the session, not `data_received`: the general path from here.
            return self._general(self._pipelined_replies())
        if phase == _FINAL:
            return self._general(self._final_reply())
        return Exchange.next_step(self)

    def data_received(self, data: bytes) -> Step:
        phase = self._phase
        if phase == _REPLIES:
            step = self._judge_replies(data)
            if step is not None:
                return step
        elif phase == _FINAL:
            step = self._judge_final(data)
            if step is not None:
                return step
        self._session.receive_data(data)
        return self.next_step()

    def _general(self, steps: _Steps) -> Step:
        """Go on with the general generator `steps`, from where the fused path is."""
        self._phase = _GENERAL
        self._steps = steps
        return Exchange.next_step(self)

    def _flight(self) -> Step:
        session = self._session
        if session._state is not _READY or session._pending or not session._capabilities.pipelining:
            # The session was used since `transaction()` (a new EHLO may even have withdrawn
            # PIPELINING): `_emit` says how that is wrong.
            return self._general(self._pipelined())
        plan = self._plan
        chunks = plan.chunks
        # What `session._emit` records for these verbs on a READY session that awaits nothing
        # and offers PIPELINING (the plan was made for it): every one is allowed in one flight,
        # and the session is in TRANSACTION after them.
        session._pending.extend(plan.flight_verbs)
        session._state = _TRANSACTION
        self._phase = _FLIGHT_SENT
        if not chunks:
            return _write(plan.flight)
        command, payload = chunks[0]
        session._pending.append(Verb.BDAT_LAST)
        self._stage = _STAGE_BODY
        return _write(plan.flight + command + payload)

    def _holds_nothing(self) -> bool:
        """Whether the session has received nothing since the fused path last looked, and has
        not failed: then the general path's next reply is NEED_DATA too."""
        session = self._session
        parser = session._parser
        return not (
            parser._buffer
            or parser.replies
            or parser._partial_size
            or parser.eof
            or session._state is SessionState.ERROR
        )

    def _fits(self, data: bytes, state: SessionState, awaited: int) -> bool:
        """Whether `data` can be judged whole: the session is where the fused path left it (in
        `state`, awaiting `awaited` replies, none read past the exchange) and holds nothing
        received before, and `data` is within the line limit (so every line is)."""
        session = self._session
        parser = session._parser
        return (
            session._state is state
            and len(session._pending) == awaited
            and len(data) <= parser._max_line
            and not (parser._buffer or parser.replies or parser._partial_size or parser.eof)
        )

    def _judge_replies(self, data: bytes) -> Step | None:
        """The read after the flight, judged whole; None to hand it to the general path."""
        plan = self._plan
        count = len(plan.recipients) + 2
        # As many awaited as the flight asked for: none was read past the exchange. (Its last,
        # DATA or BDAT LAST, ends a flight, so nothing can be awaited behind it.)
        if not self._fits(data, _TRANSACTION, count):
            return None
        replies = one_line_replies(data, count)
        if replies is None:
            return None
        last = replies[-1]
        # MAIL's and every RCPT's 2xx (the last is DATA's or BDAT's, checked below). By position:
        # the memo makes equal lines one Reply object, so a 354 to MAIL may *be* DATA's 354.
        for index in range(len(replies) - 1):
            if replies[index].code >= 300:
                return None
        code = last.code
        session = self._session
        if plan.chunks:
            if code >= 300:
                return None
            # MAIL, every RCPT and the last chunk accepted: the session is READY (RFC 3030 §4.2)
            # and awaits nothing.
            session._pending.clear()
            session._state = _READY
            self._stage = _STAGE_DATA_END
            self._accept(last, None)
            return DONE
        if not 300 <= code < 400:
            return None
        # DATA's 354 puts the session in BODY with nothing awaited; the data and its "." line
        # are then allowed, and leave it READY awaiting their reply (what `_emit` records).
        # As the generator would have sorted them (it takes over if the final read is unusual).
        self._accepted = list(plan.recipients)
        pending = session._pending
        pending.clear()
        pending.append(_VERB_END_OF_DATA)
        session._state = _READY
        self._stage = _STAGE_BODY
        self._phase = _DATA_SENT
        return _write(plan.body + b".\r\n")

    def _judge_final(self, data: bytes) -> Step | None:
        """The read after the data, judged whole; None to hand it to the general path."""
        if not self._fits(data, _READY, 1) or self._session._pending[0] is not _VERB_END_OF_DATA:
            return None
        replies = one_line_replies(data, 1)
        if replies is None:
            return None
        final = replies[0]
        code = final.code
        if code == 421 or 300 <= code < 400:
            return None
        # The final reply keeps the session READY (RFC 5321 §4.1.1.4) and was the last awaited.
        self._session._pending.clear()
        self._accept(final, None if code < 300 else _STAGE_DATA_END)
        return DONE

    def _accept(self, reply: Reply, failed_stage: Stage | None) -> None:
        """The outcome when MAIL and every RCPT were accepted: `_end`, then what `next_step()`
        does when the generator ends."""
        outcome = _new(TransactionOutcome)
        _set_accepted(outcome, self._plan.recipients)
        _set_refused(outcome, ())
        _set_reply(outcome, reply)
        _set_failed_stage(outcome, failed_stage)
        _set_in_sync(outcome, True)
        self._result = outcome
        self._phase = _GENERAL
        self._finished = self._halted = True
        self._session._finished(self)

    # --- the general path ----------------------------------------------------------------------

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
        chunks = plan.chunks
        if not chunks:
            yield _write(emit(plan.flight_verbs, plan.flight))
        else:
            # The data leaves before any reply is read: the stage says so until it is written.
            self._stage = _STAGE_BODY
            yield from self._bdat_chunks(plan.flight, plan.flight_verbs, wait=False)
            self._stage = _STAGE_MAIL
        yield from self._pipelined_replies()

    def _pipelined_replies(self) -> _Steps:
        # The replies to the flight `_pipelined` wrote (where the fused path may hand over).
        plan = self._plan
        emit = self._session._emit
        next_event = self._session.next_event
        chunks = plan.chunks
        while (mail := next_event()) is NEED_DATA:
            yield NEED_DATA
        if mail.code == 421:
            return self._end(mail, _STAGE_MAIL, False)
        self._stage = _STAGE_RCPT
        mail_ok = mail.code < 300
        # A refusal decides the message as soon as it is read (`refusal`), although the rest of
        # the flight's replies are still to come: with CHUNKING the whole message went with the
        # flight, and a connection lost before those replies must not make it "unknown".
        failure: tuple[Stage, Reply] | None = None
        if not mail_ok:
            failure = self._refusal = _STAGE_MAIL, mail
        accepted = self._accepted
        for recipient in plan.recipients:
            while (reply := next_event()) is NEED_DATA:
                yield NEED_DATA
            code = reply.code
            if code == 421:
                return self._closed(failure or (_STAGE_RCPT, reply))
            if not mail_ok:
                continue
            if code < 300:
                accepted.append(recipient)
            else:
                self._refused.append((recipient, reply))
        if failure is None and not self._accepted:
            failure = self._refusal = _STAGE_RCPT, self._rcpt_failure()
        if chunks:
            for index in range(len(chunks)):
                self._stage = _STAGE_DATA_END if index == len(chunks) - 1 else _STAGE_BODY
                while (reply := next_event()) is NEED_DATA:
                    yield NEED_DATA
                if reply.code == 421:
                    return self._closed(failure or (self._stage, reply))
                if failure is None and not reply.is_positive:
                    # RFC 3030 §2: a refused chunk fails the transaction.
                    failure = self._refusal = self._stage, reply
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
            if self._out_of_step():
                return self._end(failure[1], failure[0], False)
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
            self._check_in_step("RCPT")
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
            self._check_in_step("DATA")
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
            if wait:
                self._check_in_step("BDAT")
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

    def _out_of_step(self) -> bool:
        """Whether the server sent something although every reply asked for has been read: a
        reply nobody asked for, or the end of the stream. Written now, a command would have
        that taken for its reply (RFC 5321 §4.2: one reply per command)."""
        session = self._session
        return not session._pending and session.has_unread

    def _check_in_step(self, before: str) -> None:
        """Refuse to write `before` while `_out_of_step()`: fail the session, with nothing of it
        written. Where the transaction waits for each reply before it writes on."""
        if self._out_of_step():
            session = self._session
            raise session._fail(
                f"the server closed the connection before {before} was sent"
                if session._parser.eof
                else f"a reply nobody asked for arrived before {before} was sent"
            )

    def _send_data(self) -> _Steps:
        # The body of DATA (RFC 5321 §4.1.1.4), then the "." line. Called once DATA got its 354.
        # After its 354 the server owes nothing until the "." line: a reply already here would be
        # taken for the final one (a 250 nobody asked for as "accepted").
        self._check_in_step("the message data")
        emit = self._session._emit
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
        yield from self._final_reply()

    def _final_reply(self) -> _Steps:
        # The reply to the data (where the fused path may hand over).
        next_event = self._session.next_event
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
        self._refusal = stage, failure
        if failure.code == 421:
            return self._end(failure, stage, False)
        if self._out_of_step():
            # RSET's reply could not be told from the stray one: the refusal stands, and the
            # connection, out of step, is not reused.
            return self._end(failure, stage, False)
        yield Write(session._emit(_RSET, b"RSET\r\n"))
        while (reply := next_event()) is NEED_DATA:
            yield NEED_DATA
        self._end(failure, stage, reply.is_positive)
