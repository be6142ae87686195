"""A send the server accepts for some recipients and refuses for others succeeds, and says so
where operators look: a WARNING record, `send_statistics().partly_refused` and the
`pooledmail.recipients.refused` metric by kind. Judged against what aiosmtpd stored (its
envelopes' recipients), on asyncio and trio.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from pooledmail_anyio import FailureKind, Host, PoolConfig, SendFailed, SMTPPool
from pooledmail_anyio._ports import free_port

from .test_metrics import Metrics, value

pytestmark = pytest.mark.anyio

LIMIT = 2  # recipients a transaction, as smtpd_recipient_limit would say
UNKNOWN = "nobody@example.net"
BODY = b"Subject: partly\r\n\r\nsecret-body-2c4e\r\n"


class LimitingHandler:
    """Refuses UNKNOWN for good (quoting it, as servers do) and, past LIMIT recipients in one
    transaction, every other one for now (RFC 5321 §4.5.3.1.10); keeps what it stored."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address == UNKNOWN:
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        if len(envelope.rcpt_tos) >= LIMIT:
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 2.0.0 queued"


@pytest.fixture
def limiting_server() -> Iterator[tuple[int, LimitingHandler]]:
    from aiosmtpd.controller import Controller

    handler = LimitingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    found = Metrics()
    yield found
    found.provider.shutdown()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("log_recipients", [False, True])
async def test_a_send_refused_for_some_recipients_succeeds_and_is_reported(
    anyio_backend: str,
    log_recipients: bool,
    limiting_server: tuple[int, LimitingHandler],
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pooledmail")
    port, handler = limiting_server
    recipients = ["a@example.net", UNKNOWN, "b@example.net", "c@example.net", "d@example.net"]
    config = PoolConfig([Host("127.0.0.1", port, tls="none")], max_retries=0)
    pool = SMTPPool(
        config, name="mailer", meter_provider=metrics.provider, log_recipients=log_recipients
    )
    async with pool:
        result = await pool.send_raw(BODY, sender="s@example.com", recipients=recipients)
        whole = await pool.send_raw(BODY, sender="s@example.com", recipients=recipients[:1])
        with pytest.raises(SendFailed) as refused_by_all:
            await pool.send_raw(BODY, sender="s@example.com", recipients=[UNKNOWN])
        statistics = pool.send_statistics()
        found = metrics.collect()
    # What the server stored: the message, for the first two it accepted, then for the one.
    assert [tuple(envelope.rcpt_tos) for envelope in handler.envelopes] == [
        ("a@example.net", "b@example.net"),
        ("a@example.net",),
    ]
    assert result.accepted == ("a@example.net", "b@example.net")
    assert [(recipient, reply.code) for recipient, reply in result.refused] == [
        (UNKNOWN, 550),
        ("c@example.net", 452),
        ("d@example.net", 452),
    ]
    assert whole.refused == ()
    assert refused_by_all.value.kind is FailureKind.PERMANENT  # every recipient: a failure

    assert statistics.accepted == 2
    assert statistics.partly_refused == 1
    host = f"127.0.0.1:{port}"
    refused = "pooledmail.recipients.refused"
    assert value(found, refused, host=host, failure_kind="transient") == 2
    assert value(found, refused, host=host, failure_kind="permanent") == 1
    assert value(found, refused) == 3  # nothing for the whole send nor the failed one

    (record,) = [r for r in caplog.records if "refused for" in r.getMessage()]
    assert record.name == "pooledmail.send"
    assert record.levelno == logging.WARNING
    fields = {name: getattr(record, name) for name in ("accepted", "refused", "transient")}
    assert fields == {"accepted": 2, "refused": 3, "transient": 2}
    assert record.host == host  # type: ignore[attr-defined]
    assert record.message_id is None  # type: ignore[attr-defined]  # raw bytes without one
    text = logging.Formatter().format(record)
    # Each distinct reply once; the one that quoted an address has it masked unless asked for.
    assert text.startswith("send of a message without Message-ID was accepted at 127.0.0.1:")
    assert text.count("452 4.5.3 Error: too many recipients") == 1
    assert "2 refused for now (4xx)" in text
    assert "secret-body-2c4e" not in text + repr(record.__dict__)
    if log_recipients:
        assert f"<{UNKNOWN}>" in text
        assert record.recipients == (UNKNOWN, "c@example.net", "d@example.net")  # type: ignore[attr-defined]
    else:
        assert UNKNOWN not in text + repr(record.__dict__)
        assert "550 5.1.1 <<recipient>>: Recipient address rejected" in text
        assert not hasattr(record, "recipients")


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_recipient_refused_after_an_unknown_attempt_may_have_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Attempt 1: both recipients accepted, the message stored, the connection dropped before the
    # final reply (UNKNOWN_AFTER_DATA, retried because the caller opted in). Attempt 2 is refused
    # for b for now. b has the message from attempt 1: the record must not say it went only to a,
    # nor tell the operator to send it to b again.
    from .fakesmtp import FakeSMTPServer, Fault, Script

    def script(n: int) -> Script:
        if n == 0:
            return Script(fault=Fault("disconnect", "data_end"))
        return Script(
            rcpt=lambda line: "452 4.5.3 too many recipients" if "<b@" in line else "250 ok"
        )

    caplog.set_level(logging.DEBUG, logger="pooledmail")
    server = FakeSMTPServer(script)
    options: dict[str, Any] = {"max_retries": 1, "retry_base_delay": 0.01}
    async with server.running():
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")], **options)
        async with SMTPPool(config) as pool:
            result = await pool.send_raw(
                BODY,
                sender="s@example.com",
                recipients=["a@example.net", "b@example.net"],
                retry_unknown=True,
            )
    first = server.connections[0]
    assert len(first.messages) == 1  # attempt 1 was stored
    assert sum(command.startswith("RCPT") for command in first.commands) == 2
    assert [recipient for recipient, _ in result.refused] == ["b@example.net"]
    (record,) = [r for r in caplog.records if "refused for" in r.getMessage()]
    text = record.getMessage()
    assert "send it to them again" not in text
    assert f"ended UNKNOWN_AFTER_DATA at 127.0.0.1:{server.port}" in text
    assert "may have it" in text
    assert record.earlier_unknown is True  # type: ignore[attr-defined]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_refused_address_is_masked_whole_when_another_is_its_prefix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "b@example.co" is a prefix of "b@example.com": masked first, it left "<recipient>m" of the
    # longer one in the record. The server quotes the refused one in its own case, with and
    # without angle brackets, twice in one reply.
    from .fakesmtp import FakeSMTPServer, Script

    refusal = "550 5.1.1 <B@Example.COM>: no such user (b@example.com)"
    server = FakeSMTPServer(
        lambda n: Script(rcpt=lambda line: refusal if ".com>" in line else "250 ok")
    )
    caplog.set_level(logging.DEBUG, logger="pooledmail")
    async with server.running():
        config = PoolConfig([Host("127.0.0.1", server.port, tls="none")], max_retries=0)
        async with SMTPPool(config) as pool:
            result = await pool.send_raw(
                BODY, sender="s@example.com", recipients=["b@example.co", "b@example.com"]
            )
    assert result.accepted == ("b@example.co",)
    (record,) = [r for r in caplog.records if "refused for" in r.getMessage()]
    text = logging.Formatter().format(record)
    assert "550 5.1.1 <<recipient>>: no such user (<recipient>)" in text
    assert "example" not in text.partition(": 550")[2]
