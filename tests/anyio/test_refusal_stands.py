"""A refusal decides the message, whatever the connection does after it.

Once the server has refused a message (MAIL refused, every RCPT refused, a BDAT chunk refused) it
has not stored it: there is no sender, no recipient, or a failed transaction to store it for (RFC
5321 §3.3, RFC 3030 §2). With PIPELINING the client reads that refusal among the replies to its
flight, and with CHUNKING that flight already carried the whole `BDAT … LAST` chunk, so the
terminator was sent. If the connection then closes, resets, goes silent, answers garbage or 421
before the client has read the rest of the flight's replies, the send must still end with the
refusal: its kind and stage, definitely not accepted, the connection not reused, nothing logged
or counted as "may have been delivered", and a caller who cancels then is not told so either. The
same holds for the lone "." that ends a DATA the server took for nobody (RFC 2920 §3.1).

The fake server refuses at one reply and commits the fault at a later one (`Script.acts`, by the
reply's number on the connection), and every verdict is judged against its record. One control
case shows where the client truly cannot know: one recipient of two refused, and the connection
lost before the other's reply. The faults of the RSET that follows a refusal are in
test_honest_outcomes.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

import anyio
from pooledmail_anyio import (
    FailureKind,
    Host,
    Limits,
    PoolConfig,
    SendFailed,
    SendResult,
    SMTPPool,
    Stage,
)

from ..polling import until
from .fakesmtp import FakeSMTPServer, Fault, Script
from .verdicts import Sent, got_terminator, judge, message, settled, stored, terminator_wire

pytestmark = pytest.mark.anyio

BDAT = ("PIPELINING", "CHUNKING", "8BITMIME")
DATA = ("PIPELINING", "8BITMIME")
NORMAL = Fault("normal")
# A chunk size that cuts `message(tag, CHUNKED)` into several chunks.
SMALL_CHUNK = 96
CHUNKED = 150
P, T, U = FailureKind.PERMANENT, FailureKind.TRANSIENT, FailureKind.UNKNOWN_AFTER_DATA


@dataclass(frozen=True)
class Case:
    """The server refuses the replies named in `refused` (with `refusal`) and commits `fault` at
    the reply named `strike`; the send must end in `kind` at `stage`."""

    extensions: tuple[str, ...]
    refused: str
    strike: str
    kind: FailureKind
    stage: Stage
    recipients: int = 1
    chunked: bool = False
    refusal: str = "5xx"
    # The reply to the lone "." of a DATA taken for nobody; None: such a DATA is refused.
    dot: str | None = None

    def labels(self, chunks: int) -> list[str]:
        """The names of the replies of the first connection, in order."""
        out = ["greeting", "ehlo", "mail", *(f"rcpt{n + 1}" for n in range(self.recipients))]
        if "CHUNKING" in self.extensions:
            out += [f"chunk{n + 1}" for n in range(chunks - 1)] + ["last"]
        else:
            out += ["data"] + (["dot"] if self.dot else [])
        return [*out, "rset"]

    def acts(self, fault: str, chunks: int) -> list[Fault]:
        refused = {"rcpt": [f"rcpt{n + 1}" for n in range(self.recipients)]}.get(
            self.refused, [self.refused]
        )
        return [
            Fault(self.refusal)
            if label in refused
            else Fault(fault)
            if label == self.strike
            else NORMAL
            for label in self.labels(chunks)
        ]


CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    # CHUNKING and PIPELINING: the terminator went with the flight; the refusal is read first.
    "bdat-mail-refused-then-rcpt": (
        Case(BDAT, "mail", "rcpt1", P, Stage.MAIL),
        ("disconnect", "rst", "stall", "malformed", "421"),
    ),
    "bdat-mail-refused-then-last-chunk": (
        Case(BDAT, "mail", "last", P, Stage.MAIL),
        ("disconnect",),
    ),
    "bdat-every-rcpt-refused-then-last-chunk": (
        Case(BDAT, "rcpt", "last", P, Stage.RCPT, recipients=2),
        ("disconnect", "stall"),
    ),
    "bdat-chunk-refused-then-last-chunk": (
        Case(BDAT, "chunk1", "last", P, Stage.BODY, chunked=True),
        ("disconnect", "malformed"),
    ),
    # The control: the second recipient may have been accepted, and the message stored for it.
    "bdat-one-rcpt-of-two-refused-then-the-other": (
        Case(BDAT, "rcpt1", "rcpt2", U, Stage.RCPT, recipients=2),
        ("disconnect",),
    ),
    # PIPELINING without CHUNKING: nothing of the data left, but the refusal's kind (PERMANENT,
    # not retried) and stage are the truth, not a TRANSIENT failure of the next reply.
    "data-mail-refused-then-rcpt": (
        Case(DATA, "mail", "rcpt1", P, Stage.MAIL),
        ("disconnect", "421"),
    ),
    "data-every-rcpt-refused-then-data": (
        Case(DATA, "rcpt", "data", P, Stage.RCPT),
        ("disconnect", "stall"),
    ),
    # DATA answered 354 although no recipient was accepted: the lone "." and its reply.
    "data-every-rcpt-refused-then-lone-dot": (
        Case(DATA, "rcpt", "dot", P, Stage.RCPT, dot="250 2.0.0 ok, for nobody"),
        ("disconnect", "421", "extra"),
    ),
}
PARAMS = [
    pytest.param(name, fault, id=f"{name}-{fault}")
    for name, (_, faults) in CASES.items()
    for fault in faults
]


def config(server: FakeSMTPServer, **options: Any) -> PoolConfig:
    options = {"max_retries": 0, "command_timeout": 0.5, "max_size": 1, **options}
    return PoolConfig([Host("127.0.0.1", server.port, tls="none")], **options)


def first_then_healthy(case: Case, acts: list[Fault]) -> FakeSMTPServer:
    def script(n: int) -> Script:
        if n:
            return Script(extensions=case.extensions)
        return Script(extensions=case.extensions, acts=acts, data_without_recipients=case.dot)

    return FakeSMTPServer(script)


def prepared(case: Case, tag: str) -> tuple[bytes, list[str], Limits]:
    data = message(tag, CHUNKED if case.chunked else 0)
    recipients = [f"r{n}@example.com" for n in range(case.recipients)]
    return data, recipients, Limits(bdat_chunk_size=SMALL_CHUNK if case.chunked else 1 << 20)


def chunk_count(data: bytes, limits: Limits) -> int:
    return -(-len(data) // limits.bdat_chunk_size)


def may_have_been_delivered(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "may have been delivered" in r.getMessage()]


@pytest.mark.parametrize(("name", "fault"), PARAMS)
async def test_a_fault_after_a_refusal_leaves_the_refusal_standing(
    name: str, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES[name][0]
    data, recipients, limits = prepared(case, name)
    chunks = chunk_count(data, limits)
    acts = case.acts(fault, chunks)
    server = first_then_healthy(case, acts)
    caplog.set_level(logging.WARNING, logger="pooledmail")
    async with server.running(), SMTPPool(config(server), limits=limits) as pool:
        try:
            outcome: SendResult | SendFailed = await pool.send_raw(
                data, sender="a@example.com", recipients=recipients
            )
        except SendFailed as failure:
            outcome = failure
        reused = pool.statistics().idle
        stats = pool.send_statistics()
        # The pool sends afterwards, on a new connection.
        after = await pool.send_raw(
            message(f"{name}-after"), sender="a@example.com", recipients="b@example.com"
        )
    assert await settled(server)
    strike = case.labels(chunks).index(case.strike)
    assert (fault, str(strike)) in server.connections[0].faults
    assert not judge(
        server,
        [Sent(name, data, outcome)],
        bdat="CHUNKING" in case.extensions,
        chunk_size=limits.bdat_chunk_size,
    )
    assert isinstance(outcome, SendFailed), outcome
    assert (outcome.kind, outcome.stage) == (case.kind, case.stage), str(outcome)
    assert reused == 0
    assert dict(stats.failed) == {case.kind.value: 1}
    assert isinstance(after, SendResult)
    assert len(server.connections) == 2
    if case.kind is U:
        assert len(may_have_been_delivered(caplog)) == 1
        return
    assert outcome.definitely_not_accepted
    assert outcome.reply is not None
    assert str(outcome.reply.code)[0] == ("5" if case.refusal == "5xx" else "4")
    assert stored(server)[name] == 0
    assert not may_have_been_delivered(caplog)


@pytest.mark.parametrize(
    "name",
    [
        "bdat-mail-refused-then-rcpt",
        "bdat-every-rcpt-refused-then-last-chunk",
        "bdat-chunk-refused-then-last-chunk",
    ],
)
async def test_a_send_cancelled_after_a_refusal_is_not_reported_as_ambiguous(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The whole message went with the flight and the server refused it; the caller cancels
    # while the client waits for the rest of the flight's replies, which never come.
    case = CASES[name][0]
    data, recipients, limits = prepared(case, name)
    chunks = chunk_count(data, limits)
    labels = case.labels(chunks)
    waiting = labels.index("last") - labels.index(case.strike) + 1
    server = first_then_healthy(case, case.acts("stall", chunks))
    caplog.set_level(logging.WARNING, logger="pooledmail")
    async with (
        server.running(),
        SMTPPool(config(server, command_timeout=60.0), limits=limits) as pool,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: pool.send_raw(data, sender="a@example.com", recipients=recipients)
            )
            await until(lambda: bool(pool._connections), what="a connection")
            session = next(iter(pool._connections.values())).session
            # The client has read every reply up to the refusal, and waits for the stalled one.
            await until(lambda: len(session.awaiting) == waiting, what="the refusal read")
            tg.cancel_scope.cancel()
        stats = pool.send_statistics()
    # The whole message reached the server, which refused it.
    wire = terminator_wire(data, bdat=True, chunk_size=limits.bdat_chunk_size)
    assert got_terminator(server, wire)
    assert stored(server)[name] == 0
    assert stats.cancelled_after_terminator == 0
    assert not may_have_been_delivered(caplog)


async def test_a_transient_refusal_then_a_lost_connection_is_retried_and_stored_once() -> None:
    # MAIL 451 in a flight that carried the whole message, then the connection closes: the
    # message was definitely not accepted, so it is retried (max_retries), on a new connection.
    case = Case(BDAT, "mail", "rcpt1", T, Stage.MAIL, refusal="4xx")
    data, recipients, limits = prepared(case, "retried")
    server = first_then_healthy(case, case.acts("disconnect", 1))
    options = {"max_retries": 1, "retry_base_delay": 0.01}
    async with server.running(), SMTPPool(config(server, **options), limits=limits) as pool:
        result = await pool.send_raw(data, sender="a@example.com", recipients=recipients)
        stats = pool.send_statistics()
    assert result.attempts == 2
    assert stored(server)["retried"] == 1
    assert [len(c.messages) for c in server.connections] == [0, 1]
    assert (stats.accepted, dict(stats.failed), stats.retries) == (1, {}, 1)
