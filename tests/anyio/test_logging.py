"""Log records under `pooledmail`: what each says, at which level, with which fields; and that no
record at DEBUG ever holds a password, a token, an AUTH line, a message body or (unless the
application asks) a recipient address. On asyncio and trio."""

from __future__ import annotations

import base64
import logging
import re
import ssl
from typing import Any

import pytest

import anyio
from pooledmail_anyio import FailureKind, Host, PoolConfig, SendFailed, SMTPPool

from ..polling import until
from .fakesmtp import DISCONNECT, STALL, FakeSMTPServer, Script
from .tokenserver import TokenServer

pytestmark = pytest.mark.anyio

PASSWORD = "pw-9c1e-never-logged"
TOKEN_EXPIRED = "ya29.expired-token-never-logged"
TOKEN_FRESH = "ya29.fresh-token-never-logged"
BODY_MARKER = "body-5f2a-never-logged"
RECIPIENT = "carol.private@example.org"


def secrets_in(record: logging.LogRecord) -> list[str]:
    """Which forbidden strings a record holds anywhere: message, arguments, fields, traceback."""
    text = logging.Formatter().format(record) + repr(record.__dict__)
    plain_auth = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    forbidden = [
        PASSWORD,
        TOKEN_EXPIRED,
        TOKEN_FRESH,
        plain_auth,
        base64.b64encode(PASSWORD.encode()).decode(),
        BODY_MARKER,
        RECIPIENT,
        "AUTH PLAIN",
        "AUTH XOAUTH2",
    ]
    for token in (TOKEN_EXPIRED, TOKEN_FRESH):
        line = f"user=alice@example.com\x01auth=Bearer {token}\x01\x01"
        forbidden.append(base64.b64encode(line.encode()).decode())
    return [secret for secret in forbidden if secret.lower() in text.lower()]


def body(n: int) -> bytes:
    return f"Subject: test {n}\r\n\r\n{BODY_MARKER} number {n}\r\n".encode()


def echoing_rcpt(line: str) -> str:
    # Refuse the private recipient, quoting it as real servers do.
    address = re.search(r"<([^>]*)>", line)
    assert address is not None
    if address.group(1) == RECIPIENT:
        return f"550 5.1.1 <{RECIPIENT}>: Recipient address rejected: User unknown"
    if address.group(1).startswith("later"):
        return f"451 4.7.1 <{address.group(1)}>: greylisted, try later"
    return "250 2.1.5 ok"


def auth_host(port: int, **options: Any) -> Host:
    return Host(
        "127.0.0.1",
        port,
        tls="none",
        allow_plaintext_auth=True,
        username="alice",
        password=PASSWORD,
        **options,
    )


async def test_no_secret_body_or_recipient_in_any_record_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pooledmail")
    extensions = ("PIPELINING", "AUTH PLAIN LOGIN")
    good = FakeSMTPServer(
        Script(
            extensions=extensions,
            rcpt=echoing_rcpt,
            data_end=lambda n: {0: "250 ok", 1: DISCONNECT, 2: STALL}.get(n, "250 ok"),
        )
    )
    refusing = FakeSMTPServer(
        Script(extensions=extensions, auth="535 5.7.8 Authentication credentials invalid")
    )
    tokens = TokenServer({TOKEN_FRESH})
    expired_first = iter([TOKEN_EXPIRED, TOKEN_FRESH])

    async def provider(refused: str | None) -> str:
        return next(expired_first)

    async with good.running(), refusing.running(), tokens.running():
        config = PoolConfig([auth_host(good.port)], retry_base_delay=0.0, command_timeout=60.0)
        async with SMTPPool(config) as pool:
            await pool.send_raw(body(0), sender="a@example.com", recipients=["bob@example.com"])
            with pytest.raises(SendFailed) as unknown:
                await pool.send_raw(body(1), sender="a@example.com", recipients=["bob@example.com"])
            with pytest.raises(SendFailed) as permanent:
                await pool.send_raw(body(2), sender="a@example.com", recipients=[RECIPIENT])
            with pytest.raises(SendFailed):
                await pool.send_raw(body(3), sender="a@example.com", recipients=["later@x.org"])

            async def send_4() -> None:
                await pool.send_raw(body(4), sender="a@example.com", recipients=["bob@example.com"])

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_4)
                # The server's third terminator (data_end n=2: stored, never answered; the
                # refused sends never reached DATA); the caller gives up once it is there.
                await until(lambda: good.received == 3, what="the terminator of body 4 received")
                tg.cancel_scope.cancel()
        config = PoolConfig([auth_host(refusing.port)], max_retries=0)
        async with SMTPPool(config) as pool:
            with pytest.raises(SendFailed) as refused:
                await pool.send_raw(body(5), sender="a@example.com", recipients=["bob@example.com"])
        token_host = Host(
            "127.0.0.1",
            tokens.port,
            tls="none",
            allow_plaintext_auth=True,
            username="alice@example.com",
            oauth2_token_provider=provider,
        )
        async with SMTPPool(PoolConfig([token_host])) as pool:
            await pool.send_raw(body(6), sender="a@example.com", recipients=["bob@example.com"])
    assert unknown.value.kind is FailureKind.UNKNOWN_AFTER_DATA
    assert permanent.value.kind is FailureKind.PERMANENT
    assert refused.value.kind is FailureKind.AUTH_FAILED
    assert tokens.tokens_seen == [TOKEN_EXPIRED, TOKEN_FRESH]
    records = [r for r in caplog.records if r.name.startswith("pooledmail")]
    # Every kind of record was written: opened, closed, failed, retried, cancelled, cooling down.
    messages = " | ".join(r.getMessage() for r in records)
    for expected in (
        "opened",
        "closed",
        "UNKNOWN_AFTER_DATA",
        "PERMANENT",
        "retrying",
        "cancelled after",
        "cooling down",
    ):
        assert expected in messages, expected
    for record in records:
        assert secrets_in(record) == [], record.getMessage()


async def test_each_record_has_its_level_logger_and_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pooledmail")
    script = Script(rcpt=echoing_rcpt, data_end=lambda n: DISCONNECT if n == 1 else "250 ok")
    server = FakeSMTPServer(script)
    async with server.running():
        key = f"127.0.0.1:{server.port}"
        config = PoolConfig(
            [Host("127.0.0.1", server.port, tls="none")],
            max_retries=1,
            retry_base_delay=0.0,
        )
        async with SMTPPool(config, name="billing") as pool:
            first = await pool.send_raw(body(0), sender="a@x.org", recipients=["b@x.org"])
            with pytest.raises(SendFailed):
                await pool.send_raw(body(1), sender="a@x.org", recipients=["b@x.org"])
            with pytest.raises(SendFailed) as later:
                await pool.send_raw(body(2), sender="a@x.org", recipients=["later@x.org"])

    def one(logger: str, level: int, contains: str) -> logging.LogRecord:
        found = [
            r
            for r in caplog.records
            if r.name == logger and r.levelno == level and contains in r.getMessage()
        ]
        assert found, (logger, contains, [r.getMessage() for r in caplog.records])
        return found[0]

    opened = one("pooledmail.connection", logging.DEBUG, "opened")
    assert opened.host == key  # type: ignore[attr-defined]
    assert opened.pool == "billing"  # type: ignore[attr-defined]
    assert opened.tls_version is None  # type: ignore[attr-defined]
    assert opened.seconds >= 0  # type: ignore[attr-defined]
    closed = one("pooledmail.connection", logging.DEBUG, "closed (broken)")
    assert closed.reason == "broken"  # type: ignore[attr-defined]
    unknown = one("pooledmail.send", logging.WARNING, "UNKNOWN_AFTER_DATA")
    assert "may have been delivered" in unknown.getMessage()
    assert unknown.kind == "unknown_after_data"  # type: ignore[attr-defined]
    assert unknown.stage == "data_end"  # type: ignore[attr-defined]
    assert unknown.attempt == 1  # type: ignore[attr-defined]
    retry = one("pooledmail.send", logging.DEBUG, "retrying")
    assert retry.kind == "transient"  # type: ignore[attr-defined]
    assert retry.attempt == 1  # type: ignore[attr-defined]
    transient = one("pooledmail.send", logging.INFO, "TRANSIENT during RCPT")
    assert transient.message_id == later.value.message_id  # type: ignore[attr-defined]
    assert transient.attempt == 2  # type: ignore[attr-defined]
    assert transient.definitely_not_accepted is True  # type: ignore[attr-defined]
    # The recipient the server quoted is masked; the rest of the reply stays.
    assert "<recipient>" in transient.getMessage()
    assert "greylisted" in transient.getMessage()
    assert not hasattr(transient, "recipients")
    assert first.host == key


async def test_recipients_are_logged_when_the_application_enables_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pooledmail")
    server = FakeSMTPServer(Script(rcpt=echoing_rcpt))
    async with server.running():
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")])
        async with SMTPPool(config, log_recipients=True) as pool:
            with pytest.raises(SendFailed):
                await pool.send_raw(body(0), sender="a@x.org", recipients=[RECIPIENT])
    (record,) = [r for r in caplog.records if r.name == "pooledmail.send"]
    assert record.recipients == (RECIPIENT,)  # type: ignore[attr-defined]
    assert RECIPIENT in record.getMessage()


async def test_cooldown_and_recovery_are_logged_with_their_error_and_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pooledmail")
    server = FakeSMTPServer(lambda n: Script(greeting="554 5.3.2 not now") if n == 0 else Script())
    async with server.running():
        config = PoolConfig(
            [Host("127.0.0.1", server.port, tls="none")],
            reconnect_cooldown=0.05,
            max_reconnect_cooldown=0.05,
            cooldown_jitter=0.0,
            acquire_timeout=5.0,
        )
        async with SMTPPool(config) as pool:
            # The first connection is refused: the host never worked, so the attempt fails at
            # once with its cause; the retry waits for the trial after the cooldown, which works.
            result = await pool.send_raw(body(0), sender="a@x.org", recipients=["b@x.org"])
    assert result.attempts == 2
    assert len(server.messages) == 1
    key = f"127.0.0.1:{server.port}"
    (cooling,) = [r for r in caplog.records if "cooling down" in r.getMessage()]
    assert cooling.name == "pooledmail.host"
    assert cooling.levelno == logging.WARNING
    assert cooling.kind == "connect_failed"  # type: ignore[attr-defined]
    assert cooling.stage == "greeting"  # type: ignore[attr-defined]
    assert cooling.cooldown_seconds == pytest.approx(0.05)  # type: ignore[attr-defined]
    assert "554 5.3.2 not now" in cooling.getMessage()
    (recovered,) = [r for r in caplog.records if "usable again" in r.getMessage()]
    assert recovered.name == "pooledmail.host"
    assert recovered.levelno == logging.INFO
    assert recovered.host == key  # type: ignore[attr-defined]


@pytest.mark.aiosmtpd(tls_context="server_tls", require_starttls=True)
async def test_a_tls_connection_logs_its_version(
    caplog: pytest.LogCaptureFixture, aiosmtpd_server: Any, client_tls: ssl.SSLContext
) -> None:
    caplog.set_level(logging.DEBUG, logger="pooledmail.connection")
    controller, _ = aiosmtpd_server
    config = PoolConfig([Host("127.0.0.1", controller.port, tls="starttls")])
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        await pool.send_raw(body(0), sender="a@x.org", recipients=["b@x.org"])
    (opened,) = [r for r in caplog.records if "opened" in r.getMessage()]
    assert str(opened.tls_version).startswith("TLSv1")  # type: ignore[attr-defined]


async def test_nothing_is_logged_for_a_healthy_pool_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pooledmail")
    server = FakeSMTPServer(Script())
    async with server.running():
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")])
        async with SMTPPool(config) as pool:
            for n in range(3):
                await pool.send_raw(body(n), sender="a@x.org", recipients=["b@x.org"])
    assert [r for r in caplog.records if r.name.startswith("pooledmail")] == []


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_runner_failure_while_the_block_leaves_with_its_own_error_is_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The block's own exception leaves `async with` as itself, so a failure of the pool's
    # background work met on the way out (a bug) would be lost without this record.
    caplog.set_level(logging.DEBUG, logger="pooledmail")

    async def broken_shut_down(self: SMTPPool) -> None:
        raise RuntimeError("the shutdown broke")

    monkeypatch.setattr(SMTPPool, "_shut_down", broken_shut_down)
    config = PoolConfig([Host("127.0.0.1", 9, tls="none")], min_size=0)
    with pytest.raises(ValueError, match="the block's own"):
        async with SMTPPool(config):
            raise ValueError("the block's own")
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "pooledmail"
    assert record.getMessage() == "the pool's runner failed"
    assert record.exc_info is not None
    assert "the shutdown broke" in logging.Formatter().format(record)
