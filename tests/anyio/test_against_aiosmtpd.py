"""The pool against a real SMTP server (aiosmtpd on 127.0.0.1), on asyncio and trio."""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from typing import Any

import pytest

import anyio
from pooledmail_anyio import ConfigError, FailureKind, Host, PoolConfig, SendFailed, SMTPPool, Stage

pytestmark = pytest.mark.anyio


# A setup failure fails a send at once only while the host cools down past the send's deadline;
# with the default first cooldown (1 s) the send waits for trials (docs/guide/options.md,
# "Cooldowns"). These tests are about what the failure says, so the host stays out for longer.
ONE_FAILURE = {"reconnect_cooldown": 30.0}


def make_message(to: str = "bob@example.com", body: str = "Hello.\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = to
    message["Subject"] = "test"
    message.set_content(body)
    return message


def config_for(controller: Any, **host: Any) -> PoolConfig:
    options = {"tls": "none", **host}
    return PoolConfig([Host("127.0.0.1", controller.port, **options)], max_size=4)


async def test_plain_send_delivers_the_message_and_reuses_the_connection(
    aiosmtpd_server: Any,
) -> None:
    controller, handler = aiosmtpd_server
    async with SMTPPool(config_for(controller)) as pool:
        first = await pool.send(make_message())
        second = await pool.send_raw(
            b"Subject: raw\r\n\r\nraw body\r\n",
            sender="carol@example.com",
            recipients=["dave@example.com", "erin@example.com"],
        )
        stats = pool.statistics()
    assert first.accepted == ("bob@example.com",)
    assert first.reply.code == 250
    assert first.attempts == 1
    assert first.host == f"127.0.0.1:{controller.port}"
    assert second.accepted == ("dave@example.com", "erin@example.com")
    assert [e.mail_from for e in handler.envelopes] == ["alice@example.com", "carol@example.com"]
    assert b"raw body" in handler.envelopes[1].original_content
    assert stats.created_total == 1


async def test_bcc_is_delivered_but_not_transmitted(aiosmtpd_server: Any) -> None:
    controller, handler = aiosmtpd_server
    message = make_message()
    message["Bcc"] = "hidden@example.com"
    async with SMTPPool(config_for(controller)) as pool:
        result = await pool.send(message)
    assert set(result.accepted) == {"bob@example.com", "hidden@example.com"}
    assert b"hidden@example.com" not in handler.envelopes[0].original_content
    assert message["Bcc"] == "hidden@example.com"


@pytest.mark.aiosmtpd(tls_context="server_tls", require_starttls=True)
async def test_starttls_with_verified_certificate(
    aiosmtpd_server: Any, client_tls: ssl.SSLContext
) -> None:
    controller, handler = aiosmtpd_server
    config = config_for(controller, tls="starttls")
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        result = await pool.send(make_message())
    assert result.reply.code == 250
    assert len(handler.envelopes) == 1


@pytest.mark.aiosmtpd(tls_context="server_tls", require_starttls=True)
async def test_starttls_refuses_an_untrusted_certificate(aiosmtpd_server: Any) -> None:
    controller, handler = aiosmtpd_server
    config = PoolConfig(
        [Host("127.0.0.1", controller.port, tls="starttls")], max_retries=0, **ONE_FAILURE
    )
    async with SMTPPool(config) as pool:  # the system trust store does not know trustme's CA
        with pytest.raises(SendFailed) as caught:
            await pool.send(make_message())
    assert caught.value.kind is FailureKind.TLS_FAILED
    assert caught.value.stage is Stage.TLS
    assert "certificate verify failed" in str(caught.value)
    assert caught.value.definitely_not_accepted
    assert handler.envelopes == []


async def test_starttls_required_but_not_offered_is_refused(aiosmtpd_server: Any) -> None:
    controller, handler = aiosmtpd_server
    config = PoolConfig(
        [Host("127.0.0.1", controller.port, tls="starttls")], max_retries=0, **ONE_FAILURE
    )
    async with SMTPPool(config) as pool:
        with pytest.raises(SendFailed) as caught:
            await pool.send(make_message())
    assert caught.value.kind is FailureKind.TLS_FAILED
    assert "server does not offer STARTTLS" in str(caught.value)
    assert handler.envelopes == []


@pytest.mark.aiosmtpd(ssl_context="server_tls")
async def test_implicit_tls(aiosmtpd_server: Any, client_tls: ssl.SSLContext) -> None:
    controller, handler = aiosmtpd_server
    config = config_for(controller, tls="implicit")
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        result = await pool.send(make_message())
    assert result.reply.code == 250
    assert len(handler.envelopes) == 1


@pytest.mark.aiosmtpd(tls_context="server_tls", with_auth=True, auth_exclude_mechanism=["LOGIN"])
async def test_auth_plain_after_starttls(aiosmtpd_server: Any, client_tls: ssl.SSLContext) -> None:
    controller, handler = aiosmtpd_server
    config = config_for(controller, tls="starttls", username="alice", password="s3cret-pw")
    assert "s3cret-pw" not in repr(config)
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        result = await pool.send(make_message())
    assert result.reply.code == 250
    assert handler.mechanisms == ["PLAIN"]


@pytest.mark.aiosmtpd(tls_context="server_tls", with_auth=True, auth_exclude_mechanism=["PLAIN"])
async def test_auth_login_after_starttls(aiosmtpd_server: Any, client_tls: ssl.SSLContext) -> None:
    controller, handler = aiosmtpd_server
    config = config_for(controller, tls="starttls", username="alice", password="s3cret-pw")
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        result = await pool.send(make_message())
    assert result.reply.code == 250
    assert handler.mechanisms == ["LOGIN"]


@pytest.mark.aiosmtpd(tls_context="server_tls", with_auth=True)
async def test_wrong_password_is_auth_failed_and_not_retried(
    aiosmtpd_server: Any, client_tls: ssl.SSLContext
) -> None:
    controller, handler = aiosmtpd_server
    config = config_for(controller, tls="starttls", username="alice", password="wrong-pw")
    async with SMTPPool(config, ssl_context=client_tls) as pool:
        with pytest.raises(SendFailed) as caught:
            await pool.send(make_message())
    failure = caught.value
    assert failure.kind is FailureKind.AUTH_FAILED
    assert failure.stage is Stage.AUTH
    assert failure.reply is not None
    assert failure.reply.code == 535
    assert failure.attempts == 1
    assert "wrong-pw" not in str(failure)
    assert handler.envelopes == []


def test_credentials_on_a_plaintext_host_need_the_explicit_opt_in() -> None:
    with pytest.raises(ConfigError) as caught:
        Host("127.0.0.1", 2525, tls="none", username="alice", password="s3cret-pw")
    assert "allow_plaintext_auth" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.aiosmtpd(with_auth=True, auth_require_tls=False)
async def test_opportunistic_tls_without_starttls_refuses_auth_in_plaintext(
    aiosmtpd_server: Any,
) -> None:
    controller, handler = aiosmtpd_server
    config = config_for(
        controller, tls="starttls_if_available", username="alice", password="s3cret-pw"
    )
    assert "s3cret-pw" not in repr(config)
    async with SMTPPool(config) as pool:
        with pytest.raises(SendFailed) as caught:
            await pool.send(make_message())
    assert caught.value.kind is FailureKind.AUTH_FAILED
    assert caught.value.stage is Stage.AUTH
    assert caught.value.reply is None
    assert handler.mechanisms == []
    assert handler.envelopes == []


@pytest.mark.aiosmtpd(with_auth=True, auth_require_tls=False)
async def test_auth_over_plaintext_with_explicit_opt_in(aiosmtpd_server: Any) -> None:
    controller, handler = aiosmtpd_server
    config = config_for(
        controller, username="alice", password="s3cret-pw", allow_plaintext_auth=True
    )
    async with SMTPPool(config) as pool:
        result = await pool.send(make_message())
    assert result.reply.code == 250
    assert len(handler.mechanisms) == 1
    assert len(handler.envelopes) == 1


@pytest.mark.aiosmtpd(enable_SMTPUTF8=True)
async def test_smtputf8_address(aiosmtpd_server: Any) -> None:
    controller, handler = aiosmtpd_server
    async with SMTPPool(config_for(controller)) as pool:
        result = await pool.send(make_message(to="jörg@exämple.com", body="Grüße\n"))
    assert result.accepted == ("jörg@exämple.com",)
    assert handler.envelopes[0].rcpt_tos == ["jörg@exämple.com"]
    assert "SMTPUTF8" in handler.envelopes[0].mail_options


@pytest.mark.aiosmtpd(data_size_limit=2000)
async def test_message_larger_than_size_is_refused_locally(aiosmtpd_server: Any) -> None:
    controller, handler = aiosmtpd_server
    async with SMTPPool(config_for(controller)) as pool:
        with pytest.raises(SendFailed) as caught:
            await pool.send(make_message(body="x" * 5000 + "\n"))
        # The session was not disturbed: the next message goes through on the same connection.
        ok = await pool.send(make_message())
        stats = pool.statistics()
    failure = caught.value
    assert failure.kind is FailureKind.PERMANENT
    assert failure.definitely_not_accepted
    assert failure.reply is None
    assert failure.attempts == 1
    assert ok.reply.code == 250
    assert len(handler.envelopes) == 1
    assert stats.created_total == 1


async def test_concurrent_sends_never_exceed_max_size(aiosmtpd_server: Any) -> None:
    controller, handler = aiosmtpd_server
    peak = 0
    async with SMTPPool(config_for(controller)) as pool:

        async def one(n: int) -> None:
            nonlocal peak
            await pool.send(make_message(to=f"user{n}@example.com"))
            peak = max(peak, pool.statistics().live)

        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(one, n)
        stats = pool.statistics()
    assert len(handler.envelopes) == 40
    assert peak <= 4
    assert stats.created_total <= 4
    assert len(handler.sessions) <= 4
