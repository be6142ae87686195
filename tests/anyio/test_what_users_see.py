"""What a user sees when something fails: exceptions arrive as themselves and say why.

Each test holds one promise of docs/guide/failures.md on both backends: the exception a caller
catches outside `async with SMTPPool(...)` is the one raised inside it; a setup failure carries its
own kind, stage and reason; a host in cooldown says until when; mistakes are refused with a clear
error before anything is sent.
"""

from __future__ import annotations

import pickle
import ssl
from email.message import EmailMessage
from typing import Any

import pytest

import anyio
from pooledmail_anyio import (
    ConfigError,
    EnvelopeError,
    FailureKind,
    Host,
    PoolConfig,
    SendFailed,
    SMTPPool,
    Stage,
)
from pooledmail_anyio._ports import free_port

from ..polling import until
from .fakesmtp import STALL, FakeSMTPServer, Script

pytestmark = pytest.mark.anyio

BODY = b"Subject: hi\r\n\r\nhello\r\n"


# A retry waits for the next trial when the host's cooldown ends before the send's deadline
# (docs/guide/options.md, "Cooldowns"); the test about a retry that finds the host cooling keeps
# it out for longer than that.
ONE_FAILURE = {"reconnect_cooldown": 30.0}


def local(port: int, **host: Any) -> Host:
    return Host("127.0.0.1", port, **{"tls": "none", **host})


async def send(pool: SMTPPool) -> Any:
    return await pool.send_raw(BODY, sender="a@example.com", recipients=["b@example.com"])


# -- 1. exceptions leave the block as themselves --------------------------------------------


async def test_send_failed_raised_in_the_block_is_caught_outside_it() -> None:
    server = FakeSMTPServer(Script(rcpt="550 5.1.1 no such user"))
    async with server.running():
        with pytest.raises(SendFailed) as caught:
            async with SMTPPool(PoolConfig([local(server.port)], max_retries=0)) as pool:
                await send(pool)
    # As itself: not an exception group, and pytest.raises saw the type directly.
    assert type(caught.value) is SendFailed
    assert caught.value.kind is FailureKind.PERMANENT
    assert caught.value.stage is Stage.RCPT


async def test_envelope_error_and_a_users_own_error_leave_the_block_unwrapped() -> None:
    message = EmailMessage()
    message["Subject"] = "no addresses at all"
    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig([local(server.port)])
        with pytest.raises(EnvelopeError):
            async with SMTPPool(config) as pool:
                await pool.send(message)
        with pytest.raises(ValueError, match="the caller's own"):
            await _send_then_fail(config)
    assert len(server.messages) == 1


async def _send_then_fail(config: PoolConfig) -> None:
    async with SMTPPool(config) as pool:
        await send(pool)
        raise ValueError("the caller's own")


async def test_cancellation_of_the_block_propagates_as_the_backends_own() -> None:
    server = FakeSMTPServer(Script(data_end=STALL))
    async with server.running():
        config = PoolConfig([local(server.port)], command_timeout=30.0)
        with anyio.move_on_after(0.3) as scope:
            async with SMTPPool(config) as pool:
                await send(pool)
        assert scope.cancelled_caught
        assert pool.statistics().live == 0


async def test_the_pools_background_failures_never_reach_the_block() -> None:
    # min_size asks for a connection in the background; the host refuses it. That is the pool's
    # business (cooldown), not an exception in the caller's block.
    config = PoolConfig([local(free_port())], min_size=2)
    async with SMTPPool(config) as pool:
        await until(
            lambda: pool.statistics().closed_total.get("connect_failed", 0) >= 1,
            what="a background connection refused",
        )
        stats = pool.statistics()
    assert stats.closed_total.get("connect_failed", 0) >= 1


# -- 2. setup failures keep their identity --------------------------------------------------


async def test_connection_refused_is_connect_failed_at_connect() -> None:
    config = PoolConfig([local(free_port())], max_retries=0)
    async with SMTPPool(config) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    failure = caught.value
    assert failure.kind is FailureKind.CONNECT_FAILED
    assert failure.stage is Stage.CONNECT
    assert failure.reason == "connection refused"
    assert "connection refused" in str(failure)
    assert failure.host is not None
    assert failure.definitely_not_accepted


async def test_an_unknown_hostname_is_connect_failed_saying_it_cannot_resolve() -> None:
    config = PoolConfig([Host("no-such-host.invalid", 25, tls="none")], max_retries=0)
    async with SMTPPool(config) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    assert caught.value.stage is Stage.CONNECT
    assert "cannot resolve 'no-such-host.invalid'" in str(caught.value)


async def test_starttls_not_offered_is_tls_failed_saying_so() -> None:
    server = FakeSMTPServer(Script(extensions=("PIPELINING",)))
    async with server.running():
        config = PoolConfig([local(server.port, tls="starttls")], max_retries=0)
        async with SMTPPool(config) as pool:
            with pytest.raises(SendFailed) as caught:
                await send(pool)
    assert caught.value.kind is FailureKind.TLS_FAILED
    assert caught.value.stage is Stage.TLS
    assert "server does not offer STARTTLS" in str(caught.value)
    assert server.messages == []


async def test_an_untrusted_certificate_is_tls_failed_saying_why(
    server_tls: ssl.SSLContext,
) -> None:
    server = FakeSMTPServer(Script(extensions=("STARTTLS",), tls_context=server_tls))
    async with server.running():
        config = PoolConfig([local(server.port, tls="starttls")], max_retries=0)
        # The default trust store does not know the test CA.
        async with SMTPPool(config) as pool:
            with pytest.raises(SendFailed) as caught:
                await send(pool)
    assert caught.value.kind is FailureKind.TLS_FAILED
    assert caught.value.stage is Stage.TLS
    assert "certificate verify failed" in str(caught.value)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


async def test_implicit_tls_against_a_plaintext_port_is_tls_failed_with_a_hint() -> None:
    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig([local(server.port, tls="implicit")], max_retries=0)
        async with SMTPPool(config) as pool:
            with pytest.raises(SendFailed) as caught:
                await send(pool)
    assert caught.value.kind is FailureKind.TLS_FAILED
    assert caught.value.stage is Stage.TLS
    assert "try tls='starttls'" in str(caught.value)


async def test_wrong_credentials_are_auth_failed_with_the_servers_reply(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server = FakeSMTPServer(
        Script(
            extensions=("STARTTLS", "AUTH PLAIN LOGIN"),
            tls_context=server_tls,
            auth="535 5.7.8 authentication credentials invalid",
        )
    )
    async with server.running():
        host = local(server.port, tls="starttls", username="alice", password="not-it")
        async with SMTPPool(PoolConfig([host]), ssl_context=client_tls) as pool:
            with pytest.raises(SendFailed) as caught:
                await send(pool)
    assert caught.value.kind is FailureKind.AUTH_FAILED
    assert caught.value.stage is Stage.AUTH
    assert "535 5.7.8 authentication credentials invalid" in str(caught.value)
    assert "not-it" not in str(caught.value) + repr(caught.value)
    assert caught.value.attempts == 1  # AUTH is not retried


# -- 3. a silent server fails in connect_timeout, with its own kind ---------------------------


async def test_a_server_that_never_greets_fails_at_greeting_with_the_implicit_tls_hint() -> None:
    server = FakeSMTPServer(Script(greeting=STALL))
    async with server.running():
        config = PoolConfig([local(server.port)], connect_timeout=0.3, max_retries=0)
        async with SMTPPool(config) as pool:
            with pytest.raises(SendFailed) as caught:
                await send(pool)
            stats = pool.statistics()
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    assert caught.value.stage is Stage.GREETING
    assert "no greeting within 0.3 s: is this an implicit-TLS port? try tls='implicit'" in str(
        caught.value
    )
    assert stats.connecting == 0


# -- 4. a host in cooldown says until when ---------------------------------------------------


async def test_a_host_in_cooldown_fails_sends_naming_it_its_error_and_the_time_left() -> None:
    port = free_port()
    config = PoolConfig([local(port)], max_retries=0, reconnect_cooldown=30.0, cooldown_jitter=0)
    async with SMTPPool(config) as pool:
        with pytest.raises(SendFailed) as first:
            await send(pool)
        with pytest.raises(SendFailed) as second:
            await send(pool)
    assert first.value.kind is FailureKind.CONNECT_FAILED
    later = second.value
    assert later.kind is FailureKind.HOSTS_UNAVAILABLE
    assert later.stage is Stage.ACQUIRE
    text = str(later)
    assert f"127.0.0.1:{port} cooling down for" in text
    assert "s more after CONNECT_FAILED (connection refused)" in text


async def test_a_retry_that_finds_the_host_cooling_reports_the_failure_that_caused_it() -> None:
    port = free_port()
    config = PoolConfig([local(port)], max_retries=2, retry_base_delay=0.01, **ONE_FAILURE)
    async with SMTPPool(config) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    # The retry that found no host is an attempt (docs/guide/failures.md, "Reading a
    # SendFailed"): attempts and retries agree.
    assert caught.value.attempts == 2
    assert "no host to retry on" in str(caught.value)


async def test_attempts_and_retries_agree_when_the_retry_finds_every_host_cooling() -> None:
    # The server refuses the session at its greeting: the host cools down, and the one retry
    # finds it cooling, so it never reaches the server (its own record says one connection).
    server = FakeSMTPServer(Script(greeting="421 4.3.2 not now"))
    async with server.running():
        config = PoolConfig(
            [local(server.port)], max_retries=1, retry_base_delay=0.01, **ONE_FAILURE
        )
        async with SMTPPool(config) as pool:
            with pytest.raises(SendFailed) as caught:
                await send(pool)
            stats = pool.send_statistics()
    failure = caught.value
    assert failure.kind is FailureKind.CONNECT_FAILED
    assert "no host to retry on" in str(failure)
    assert server.attempts == 1
    assert server.messages == []
    assert stats.retries == 1
    assert failure.attempts == 1 + stats.retries
    assert f"after {failure.attempts} attempt(s)" in str(failure)


# -- 5. the smaller promises -----------------------------------------------------------------


async def test_a_pool_that_was_never_opened_says_so() -> None:
    pool = SMTPPool(PoolConfig([local(free_port())]))
    with pytest.raises(RuntimeError, match="not open: use `async with SMTPPool"):
        await send(pool)


async def test_a_string_given_to_send_is_refused_pointing_at_send_raw() -> None:
    async with SMTPPool(PoolConfig([local(free_port())])) as pool:
        with pytest.raises(TypeError, match=r"message: expected .*EmailMessage.*send_raw"):
            await pool.send("From: a@example.com\r\n\r\nhi")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="data: expected bytes, got str"):
            await pool.send_raw("hi", sender="a@example.com", recipients=["b@example.com"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="retry_unknown"):
            await pool.send_raw(
                BODY,
                sender="a@example.com",
                recipients=["b@example.com"],
                retry_unknown="yes",  # type: ignore[arg-type]
            )
        assert pool.statistics().created_total == 0


def test_a_port_in_the_hostname_is_refused() -> None:
    with pytest.raises(ConfigError, match="hostname: must not include a port"):
        Host("smtp.example.com:587")


async def test_send_failed_pickles_with_everything_a_user_reads() -> None:
    server = FakeSMTPServer(Script(mail="451 4.3.0 try again later"))
    async with server.running(), SMTPPool(PoolConfig([local(server.port)], max_retries=0)) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is SendFailed
    for field in (
        "kind",
        "stage",
        "host",
        "attempts",
        "reply",
        "reason",
        "definitely_not_accepted",
        "message_id",
    ):
        assert getattr(copy, field) == getattr(caught.value, field), field
    assert str(copy) == str(caught.value)
    assert "451 4.3.0 try again later" in str(copy)


# -- Date, Message-ID and DSN -----------------------------------------------------------------


def _message(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice <alice@sender.example>"
    message["To"] = "bob@example.com"
    message["Subject"] = "hello"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Hello.\n")
    return message


async def test_send_adds_date_and_a_message_id_on_the_senders_domain() -> None:
    server = FakeSMTPServer(Script())
    message = _message()
    async with server.running(), SMTPPool(PoolConfig([local(server.port)])) as pool:
        result = await pool.send(message)
    (stored,) = server.messages
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    assert result.message_id is not None
    assert result.message_id.endswith("@sender.example>")
    assert f"\r\nMessage-ID: {result.message_id}" in head
    assert "\r\nDate: " in head
    # The caller's message is not changed.
    assert message["Message-ID"] is None
    assert message["Date"] is None


async def test_send_keeps_the_messages_own_date_and_message_id() -> None:
    server = FakeSMTPServer(Script())
    own = "<kept.1@sender.example>"
    message = _message(Message_ID=own, Date="Tue, 01 Dec 2026 10:00:00 +0000")
    async with server.running(), SMTPPool(PoolConfig([local(server.port)])) as pool:
        result = await pool.send(message)
    head = server.messages[0].split(b"\r\n\r\n", 1)[0].decode()
    assert result.message_id == own
    assert head.count("Message-ID:") == 1
    assert head.count("Date:") == 1


async def test_send_raw_adds_nothing_and_reports_the_raw_message_id() -> None:
    server = FakeSMTPServer(Script())
    raw = b"Message-ID: <raw.7@example.com>\r\nSubject: raw\r\n\r\nbody\r\n"
    async with server.running(), SMTPPool(PoolConfig([local(server.port)])) as pool:
        result = await pool.send_raw(raw, sender="a@example.com", recipients=["b@example.com"])
        bare = await pool.send_raw(BODY, sender="a@example.com", recipients=["b@example.com"])
    assert result.message_id == "<raw.7@example.com>"
    assert bare.message_id is None
    assert server.messages == [raw, BODY]


async def test_dsn_parameters_go_out_when_the_server_offers_dsn() -> None:
    server = FakeSMTPServer(Script(extensions=("PIPELINING", "DSN")))
    async with server.running(), SMTPPool(PoolConfig([local(server.port)])) as pool:
        await pool.send(
            _message(), notify=["SUCCESS", "FAILURE"], ret="HDRS", envid="order-42", orcpt=True
        )
    commands = server.connections[0].commands
    mail = next(c for c in commands if c.startswith("MAIL FROM:"))
    rcpt = next(c for c in commands if c.startswith("RCPT TO:"))
    assert "RET=HDRS" in mail
    assert "ENVID=order-42" in mail
    assert "NOTIFY=SUCCESS,FAILURE" in rcpt
    assert "ORCPT=rfc822;bob@example.com" in rcpt


async def test_dsn_asked_of_a_server_without_dsn_is_refused_before_any_byte() -> None:
    server = FakeSMTPServer(Script(extensions=("PIPELINING",)))
    async with server.running(), SMTPPool(PoolConfig([local(server.port)])) as pool:
        with pytest.raises(SendFailed) as caught:
            await pool.send(_message(), notify="NEVER")
        # The session is fine and is used again.
        await pool.send(_message())
    assert caught.value.kind is FailureKind.PERMANENT
    assert caught.value.reply is None
    assert "DSN" in str(caught.value)
    assert caught.value.message_id is not None
    assert len(server.connections) == 1
    assert sum(c.startswith("MAIL FROM:") for c in server.connections[0].commands) == 1


@pytest.mark.parametrize(
    ("sender", "recipients", "error", "text"),
    [
        ("a@example.com", ["b>@example.com"], ValueError, "recipients[0]"),
        ("a@example.com", ["b\u2028@example.com"], ValueError, "recipients[0]"),
        ("a b@example.com", ["b@example.com"], ValueError, "sender"),
        ("a@example.com", ["x" * 65 + "@example.com"], ValueError, "recipients[0]"),
        (None, ["b@example.com"], TypeError, "sender"),
        ("a@example.com", [b"b@example.com"], TypeError, "recipients[0]"),
    ],
)
async def test_bad_addresses_are_refused_naming_the_argument_before_any_connection(
    sender: Any, recipients: Any, error: type[Exception], text: str
) -> None:
    server = FakeSMTPServer(Script())
    async with server.running(), SMTPPool(PoolConfig([local(server.port)])) as pool:
        with pytest.raises(error) as caught:
            await pool.send_raw(BODY, sender=sender, recipients=recipients)
        created = pool.statistics().created_total
    assert text in str(caught.value)
    assert created == 0
    assert server.connections == []


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"ssl_context": "verify please"}, "ssl_context"),
        ({"limits": {"max_line_length": 100}}, "limits"),
        ({"random": object()}, "random"),
        ({"clock": 12.0}, "clock"),
        ({"name": ""}, "name"),
        ({"name": "web\nWARNING forged line"}, "name"),
        ({"name": "pool\udcff"}, "name"),
        ({"metrics": "yes"}, "metrics"),
        ({"log_recipients": 1}, "log_recipients"),
        ({"meter_provider": 5}, "meter_provider"),
        ({"meter_provider": "otel"}, "meter_provider"),
        ({"meter_provider": object()}, "meter_provider"),
    ],
)
def test_a_wrong_pool_option_fails_at_construction_with_its_name(
    options: dict[str, Any], option: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        SMTPPool(PoolConfig([local(25)]), **options)
    assert caught.value.option == option


async def test_with_the_default_cooldowns_a_refused_port_fails_after_one_attempt_per_try() -> None:
    # No cooldown pinned: the host never worked, so each try learns from its own attempt rather
    # than waiting out acquire_timeout for trials (docs/guide/options.md, "Cooldowns").
    config = PoolConfig([local(free_port())])  # max_retries=1: the retry waits for one trial
    async with SMTPPool(config) as pool:
        with pytest.raises(SendFailed) as caught:
            await send(pool)
        stats = pool.statistics()
    assert caught.value.kind is FailureKind.CONNECT_FAILED
    assert caught.value.reason.startswith("connection refused")
    assert caught.value.attempts == 2
    assert stats.closed_total["connect_failed"] == 2
