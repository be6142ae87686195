"""The fused path of a transaction is the general path, taken faster.

`TransactionExchange` judges a whole read at once for the usual pipelined transaction (see its
docstring) and hands everything else to its generator. Here a scripted server answers whatever
the client writes, a random reply at a time, and its bytes reach the client in random reads; the
same transaction is run fused and with the generator alone, and must give the same writes, the
same steps, the same `terminator_sent` and stage after every step, the same session state and
awaited verbs, and the same outcome or error.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from pooledmail_core._classify import Stage
from pooledmail_core._commands import Ehlo, Noop
from pooledmail_core._config import TLSMode
from pooledmail_core._envelope import Envelope, PreparedMessage
from pooledmail_core._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from pooledmail_core._exchanges import COALESCE_LIMIT, DONE, NEED_DATA, TransactionExchange, Write
from pooledmail_core._limits import Limits
from pooledmail_core._session import ClientSession
from pooledmail_core._state import SessionState
from pooledmail_core._transaction import plan_transaction

# What the server may answer instead of the reply a well-behaved server gives.
ODD = (
    "transient",
    "permanent",
    "closing",
    "multi_line",
    "bare_lf",
    "bare_code",
    "malformed",
    "wrong_class",
    "as_data",
    "extra",
    "eof",
)


@dataclass
class Server:
    """Reads what the client writes, as an SMTP server does, and answers each command with the
    next scripted reply (None: the usual one)."""

    script: Iterator[str | None]
    out: bytearray = field(default_factory=bytearray)
    closed: bool = False
    pending: bytes = b""
    in_data: bool = False
    bdat_left: int = 0
    bdat_last: bool = False
    queued: int = 0

    def answer(self, command: str) -> None:
        if self.closed:
            return
        choice = next(self.script, None)
        usual = {
            "MAIL": b"250 2.1.0 Ok\r\n",
            "RCPT": b"250 2.1.5 Ok\r\n",
            "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
            "RSET": b"250 2.0.0 Ok\r\n",
            "BDAT": b"250 2.0.0 chunk received\r\n",
        }.get(command)
        if usual is None:  # the end of the data, or the last chunk: a queue id every time
            self.queued += 1
            usual = b"250 2.0.0 Ok: queued as %X\r\n" % self.queued
        if choice is None:
            reply = usual
        elif choice == "transient":
            reply = b"451 4.3.0 try again later\r\n"
        elif choice == "permanent":
            reply = b"550 5.1.1 no such user\r\n"
        elif choice == "closing":
            reply = b"421 4.4.2 closing\r\n"
            self.closed = True
        elif choice == "multi_line":
            reply = usual[:3] + b"-first line\r\n" + usual
        elif choice == "bare_lf":
            reply = usual[:-2] + b"\n"
        elif choice == "bare_code":
            reply = usual[:3] + b"\r\n"
        elif choice == "malformed":
            reply = b"2x0 what\r\n"
        elif choice == "wrong_class":
            reply = b"250 2.0.0 go on\r\n" if command == "DATA" else b"354 go on\r\n"
        elif choice == "as_data":
            # Byte for byte DATA's usual 354, to any command: the same reply object in the memo.
            reply = b"354 End data with <CR><LF>.<CR><LF>\r\n"
        elif choice == "extra":
            reply = usual + b"250 2.0.0 unasked\r\n"
        else:
            assert choice == "eof"
            reply = b""
            self.closed = True
        if command == "DATA" and reply[:1] == b"3" and not self.closed:
            self.in_data = True
        self.out += reply

    def receive(self, data: bytes) -> None:
        self.pending += data
        while True:
            if self.bdat_left:
                taken = min(self.bdat_left, len(self.pending))
                self.pending = self.pending[taken:]
                self.bdat_left -= taken
                if self.bdat_left:
                    return
                self.answer("BDAT_LAST" if self.bdat_last else "BDAT")
                continue
            if self.in_data:
                end = self.pending.find(b"\r\n.\r\n")
                if self.pending.startswith(b".\r\n"):
                    end, size = 0, 3
                elif end < 0:
                    return
                else:
                    size = end + 5
                self.pending = self.pending[size:]
                self.in_data = False
                self.answer("END_OF_DATA")
                continue
            line, found, rest = self.pending.partition(b"\r\n")
            if not found:
                return
            self.pending = rest
            words = line.split()
            verb = words[0].decode()
            if verb == "BDAT":
                self.bdat_left = int(words[1])
                self.bdat_last = words[-1] == b"LAST"
                if not self.bdat_left:
                    self.answer("BDAT_LAST" if self.bdat_last else "BDAT")
                continue
            self.answer(verb)

    def read(self, size: int) -> bytes:
        if not self.out:
            return b""  # nothing more will come: the end of the stream
        data = bytes(self.out[:size])
        del self.out[:size]
        return data


def ready_session(chunking: bool, limits: Limits) -> ClientSession:
    session = ClientSession("client.example", limits)
    setup = session.setup(tls=TLSMode.NONE)
    ehlo = b"250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
    ehlo += b"250-CHUNKING\r\n250 SIZE\r\n" if chunking else b"250 SIZE\r\n"
    for reply in (b"220 mx\r\n", ehlo):
        while setup.next_step() is not NEED_DATA:
            pass
        session.receive_data(reply)
    assert setup.next_step() is DONE
    assert setup.result.ok
    return session


def run(
    message: PreparedMessage,
    *,
    fused: bool,
    chunking: bool,
    limits: Limits,
    script: list[str | None],
    sizes: list[int],
    through_session: frozenset[int],
    early: frozenset[int],
    halves: frozenset[int] = frozenset(),
) -> tuple[list[object], bool]:
    """Everything observable after each step of one transaction, until it is done or fails;
    and whether the fused path alone ran it (the generator was never made)."""
    session = ready_session(chunking, limits)
    if fused:
        exchange = session.transaction(message)
    else:
        plan = plan_transaction(message, session.capabilities, limits.bdat_chunk_size)
        exchange = TransactionExchange(session, plan, fused=False)
        session._active = exchange
    server = Server(iter(script))
    reads = itertools.cycle(sizes)
    trace: list[object] = []

    def seen(step: object) -> None:
        shown = ("write", bytes(step.data)) if isinstance(step, Write) else step
        trace.append(
            (
                shown,
                exchange.terminator_sent,
                exchange.stage,
                session.state,
                session.awaiting,
                session.has_unread,
            )
        )

    writes = deliveries = 0

    def deliver() -> object:
        nonlocal deliveries
        data = server.read(next(reads))
        deliveries += 1
        if deliveries - 1 in through_session:
            session.receive_data(data)
            return exchange.next_step()
        if deliveries - 1 in halves and len(data) > 1:
            # Half handed to the session without a step, the rest with `data_received`.
            session.receive_data(data[: len(data) // 2])
            data = data[len(data) // 2 :]
        return exchange.data_received(data)

    step: object = None
    try:
        step = exchange.next_step()
        for _ in range(10_000):
            seen(step)
            if step is DONE:
                break
            if isinstance(step, Write):
                server.receive(bytes(step.data))
                writes += 1
                if writes - 1 in early and server.out:
                    # The replies arrive before the driver steps again.
                    session.receive_data(server.read(next(reads)))
                step = exchange.next_step()
            else:
                assert step is NEED_DATA
                step = deliver()
        else:
            raise AssertionError("the transaction never ended")
    except ProtocolError as exc:
        trace.append(("raised", type(exc).__name__, str(exc), exchange.terminator_sent))
        trace.append((exchange.stage, session.state, session.awaiting))
    if step is DONE:
        trace.append(exchange.result)
        # A finished exchange stays finished.
        trace.append(exchange.next_step())
    return trace, not hasattr(exchange, "_steps")


# Mostly the usual replies, read whole, so that the fused path often runs to the end; the rest
# hands over at every point it can.
choice = st.one_of(st.none(), st.none(), st.none(), st.none(), st.sampled_from(ODD))
read_size = st.one_of(st.just(4096), st.just(4096), st.integers(1, 120))
rarely = st.sampled_from([False, False, False, True])
# Which reads go through `session.receive_data` and `next_step()` rather than `data_received()`,
# and after which writes the replies arrive before the exchange is stepped again.
some = st.one_of(st.just(frozenset()), st.just(frozenset()), st.frozensets(st.integers(0, 3)))


@settings(max_examples=1000, deadline=None)
@given(
    recipients=st.integers(1, 3),
    chunking=st.booleans(),
    large=rarely,
    line_limit=st.sampled_from([2048, 2048, 2048, 24, 40]),
    several_chunks=st.sampled_from([False, False, True]),
    script=st.lists(choice, max_size=8),
    sizes=st.lists(read_size, min_size=1, max_size=6),
    through_session=some,
    early=some,
    halves=some,
)
@example(  # the replies to the data arrive before the step after it
    recipients=1,
    chunking=False,
    large=False,
    line_limit=2048,
    several_chunks=False,
    script=[],
    sizes=[4096],
    through_session=frozenset(),
    early=frozenset({1}),
    halves=frozenset(),
)
@example(  # the final reply comes half through the session, half with data_received
    recipients=2,
    chunking=False,
    large=False,
    line_limit=2048,
    several_chunks=False,
    script=[],
    sizes=[4096],
    through_session=frozenset(),
    early=frozenset(),
    halves=frozenset({1}),
)
def test_the_fused_path_gives_what_the_general_path_gives(
    recipients: int,
    chunking: bool,
    large: bool,
    line_limit: int,
    several_chunks: bool,
    script: list[str | None],
    sizes: list[int],
    through_session: frozenset[int],
    early: frozenset[int],
    halves: frozenset[int],
) -> None:
    body = b"Subject: x\r\n\r\n" + (b"y" * (COALESCE_LIMIT + 10) if large else b"body\r\n.dot\r\n")
    envelope = Envelope(
        "a@example.com", tuple(f"r{index}@example.org" for index in range(recipients))
    )
    message = PreparedMessage(envelope, body)
    chunk_size = (16384 if large else 8) if several_chunks else 1 << 20
    limits = Limits(max_line_length=line_limit, bdat_chunk_size=chunk_size)
    options = {
        "chunking": chunking,
        "limits": limits,
        "script": script,
        "sizes": sizes,
        "through_session": through_session,
        "early": early,
        "halves": halves,
    }
    fused, alone = run(message, fused=True, **options)  # type: ignore[arg-type]
    general, _ = run(message, fused=False, **options)  # type: ignore[arg-type]
    assert fused == general
    event("the fused path alone" if alone else "handed over to the generator")


@pytest.mark.parametrize("refused", [0, 1])
def test_a_354_to_mail_or_rcpt_identical_to_data_s_is_judged_as_the_general_path_judges(
    refused: int,
) -> None:
    # MAIL (0) or RCPT (1) answered with exactly the line DATA gets: the parser's memo makes
    # them one Reply object, and the fused path must still judge each reply, not each object.
    body = b"Subject: x\r\n\r\nbody\r\n"
    message = PreparedMessage(Envelope("a@example.com", ("b@example.org",)), body)
    script: list[str | None] = [None, None]
    script[refused] = "as_data"
    options = {
        "chunking": False,
        "limits": Limits(),
        "script": script,
        "sizes": [4096],
        "through_session": frozenset(),
        "early": frozenset(),
    }
    fused, _ = run(message, fused=True, **options)  # type: ignore[arg-type]
    general, _ = run(message, fused=False, **options)  # type: ignore[arg-type]
    assert fused == general
    assert not any(
        isinstance(seen, tuple) and seen[0] == ("write", body + b".\r\n") for seen in fused
    )


def test_the_usual_transaction_is_judged_a_read_at_a_time() -> None:
    # Both shapes, all replies positive, each flight's replies in one read: the generator is
    # never made (the fused path alone ran), and the outcome is the general path's.
    for chunking in (False, True):
        body = b"Subject: x\r\n\r\nbody\r\n"
        message = PreparedMessage(Envelope("a@example.com", ("b@example.org",)), body)
        session = ready_session(chunking, Limits())
        exchange = session.transaction(message)
        server = Server(iter(()))
        server.script = iter([None] * 4)
        step = exchange.next_step()
        while step is not DONE:
            if isinstance(step, Write):
                server.receive(bytes(step.data))
                step = exchange.next_step()
            else:
                step = exchange.data_received(server.read(4096))
        assert not hasattr(exchange, "_steps")
        assert exchange.result.failed_stage is None
        assert exchange.result.accepted == ("b@example.org",)
        assert exchange.terminator_sent
        assert not session.has_unread


def test_a_session_used_before_the_first_step_is_refused_as_the_general_path_refuses() -> None:
    message = PreparedMessage(Envelope("a@example.com", ("b@example.org",)), b"x\r\n")
    refusals = []
    for fused in (True, False):
        session = ready_session(False, Limits())
        if fused:
            exchange = session.transaction(message)
        else:
            plan = plan_transaction(message, session.capabilities, 1 << 20)
            exchange = TransactionExchange(session, plan, fused=False)
            session._active = exchange
        session.send(Noop())
        with pytest.raises(LocalProtocolError) as refused:
            exchange.next_step()
        refusals.append((str(refused.value), session.state, session.awaiting))
    assert refusals[0] == refusals[1]


# The caller may misuse the session between steps; the fused path must refuse, or judge, exactly
# as the general path does (found by review: each of these differed before it checked that the
# session still awaits what the fused path set up, and still offers PIPELINING).
_SMALL = PreparedMessage(
    Envelope("a@example.com", ("b@example.org",)), b"Subject: x\r\n\r\nbody\r\n"
)


def _start(fused: bool) -> tuple[ClientSession, TransactionExchange]:
    session = ready_session(False, Limits())
    if fused:
        return session, session.transaction(_SMALL)
    plan = plan_transaction(_SMALL, session.capabilities, 1 << 20)
    exchange = TransactionExchange(session, plan, fused=False)
    session._active = exchange
    return session, exchange


def _observe(call: Callable[..., object], *args: object) -> object:
    try:
        step = call(*args)
    except ProtocolError as exc:
        return ("raised", type(exc).__name__, str(exc))
    return ("write", bytes(step.data)) if isinstance(step, Write) else step


def test_an_ehlo_that_withdrew_pipelining_is_refused_before_any_byte() -> None:
    seen = []
    for fused in (True, False):
        session, exchange = _start(fused)
        session.send(Ehlo("client.example"))
        session.receive_data(b"250 mx\r\n")
        session.next_event()  # READY, nothing awaited, and no PIPELINING any more
        seen.append((_observe(exchange.next_step), session.state, session.awaiting))
    assert seen[0] == seen[1]
    assert seen[0][0][0] == "raised"


def test_a_final_reply_the_caller_read_is_not_replaced_by_a_later_line() -> None:
    seen = []
    for fused in (True, False):
        session, exchange = _start(fused)
        assert isinstance(exchange.next_step(), Write)
        assert exchange.next_step() is NEED_DATA
        flight = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"
        assert isinstance(exchange.data_received(flight), Write)
        assert exchange.next_step() is NEED_DATA
        session.receive_data(b"550 5.7.1 rejected\r\n")
        session.next_event()  # the real final reply, read past the exchange
        outcome = _observe(exchange.data_received, b"250 2.0.0 Ok\r\n")
        result = exchange.result if outcome is DONE else None
        seen.append((outcome, result, session.state, session.awaiting))
    assert seen[0] == seen[1]
    assert seen[0][1] is None  # never "accepted"


def test_a_mail_reply_the_caller_read_does_not_shift_the_judged_replies() -> None:
    seen = []
    for fused in (True, False):
        session, exchange = _start(fused)
        assert isinstance(exchange.next_step(), Write)
        assert exchange.next_step() is NEED_DATA
        session.receive_data(b"250 2.1.0 Ok\r\n")
        session.next_event()  # MAIL's reply, read past the exchange
        read = b"250 2.1.5 Ok\r\n250 2.0.0 unasked\r\n354 go\r\n"
        outcome = _observe(exchange.data_received, read)
        seen.append((outcome, exchange.stage, session.state, session.awaiting))
    assert seen[0] == seen[1]
    assert seen[0][0][0] == "raised"


@pytest.mark.parametrize(
    "after_354",
    [b"250 2.0.0 Ok: queued as FAKE\r\n", b"2", b""],
    ids=["a whole reply", "part of one", "the end of the stream"],
)
@pytest.mark.parametrize("fused", [True, False])
def test_anything_after_data_s_354_fails_the_transaction_before_the_data(
    after_354: bytes, fused: bool
) -> None:
    # A server that sends a reply with its 354 would have it taken for the final reply: a 250
    # nobody asked for reported as "accepted" whatever the server said of the message. The
    # transaction fails at DATA instead, with not a byte of the data written.
    session, exchange = _start(fused)
    assert isinstance(exchange.next_step(), Write)
    assert exchange.next_step() is NEED_DATA
    session.receive_data(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n" + after_354)
    if not after_354:
        session.receive_data(b"")  # the end of the stream
    with pytest.raises(RemoteProtocolError, match="before the message data was sent"):
        exchange.next_step()
    assert not exchange.terminator_sent
    assert exchange.stage is Stage.DATA
    assert session.state is SessionState.ERROR


@pytest.mark.parametrize("fused", [True, False])
def test_a_refusal_with_a_reply_nobody_asked_for_stands_and_sends_no_rset(fused: bool) -> None:
    # RSET's reply could not be told from the stray one: the refusal is the outcome, the
    # session is reported out of step (the connection is closed), and nothing more is written.
    session, exchange = _start(fused)
    assert isinstance(exchange.next_step(), Write)
    assert exchange.next_step() is NEED_DATA
    read = b"550 5.7.1 no\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n250 2.0.0 stray\r\n"
    assert exchange.data_received(read) is DONE
    result = exchange.result
    assert result.failed_stage is Stage.MAIL
    assert result.reply is not None
    assert result.reply.code == 550
    assert not result.in_sync
    assert not exchange.terminator_sent
    assert session.awaiting == ()  # no RSET
