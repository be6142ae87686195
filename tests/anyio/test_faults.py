"""The pool against a scriptable fake server: flights, BDAT, and every failure class."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import anyio
from pooledmail_anyio import (
    EnvelopeError,
    FailureKind,
    Host,
    InvalidArgument,
    PoolConfig,
    SendFailed,
    SMTPPool,
    Stage,
)

from .fakesmtp import DISCONNECT, STALL, FakeSMTPServer, Script
from .verdicts import settled

pytestmark = pytest.mark.anyio

BODY = b"Subject: hi\r\n\r\nline one\r\n.leading dot\r\n"


def config(server: FakeSMTPServer, **options: Any) -> PoolConfig:
    # A setup failure fails a send at once only while the host cools down past the send's
    # deadline; with the default first cooldown (1 s) the send waits for trials
    # (docs/guide/options.md, "Cooldowns"). These tests are about what the failure says.
    options = {"max_retries": 0, "command_timeout": 5.0, "reconnect_cooldown": 30.0, **options}
    return PoolConfig([Host("127.0.0.1", server.port, tls="none")], **options)


async def send(pool: SMTPPool, recipients: tuple[str, ...] = ("bob@example.com",)) -> Any:
    return await pool.send_raw(BODY, sender="alice@example.com", recipients=recipients)


async def test_pipelined_envelope_arrives_in_one_read() -> None:
    server = FakeSMTPServer(Script())
    async with server.running(), SMTPPool(config(server)) as pool:
        result = await send(pool, ("a@example.com", "b@example.com"))
    reads = server.connections[0].reads
    flight = next(r for r in reads if r.startswith(b"MAIL FROM:"))
    assert flight.count(b"\r\n") == 4  # MAIL, two RCPTs and DATA, one read
    assert flight.endswith(b"DATA\r\n")
    assert result.accepted == ("a@example.com", "b@example.com")
    # The body is dot-stuffed on the wire and arrives with its terminator in one read.
    body_read = next(r for r in reads if r.startswith(b"Subject: hi"))
    assert body_read == BODY.replace(b"\r\n.leading", b"\r\n..leading") + b".\r\n"


async def test_bdat_sends_envelope_and_data_in_one_flight() -> None:
    server = FakeSMTPServer(Script(extensions=("PIPELINING", "CHUNKING", "8BITMIME")))
    async with server.running(), SMTPPool(config(server)) as pool:
        result = await send(pool)
    flight = next(r for r in server.connections[0].reads if r.startswith(b"MAIL FROM:"))
    assert f"BDAT {len(BODY)} LAST\r\n".encode() in flight
    assert flight.endswith(BODY)
    assert server.messages == [BODY]
    assert result.reply.code == 250


async def test_without_pipelining_commands_go_one_at_a_time() -> None:
    server = FakeSMTPServer(Script(extensions=("8BITMIME",)))
    async with server.running(), SMTPPool(config(server)) as pool:
        await send(pool)
    reads = server.connections[0].reads
    assert b"MAIL FROM:<alice@example.com>\r\n" in reads
    assert b"RCPT TO:<bob@example.com>\r\n" in reads


# (script field, reply, kind, stage, definitely not accepted, connection kept)
CLASSIFICATION = [
    ("mail", "451 4.3.0 try later", FailureKind.TRANSIENT, Stage.MAIL, True, True),
    ("mail", "550 5.7.1 no", FailureKind.PERMANENT, Stage.MAIL, True, True),
    ("rcpt", "450 4.2.0 busy", FailureKind.TRANSIENT, Stage.RCPT, True, True),
    ("rcpt", "550 5.1.1 unknown user", FailureKind.PERMANENT, Stage.RCPT, True, True),
    ("data", "451 4.3.0 later", FailureKind.TRANSIENT, Stage.DATA, True, True),
    ("data", "554 5.5.0 no", FailureKind.PERMANENT, Stage.DATA, True, True),
    ("data_end", "452 4.3.1 full", FailureKind.TRANSIENT, Stage.DATA_END, True, True),
    ("data_end", "554 5.7.1 spam", FailureKind.PERMANENT, Stage.DATA_END, True, True),
    ("mail", "421 4.3.2 closing", FailureKind.TRANSIENT, Stage.MAIL, True, False),
    ("mail", DISCONNECT, FailureKind.TRANSIENT, Stage.MAIL, True, False),
    ("data", DISCONNECT, FailureKind.TRANSIENT, Stage.DATA, True, False),
    ("data_end", DISCONNECT, FailureKind.UNKNOWN_AFTER_DATA, Stage.DATA_END, False, False),
    ("data_end", "421 4.3.2 bye", FailureKind.TRANSIENT, Stage.DATA_END, True, False),
]


@pytest.mark.parametrize(
    ("field", "reply", "kind", "stage", "not_accepted", "kept"),
    CLASSIFICATION,
    ids=[f"{c[0]}-{c[1].split()[0].strip('<>')}" for c in CLASSIFICATION],
)
async def test_failure_is_classified_as_the_table_says(
    field: str, reply: str, kind: FailureKind, stage: Stage, not_accepted: bool, kept: bool
) -> None:
    server = FakeSMTPServer(dataclasses.replace(Script(), **{field: reply}))
    async with server.running(), SMTPPool(config(server)) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
        stats = pool.statistics()
    failure = caught.value
    assert (failure.kind, failure.stage) == (kind, stage)
    assert failure.definitely_not_accepted is not_accepted
    assert failure.attempts == 1
    assert failure.host == f"127.0.0.1:{server.port}"
    if reply.startswith(("4", "5")):
        assert failure.reply is not None
        assert failure.reply.code == int(reply[:3])
    assert (stats.idle == 1) is kept
    # Judged against the server's record too: not accepted means not stored; otherwise the
    # terminator reached the server (the fake server stores a message it means to accept).
    assert await settled(server)
    if not_accepted:
        assert server.messages == []
    else:
        assert server.received == 1


async def test_disconnect_after_terminator_is_never_resent() -> None:
    server = FakeSMTPServer(lambda n: Script(data_end=DISCONNECT) if n == 0 else Script())
    async with server.running(), SMTPPool(config(server, max_retries=3)) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    assert caught.value.kind is FailureKind.UNKNOWN_AFTER_DATA
    assert not caught.value.definitely_not_accepted
    assert len(server.connections) == 1
    assert len(server.messages) == 1  # the server did get it: resending would duplicate it


async def test_stall_after_terminator_times_out_as_unknown_after_data() -> None:
    server = FakeSMTPServer(Script(data_end=STALL))
    async with server.running(), SMTPPool(config(server, command_timeout=0.2)) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
        stats = pool.statistics()
    assert caught.value.kind is FailureKind.UNKNOWN_AFTER_DATA
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert stats.leased == 0
    # The server did read the whole message: "unknown" is the truth, not a guess.
    assert server.received == 1


async def test_transient_failure_is_retried_on_a_new_connection() -> None:
    server = FakeSMTPServer(lambda n: Script(mail="421 4.3.2 going away") if n == 0 else Script())
    options = {"max_retries": 1, "retry_base_delay": 0.01}
    async with server.running(), SMTPPool(config(server, **options)) as pool:
        result = await send(pool)
        stats = pool.statistics()
    assert result.attempts == 2
    assert len(server.connections) == 2
    assert stats.created_total == 2


async def test_partial_refusal_sends_to_the_accepted_recipients() -> None:
    def rcpt(line: str) -> str:
        return "550 5.1.1 no such user" if "ghost" in line else "250 2.1.5 ok"

    server = FakeSMTPServer(Script(rcpt=rcpt))
    async with server.running(), SMTPPool(config(server)) as pool:
        result = await send(pool, ("bob@example.com", "ghost@example.com"))
    assert result.accepted == ("bob@example.com",)
    assert [(a, r.code) for a, r in result.refused] == [("ghost@example.com", 550)]
    assert len(server.messages) == 1


async def test_all_recipients_refused_resets_and_keeps_the_connection() -> None:
    server = FakeSMTPServer(Script(rcpt="550 5.1.1 no such user"))
    async with server.running(), SMTPPool(config(server)) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool, ("ghost@example.com",))
        stats = pool.statistics()
    assert caught.value.kind is FailureKind.PERMANENT
    assert caught.value.stage is Stage.RCPT
    assert server.messages == []
    assert stats.idle == 1


async def test_starttls_response_injection_is_refused() -> None:
    script = Script(
        extensions=("PIPELINING", "STARTTLS"),
        starttls_injection=b"250 injected\r\n",
    )
    server = FakeSMTPServer(script)
    async with server.running():
        cfg = PoolConfig(
            [Host("127.0.0.1", server.port, tls="starttls")], max_retries=0, reconnect_cooldown=30.0
        )
        async with SMTPPool(cfg) as pool:
            with pytest.raises(SendFailed) as caught:
                await send(pool)
    assert caught.value.kind is FailureKind.TLS_FAILED
    assert "bytes received after the STARTTLS 220" in str(caught.value)
    assert server.messages == []


async def test_refused_greeting_is_connect_failed() -> None:
    server = FakeSMTPServer(Script(greeting="554 5.3.2 go away"))
    async with server.running(), SMTPPool(config(server)) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    assert caught.value.stage is Stage.GREETING
    assert "554 5.3.2 go away" in str(caught.value)
    assert caught.value.definitely_not_accepted


async def test_a_server_dripping_its_greeting_cannot_hold_the_connection() -> None:
    server = FakeSMTPServer(Script(drip_greeting=0.05))  # about 1 s for the whole greeting
    # connect_timeout bounds the whole setup, the greeting included, however the bytes come.
    options = {"command_timeout": 5.0, "connect_timeout": 0.3}
    async with server.running(), SMTPPool(config(server, **options)) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
        stats = pool.statistics()
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    assert caught.value.stage is Stage.GREETING
    assert "no greeting within 0.3 s" in str(caught.value)
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert stats.connecting == 0


async def test_cancelled_sender_leaves_no_leased_slot() -> None:
    server = FakeSMTPServer(lambda n: Script(data_end=STALL) if n == 0 else Script())
    async with server.running(), SMTPPool(config(server)) as pool:
        with anyio.move_on_after(0.3):
            await send(pool)
        stats = pool.statistics()
        assert stats.leased == 0
        assert stats.idle == 0
        result = await send(pool)
    assert result.reply.code == 250


def test_send_failed_pickles_with_every_field() -> None:
    import pickle

    from pooledmail_anyio import Reply

    failure = SendFailed(
        FailureKind.TRANSIENT,
        Stage.RCPT,
        host="mx.example:25",
        attempts=2,
        reply=Reply(450, ("busy",), (4, 2, 0)),
        definitely_not_accepted=True,
    )
    copy = pickle.loads(pickle.dumps(failure))
    assert (copy.kind, copy.stage, copy.host, copy.attempts) == (
        FailureKind.TRANSIENT,
        Stage.RCPT,
        "mx.example:25",
        2,
    )
    assert copy.reply == failure.reply
    assert copy.definitely_not_accepted
    assert str(copy) == str(failure)


@pytest.mark.parametrize(
    ("sender", "recipients", "error"),
    [
        ("alice@example.com\r\nRCPT TO:<x@evil>", ["bob@example.com"], InvalidArgument),
        ("alice@example.com", ["bob@example.com\n"], InvalidArgument),
        ("alice@example.com", ["bob@exa\x00mple.com"], InvalidArgument),
        ("alice@example.com", [], EnvelopeError),
    ],
)
async def test_bad_addresses_are_refused_before_any_connection(
    sender: str, recipients: list[str], error: type[Exception]
) -> None:
    server = FakeSMTPServer(Script())
    async with server.running(), SMTPPool(config(server)) as pool:
        with pytest.raises(error) as caught:
            await pool.send_raw(BODY, sender=sender, recipients=recipients)
        stats = pool.statistics()
    assert "evil" not in str(caught.value)
    assert stats.created_total == 0
    assert server.connections == []


HOSTILE_GREETINGS = {
    "garbage": b"\x00\xff\xfe garbage without a code\r\n",
    "no_line_end": b"220" + b"x" * (2 * 1024 * 1024),
    "mixed_codes": b"220-hello\r\n250 world\r\n",
    "invalid_utf8_then_close": b"220 \xc3\x28 hi\r\n421 bye\r\n",
    "code_out_of_range": b"999 nine nine nine\r\n",
    "too_many_lines": b"220-x\r\n" * 100_000,
}


@pytest.mark.parametrize("payload", HOSTILE_GREETINGS.values(), ids=HOSTILE_GREETINGS.keys())
async def test_a_hostile_greeting_fails_the_connect_cleanly(payload: bytes) -> None:
    server = FakeSMTPServer(Script(raw_greeting=payload))
    async with server.running(), SMTPPool(config(server, command_timeout=2.0)) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
        stats = pool.statistics()
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    # A greeting followed by an unsolicited 421 fails at EHLO, whose reply the 421 becomes.
    assert caught.value.stage in (Stage.GREETING, Stage.EHLO)
    assert caught.value.definitely_not_accepted
    assert stats.connecting == 0
    assert stats.idle == 0


async def test_a_local_refusal_does_not_count_against_max_messages() -> None:
    server = FakeSMTPServer(Script(extensions=("PIPELINING", "SIZE 100")))
    async with server.running(), SMTPPool(config(server, max_messages_per_connection=1)) as pool:
        with pytest.raises(SendFailed) as caught:
            await pool.send_raw(BODY * 10, sender="a@example.com", recipients=["b@example.com"])
        result = await send(pool)
        stats = pool.statistics()
    assert caught.value.kind is FailureKind.PERMANENT
    assert result.reply.code == 250
    assert stats.created_total == 1
